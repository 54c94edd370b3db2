"""No congestion control: a constant rate that ignores every signal, the baseline the algorithms are compared to."""

import math

from controllers.base import CongestionControl


class FixedRate(CongestionControl):
    """Paces at ``rate_bps`` whatever happens.  Spec: ``rate_bps``."""

    kind = "fixed"

    def __init__(self, rate_bps: float) -> None:
        if not (math.isfinite(rate_bps) and rate_bps > 0):
            raise ValueError(f"rate_bps must be a positive finite number, got {rate_bps}")
        self._rate_bps = float(rate_bps)

    @classmethod
    def from_spec(cls, spec: dict) -> "FixedRate":
        return cls(spec["rate_bps"])

    @property
    def rate_bps(self) -> float:
        return self._rate_bps
