"""The congestion-control interface: both algorithms implement it, and the fixed rate ignores every signal."""

import math
import re

import pytest

from controllers.adaptive import Adaptive, AdaptiveParams, Path
from controllers.base import CongestionControl
from controllers.dcqcn import MLX5_FIRMWARE, Dcqcn, DcqcnParams
from controllers.fixed_rate import FixedRate
from controllers.swift import Swift, SwiftParams

LONG_HAUL = Path(base_rtt_ns=20_000_000, bottleneck_bps=50e6, line_rate_bps=100e6, frame_bytes=4154)
ALGORITHMS = [lambda: FixedRate(80e6), lambda: Dcqcn(), lambda: Dcqcn(DcqcnParams().scaled_to(100e6)),
              lambda: Adaptive(AdaptiveParams.for_path(LONG_HAUL)), lambda: Swift(SwiftParams.for_path(LONG_HAUL))]


def drive(controller: CongestionControl) -> None:
    """Every event the interface has, in time order, including a late timer call."""
    now = 0
    for step in range(200):
        now += 7_000
        controller.on_send(now, 4_160)
        controller.on_ack(now, 4_076, 30_000 if step % 2 else None)
        if step % 10 == 0:
            controller.on_cnp(now)
        if step % 50 == 0:
            controller.on_loss(now)
            controller.on_timeout(now)
        due = controller.next_timer_ns
        if due is not None and due <= now:
            controller.on_timer(now + 1_000)


def test_the_interface_cannot_be_instantiated_and_needs_only_a_rate():
    with pytest.raises(TypeError, match="abstract"):
        CongestionControl()

    class Constant(CongestionControl):
        @property
        def rate_bps(self) -> float:
            return 1e6

    minimal = Constant()
    drive(minimal)
    assert (minimal.rate_bps, minimal.cwnd_bytes, minimal.next_timer_ns) == (1e6, None, None)


@pytest.mark.parametrize("make", ALGORITHMS, ids=["fixed", "dcqcn", "dcqcn-100M", "adaptive", "swift"])
def test_every_algorithm_implements_the_interface(make):
    controller = make()
    assert isinstance(controller, CongestionControl)
    drive(controller)
    assert isinstance(controller.rate_bps, float) and math.isfinite(controller.rate_bps) and controller.rate_bps > 0
    assert controller.cwnd_bytes is None or controller.cwnd_bytes > 0
    assert controller.next_timer_ns is None or isinstance(controller.next_timer_ns, int)


def test_fixed_rate_ignores_every_signal():
    fixed = FixedRate(80e6)
    drive(fixed)
    for now in range(0, 10**9, 10**6):
        fixed.on_cnp(now)
        fixed.on_timeout(now)
    assert (fixed.rate_bps, fixed.cwnd_bytes, fixed.next_timer_ns) == (80e6, None, None)


def test_dcqcn_slows_down_under_the_same_signals_the_fixed_rate_ignores():
    dcqcn = Dcqcn()
    drive(dcqcn)
    assert dcqcn.rate_bps < DcqcnParams().rp_max_rate_bps and dcqcn.next_timer_ns is not None


@pytest.mark.parametrize("rate", [0, -5, math.inf, math.nan])
def test_fixed_rate_must_be_positive_and_finite(rate):
    with pytest.raises(ValueError, match="rate_bps must be a positive finite number"):
        FixedRate(rate)


def test_the_registry_builds_every_algorithm_from_its_spec():
    """What a controller sends a rank comes back as the same algorithm with the same knobs."""
    from dataclasses import asdict

    from controllers import registry

    assert {"dcqcn", "adaptive", "swift", "fixed"} <= set(registry.algorithms())
    dcqcn = registry.from_spec(Dcqcn.spec(line_rate_bps=100e6))
    assert type(dcqcn) is Dcqcn and dcqcn.params == MLX5_FIRMWARE.at_line_rate(100e6)
    paper = registry.from_spec(Dcqcn.spec(line_rate_bps=100e6, profile="paper", stretch=2.0))
    assert paper.params == DcqcnParams().scaled_to(100e6).stretched(2.0)
    with pytest.raises(ValueError, match=re.escape("unknown DCQCN profile 'cx9' (profiles: mlx5, paper)")):
        registry.from_spec(Dcqcn.spec(line_rate_bps=100e6, profile="cx9"))
    adaptive = registry.from_spec(Adaptive.spec(path=asdict(LONG_HAUL), target_queue_ns=700_000))
    assert type(adaptive) is Adaptive and adaptive.adaptive_params == AdaptiveParams.for_path(LONG_HAUL, 700_000)
    swift = registry.from_spec(Swift.spec(path=asdict(LONG_HAUL), target_queue_ns=None))
    assert type(swift) is Swift and swift.params == SwiftParams.for_path(LONG_HAUL)
    assert registry.from_spec(FixedRate.spec(rate_bps=5e6)).rate_bps == 5e6
    with pytest.raises(ValueError, match=r"unknown congestion control 'magic' \(kinds: adaptive, dcqcn, fixed, swift"):
        registry.from_spec({"kind": "magic"})


def test_a_new_algorithm_is_one_new_file(tmp_path, monkeypatch):
    """A module dropped into the package is found by its kind, with no list anywhere to extend."""
    import sys

    import controllers
    from controllers import registry

    (tmp_path / "halving.py").write_text(
        "from controllers.base import CongestionControl\n\n\n"
        "class Halving(CongestionControl):\n"
        "    kind = 'halving'\n\n"
        "    def __init__(self, rate_bps):\n"
        "        self._rate = rate_bps\n\n"
        "    @classmethod\n"
        "    def from_spec(cls, spec):\n"
        "        return cls(spec['rate_bps'])\n\n"
        "    @property\n"
        "    def rate_bps(self):\n"
        "        return self._rate\n\n"
        "    def on_cnp(self, now_ns):\n"
        "        self._rate /= 2\n")
    monkeypatch.setattr(controllers, "__path__", [*controllers.__path__, str(tmp_path)])
    registry.algorithms.cache_clear()
    try:
        flow = registry.from_spec({"kind": "halving", "rate_bps": 8e6})
        flow.on_cnp(0)
        assert type(flow).__name__ == "Halving" and flow.rate_bps == 4e6
    finally:
        sys.modules.pop("controllers.halving", None)
        registry.algorithms.cache_clear()
