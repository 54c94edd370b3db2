"""Swift: a window held at a target delay, on the same interface as DCQCN, for comparison on long paths.

Source: Kumar et al., "Swift: Delay is Simple and Effective for Congestion Control in the Datacenter",
SIGCOMM 2020, Algorithm 1, in bytes instead of packets.  With target delay T = base RTT + target queue and
``delay`` the RTT sample an ACK brings:

  delay < T         cwnd <- cwnd + ai * acked / max(cwnd, frame)       additive increase
                    (the paper's ai / cwnd per packet acked: one ai per window acknowledged, i.e. per
                    RTT; below one frame it is ai per frame acked, the paper's cwnd < 1 case)
  delay >= T        cwnd <- cwnd * max(1 - beta * (delay - T) / delay, 1 - max_mdf)
                    if no decrease in the last srtt                     multiplicative decrease
  timeout           cwnd <- cwnd * (1 - max_mdf), if no decrease in the last srtt
  always            min_cwnd <= cwnd <= max_cwnd; a decrease is when cwnd actually went down

Sending: ``cwnd_bytes`` is the window (rounded up to whole bytes) and ``rate_bps`` = cwnd * 8 / srtt,
at most the line rate, so the window is paced over a round trip (the paper paces only below one packet;
over a 20 ms loop an unpaced window would leave as one burst).  srtt is an EWMA of the samples with weight
1/8 (RFC 6298's), starting at the base RTT.

Left out of the paper: the target's scaling with hop count and with the flow's window (flow-based scaling)
-- the path's target is fixed, from ``controllers.adaptive.target_queue_for``, the rule ``Adaptive`` uses;
the separate endpoint-delay window; the fast-recovery decrease on a loss and the reset to min_cwnd after
repeated timeouts.  A NAK leaves the window: on a lossy DCI link a loss is not a congestion signal, as for
DCQCN.  CNPs are ignored: Swift reacts to delay only.  ACKs without an RTT sample (retransmitted packets)
change nothing.

``for_path`` starts at ``window_bytes`` (BDP at the share plus the target queue, as ``Adaptive``), allows
down to a thousandth of the BDP (the rate floor of ``Adaptive``, a thousandth of the share) and up to the
window of line rate over the target delay, beyond which pacing at line rate makes it moot.
"""

import math
from dataclasses import dataclass, fields

from controllers.adaptive import MIN_RATE_SHARE, Path, check_positive, target_queue_for, window_bytes
from controllers.base import CongestionControl

SRTT_GAIN = 1 / 8


@dataclass(frozen=True)
class SwiftParams:
    """Swift's knobs in bytes and ns; ``ai_bytes`` defaults to one frame."""

    base_rtt_ns: int
    target_queue_ns: int
    line_rate_bps: float
    frame_bytes: int
    initial_cwnd_bytes: float
    min_cwnd_bytes: float
    max_cwnd_bytes: float
    ai_bytes: float | None = None
    beta: float = 0.8
    max_mdf: float = 0.5

    def __post_init__(self) -> None:
        if self.ai_bytes is None:
            object.__setattr__(self, "ai_bytes", self.frame_bytes)
        for item in fields(self):
            check_positive(item.name, getattr(self, item.name))
        if self.beta > 1:  # so that 1 - beta * (delay - T) / delay stays positive
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.max_mdf >= 1:
            raise ValueError(f"max_mdf must be in (0, 1), got {self.max_mdf}")
        if not self.min_cwnd_bytes <= self.initial_cwnd_bytes <= self.max_cwnd_bytes:
            raise ValueError(f"initial_cwnd_bytes {self.initial_cwnd_bytes} is outside [min_cwnd_bytes,"
                             f" max_cwnd_bytes] = [{self.min_cwnd_bytes}, {self.max_cwnd_bytes}]")

    @property
    def target_delay_ns(self) -> int:
        return self.base_rtt_ns + self.target_queue_ns

    @classmethod
    def for_path(cls, path: Path, target_queue_ns: int | None = None) -> "SwiftParams":
        """The knobs for ``path`` (see the module docstring)."""
        target = target_queue_for(path, target_queue_ns)
        window = window_bytes(path, target)
        line_window = math.ceil(path.line_rate_bps * (path.base_rtt_ns + target) / 8e9)
        return cls(base_rtt_ns=path.base_rtt_ns, target_queue_ns=target, line_rate_bps=path.line_rate_bps,
                   frame_bytes=path.frame_bytes, initial_cwnd_bytes=window,
                   min_cwnd_bytes=path.bdp_bytes * MIN_RATE_SHARE, max_cwnd_bytes=max(window, line_window))


class Swift(CongestionControl):
    """Swift's sender for one flow: a delay-target window, paced over the smoothed RTT.

    Spec: ``path`` (``controllers.adaptive.Path``'s fields) and ``target_queue_ns`` (None: the default).
    """

    kind = "swift"

    def __init__(self, params: SwiftParams) -> None:
        self.params = params
        self._cwnd = float(params.initial_cwnd_bytes)
        self._srtt_ns = float(params.base_rtt_ns)
        self._last_decrease_ns: int | None = None

    @classmethod
    def from_spec(cls, spec: dict) -> "Swift":
        return cls(SwiftParams.for_path(Path(**spec["path"]), spec.get("target_queue_ns")))

    @property
    def rate_bps(self) -> float:
        return min(self.params.line_rate_bps, self._cwnd * 8e9 / self._srtt_ns)

    @property
    def cwnd_bytes(self) -> int:
        return math.ceil(self._cwnd)

    @property
    def srtt_ns(self) -> float:
        return self._srtt_ns

    def on_ack(self, now_ns: int, acked_bytes: int, rtt_ns: int | None) -> None:
        if rtt_ns is None:
            return
        p = self.params
        self._srtt_ns += SRTT_GAIN * (rtt_ns - self._srtt_ns)
        target = p.target_delay_ns
        if rtt_ns < target:
            self._cwnd = min(p.max_cwnd_bytes, self._cwnd + p.ai_bytes * acked_bytes / max(self._cwnd, p.frame_bytes))
        else:
            self._decrease(now_ns, max(1 - p.beta * (rtt_ns - target) / rtt_ns, 1 - p.max_mdf))

    def on_timeout(self, now_ns: int) -> None:
        self._decrease(now_ns, 1 - self.params.max_mdf)

    def _decrease(self, now_ns: int, factor: float) -> None:
        """Multiply the window by ``factor`` unless it went down within the last srtt."""
        if self._last_decrease_ns is not None and now_ns - self._last_decrease_ns < self._srtt_ns:
            return
        cwnd = max(self.params.min_cwnd_bytes, self._cwnd * factor)
        if cwnd < self._cwnd:
            self._cwnd, self._last_decrease_ns = cwnd, now_ns
