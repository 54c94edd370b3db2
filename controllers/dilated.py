"""Any congestion control, run ``dilation`` times slower: the algorithm keeps its declared units, the flow sees
the emulated ones (``testbed.model.dilation``).

A time-dilated run stretches every time by k and divides every rate by k.  Rather than give each algorithm
a dilated copy of its knobs, this wrapper warps its clock: every event reaches the algorithm at declared
time ``now / k`` with RTT samples and reported queueing delays divided by k; the rate it sets is divided by
k and the time of its next timer multiplied by k; bytes (sent, acknowledged, the window) pass unchanged.
Driven by a flow k times slower, the algorithm therefore takes exactly the decisions it takes at full
speed -- the same cuts after the same CNPs, the same increase steps per declared timer period -- and a new
algorithm needs nothing to run dilated.

Declared time is kept in whole nanoseconds, as every algorithm expects: ``now // k`` (a timer due at
declared ``d`` is reported due at emulated ``ceil(d * k)``, so it has expired when the flow calls).
"""

import math

from controllers.base import CongestionControl


class Dilated(CongestionControl):
    """``algorithm`` (in declared units) as a flow running ``dilation`` times slower sees it."""

    def __init__(self, algorithm: CongestionControl, dilation: float) -> None:
        if not (math.isfinite(dilation) and dilation >= 1):
            raise ValueError(f"dilation must be a finite number >= 1, got {dilation}")
        self.algorithm, self.dilation = algorithm, dilation

    def _declared(self, now_ns: int) -> int:
        return math.floor(now_ns / self.dilation)

    @property
    def rate_bps(self) -> float:
        return self.algorithm.rate_bps / self.dilation

    @property
    def cwnd_bytes(self) -> int | None:
        return self.algorithm.cwnd_bytes

    @property
    def next_timer_ns(self) -> int | None:
        due = self.algorithm.next_timer_ns
        return None if due is None else math.ceil(due * self.dilation)

    def on_send(self, now_ns: int, nbytes: int) -> None:
        self.algorithm.on_send(self._declared(now_ns), nbytes)

    def on_ack(self, now_ns: int, acked_bytes: int, rtt_ns: int | None) -> None:
        rtt = None if rtt_ns is None else round(rtt_ns / self.dilation)
        self.algorithm.on_ack(self._declared(now_ns), acked_bytes, rtt)

    def on_cnp(self, now_ns: int) -> None:
        self.algorithm.on_cnp(self._declared(now_ns))

    def on_queue_delay(self, now_ns: int, queue_delay_ns: int) -> None:
        self.algorithm.on_queue_delay(self._declared(now_ns), round(queue_delay_ns / self.dilation))

    def on_loss(self, now_ns: int) -> None:
        self.algorithm.on_loss(self._declared(now_ns))

    def on_timeout(self, now_ns: int) -> None:
        self.algorithm.on_timeout(self._declared(now_ns))

    def on_timer(self, now_ns: int) -> None:
        self.algorithm.on_timer(self._declared(now_ns))
