"""The latency loop's governor of one DCI egress: thresholds first, then pacing, and back."""

import pytest

from controllers.latency import QueueGovernor

MS = 1_000_000
FRAME = 4154


def governor(**overrides) -> QueueGovernor:
    settings = dict(target_ns=5 * MS, kmin_bytes=40_000, kmax_bytes=80_000, floor_bytes=2 * FRAME,
                    share_bps=10e6, hold=2, window=3)
    return QueueGovernor(**{**settings, **overrides})


def feed(gov: QueueGovernor, delay_ns: int, samples: int) -> list:
    return [a for a in (gov.observe(delay_ns, busy=True) for _ in range(samples)) if a is not None]


def test_a_queue_in_the_band_or_an_idle_link_draws_no_action():
    gov = governor()
    assert feed(gov, 5 * MS, 50) == [] and feed(gov, 7 * MS, 50) == [] and feed(gov, 3 * MS, 50) == []
    assert [gov.observe(100 * MS, busy=False) for _ in range(50)] == [None] * 50
    assert gov.thresholds == (40_000, 80_000) and gov.cap_bps is None


def test_a_long_queue_lowers_the_thresholds_to_the_floor_then_caps_the_pacing():
    gov = governor()
    actions = feed(gov, 20 * MS, 3 + 8 * (2 + 3))  # a decision needs a full window, then it holds
    kinds = [a.kind for a in actions]
    assert kinds[0] == "ecn" and (actions[0].kmin_bytes, actions[0].kmax_bytes) == (32_000, 64_000)
    assert actions[0].queue_delay_ns == 20 * MS
    ecn = [a for a in actions if a.kind == "ecn"]
    assert ecn[-1].kmin_bytes == 2 * FRAME and all(a.kmin_bytes < a.kmax_bytes for a in ecn)
    paced = [a for a in actions if a.kind == "pace"]
    assert kinds.index("pace") == len(ecn) and paced[0].cap_bps == pytest.approx(8e6)
    assert paced[1].cap_bps == pytest.approx(6.4e6)


def test_a_short_queue_lifts_the_cap_first_then_restores_the_thresholds_never_beyond():
    gov = governor()
    feed(gov, 20 * MS, 200)
    assert gov.cap_bps is not None and gov.thresholds[0] == 2 * FRAME
    actions = feed(gov, 0, 400)
    kinds = [a.kind for a in actions]
    assert kinds[:kinds.index("ecn")] == ["pace"] * kinds.index("ecn") and "pace" not in kinds[kinds.index("ecn"):]
    assert actions[kinds.index("ecn") - 1].cap_bps is None
    assert gov.thresholds == (40_000, 80_000) and gov.cap_bps is None
    assert feed(gov, 0, 50) == []


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="floor_bytes <= kmin_bytes < kmax_bytes"):
        governor(kmin_bytes=80_000)
    with pytest.raises(ValueError, match="target_ns > 0"):
        governor(target_ns=0)
