"""Latency management for one DCI egress queue: keep its queueing delay near a target by moving the ECN
marking thresholds and, when marking alone cannot hold it, a pacing cap on the flows that cross it.

The controller samples the queue (backlog bytes at the link's rate = queueing delay) and feeds each sample to
``QueueGovernor.observe``.  Decisions use the median of the last ``window`` samples taken while the link was
busy (one slow sample under an emulated CPU is not a trend), and after an action the governor holds for
``hold`` samples, at least one round trip, so the senders' reaction can show before it acts again:

- median above ``high`` x target: mark earlier -- ``kmin`` and ``kmax`` x ``step_down`` (never below the
  floor of two frames, where RED still works); once at the floor, cap the crossing flows' pacing at
  ``step_down`` x their current cap (the share of the measured rate to start with);
- median below ``low`` x target: undo, most recent lever first -- raise the cap by 1/``step_down`` (lifted
  once it is back at the share), then the thresholds (up to the derived ones, never beyond).

Jitter follows: a queue held near a small target cannot swing by more than the target.
"""

import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Action:
    """One step the governor took: ``kind`` "ecn" (new thresholds) or "pace" (new cap, None = lifted)."""

    kind: str
    queue_delay_ns: int
    kmin_bytes: int
    kmax_bytes: int
    cap_bps: float | None


@dataclass
class QueueGovernor:
    """The latency loop's state for one DCI egress."""

    target_ns: int
    kmin_bytes: int  # the derived thresholds: where the governor starts and the most it returns to
    kmax_bytes: int
    floor_bytes: int  # lowest kmin (two frames)
    share_bps: float  # the crossing flows' share of the measured rate: the first cap
    hold: int  # samples to wait after an action
    window: int = 5
    high: float = 1.5
    low: float = 0.5
    step_down: float = 0.8
    cap_bps: float | None = None
    _kmin: int = field(init=False)
    _kmax: int = field(init=False)
    _recent: deque = field(init=False)
    _quiet: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not (self.target_ns > 0 and 0 < self.floor_bytes <= self.kmin_bytes < self.kmax_bytes):
            raise ValueError(f"need target_ns > 0 and 0 < floor_bytes <= kmin_bytes < kmax_bytes, got "
                             f"{self.target_ns}, {self.floor_bytes}, {self.kmin_bytes}, {self.kmax_bytes}")
        self._kmin, self._kmax = self.kmin_bytes, self.kmax_bytes
        self._recent = deque(maxlen=self.window)

    @property
    def thresholds(self) -> tuple[int, int]:
        return self._kmin, self._kmax

    def observe(self, queue_delay_ns: int, busy: bool) -> Action | None:
        """One sample of the queue; returns the action to apply, if any."""
        if not busy:
            return None
        self._recent.append(queue_delay_ns)
        if self._quiet:
            self._quiet -= 1
            return None
        if len(self._recent) < self._recent.maxlen:
            return None
        delay = round(statistics.median(self._recent))
        if delay > self.high * self.target_ns:
            changed = self._tighten()
        elif delay < self.low * self.target_ns:
            changed = self._relax()
        else:
            return None
        if changed is None:
            return None
        self._quiet = self.hold
        self._recent.clear()
        return Action(changed, delay, self._kmin, self._kmax, self.cap_bps)

    def _tighten(self) -> str | None:
        if self._kmin > self.floor_bytes:
            kmin = max(self.floor_bytes, round(self._kmin * self.step_down))
            self._kmax = max(kmin + self.floor_bytes // 2, round(self._kmax * self.step_down))
            self._kmin = kmin
            return "ecn"
        self.cap_bps = (self.cap_bps or self.share_bps) * self.step_down
        return "pace"

    def _relax(self) -> str | None:
        if self.cap_bps is not None:
            raised = self.cap_bps / self.step_down
            self.cap_bps = None if raised >= self.share_bps else raised
            return "pace"
        if self._kmin < self.kmin_bytes:
            self._kmin = min(self.kmin_bytes, round(self._kmin / self.step_down))
            widened = max(self._kmin + self.floor_bytes // 2, round(self._kmax / self.step_down))
            self._kmax = min(self.kmax_bytes, widened)
            return "ecn"
        return None
