"""Retransmission timeout from round-trip samples, as RFC 6298 computes it for TCP.

SRTT and RTTVAR follow section 2 (gains 1/8 and 1/4; the first sample sets SRTT = R, RTTVAR = R / 2);
RTO = max(floor, SRTT + max(G, 4 * RTTVAR)) with the clock granularity G = 1 ns of the monotonic clock.
The floor is configurable because RFC 6298's 1 s is far above datacenter and even WAN RTTs.  Each
timeout doubles the RTO (section 5.5, capped at ``max_rto_ns``) until the flow makes progress again: a new
sample, or (as Linux does) any ACK of new data.  Without the latter, Karn's rule -- callers take no samples
from retransmitted packets -- keeps the backoff after a go-back-N round that resent everything in flight.
"""


class RttEstimator:
    """Smoothed RTT, its variation, and the retransmission timeout that follows from them."""

    def __init__(self, initial_rto_ns: int, min_rto_ns: int, max_rto_ns: int) -> None:
        if not 0 < min_rto_ns <= max_rto_ns:
            raise ValueError(f"need 0 < min_rto_ns <= max_rto_ns, got {min_rto_ns} and {max_rto_ns}")
        if not min_rto_ns <= initial_rto_ns <= max_rto_ns:
            raise ValueError(f"initial_rto_ns {initial_rto_ns} is outside [{min_rto_ns}, {max_rto_ns}]")
        self.min_rto_ns, self.max_rto_ns = min_rto_ns, max_rto_ns
        self.srtt_ns: float | None = None
        self.rttvar_ns: float | None = None
        self._rto_ns = initial_rto_ns
        self._backoff = 1

    @property
    def rto_ns(self) -> int:
        """The timeout to arm now, backoff included."""
        return min(self.max_rto_ns, self._rto_ns * self._backoff)

    def on_sample(self, rtt_ns: int) -> None:
        """A round-trip measurement from a packet sent once."""
        if self.srtt_ns is None:
            self.srtt_ns, self.rttvar_ns = float(rtt_ns), rtt_ns / 2
        else:
            self.rttvar_ns = 0.75 * self.rttvar_ns + 0.25 * abs(self.srtt_ns - rtt_ns)
            self.srtt_ns = 0.875 * self.srtt_ns + 0.125 * rtt_ns
        self._rto_ns = max(self.min_rto_ns, round(self.srtt_ns + max(1.0, 4 * self.rttvar_ns)))
        self.on_progress()

    def on_progress(self) -> None:
        """New data was acknowledged: drop the backoff."""
        self._backoff = 1

    def on_timeout(self) -> None:
        """The timer expired: back off exponentially."""
        if self._rto_ns * self._backoff < self.max_rto_ns:
            self._backoff *= 2
