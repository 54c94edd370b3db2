"""The qdisc plans and the netlink encoders behind them (native: no kernel is asked)."""

import pytest

from testbed import netem, red
from testbed.fabric import LinkConfig
from testbed.qdisc import htb_class_params, netem_params, plan, red_params
from testbed.units import frame_bytes


def test_tree_is_netem_then_htb_then_red():
    calls = plan(LinkConfig(bw_mbps=100, delay_ms=5).resolved(9000), 9000)
    assert [(c.kind, c.handle, c.parent, c.is_class) for c in calls] == [
        ("netem", "1:", None, False), ("htb", "10:", "1:1", False),
        ("htb", "10:1", "10:", True), ("red", "20:", "10:1", False)]


def test_netem_limit_covers_the_bandwidth_delay_product_not_the_default():
    params = netem_params(LinkConfig(bw_mbps=100_000, delay_ms=5))  # 100 Gbit/s, 1000 km
    in_flight_min_packets = 100e9 / 8 * 0.005 / 64  # smallest packets in flight during the delay
    assert params["limit"] >= in_flight_min_packets > 1000
    assert netem_params(LinkConfig(bw_mbps=10))["limit"] == 1000  # never below netem's own default


def test_jitter_keeps_order_through_netem_rate_unless_reordering_is_asked_for():
    ordered = netem_params(LinkConfig(bw_mbps=50, delay_ms=5, jitter_ms=1))
    assert ordered["rate"] > 50e6 / 8  # far above the link rate: it orders departures, never limits
    assert ordered["jitter"] == 1000 and ordered["delay"] == 5000
    shuffled = netem_params(LinkConfig(bw_mbps=50, delay_ms=5, jitter_ms=1, reorder_pct=10))
    assert shuffled["rate"] == 0 and shuffled["prob_reorder"] == 10
    assert netem_params(LinkConfig(bw_mbps=50, delay_ms=5))["rate"] == 0


def test_htb_handles_rates_beyond_32_bits_and_bursts_a_millisecond():
    params = htb_class_params(LinkConfig(bw_mbps=400_000), 9000)
    assert params["rate"] == params["ceil"] == 400_000 * 10**6 // 8  # > 2**32 bytes/s
    assert params["burst"] == params["rate"] // 1000
    slow = htb_class_params(LinkConfig(bw_mbps=1), 9000)
    assert slow["burst"] == 2 * frame_bytes(9000) and slow["quantum"] == frame_bytes(9000)


def test_red_marks_between_the_resolved_thresholds_and_drops_at_the_buffer():
    config = LinkConfig(bw_mbps=50, delay_ms=5).resolved(9000)
    params = red_params(config, 9000)
    assert (params["min"], params["max"], params["limit"]) == (
        config.ecn_kmin_bytes, config.ecn_kmax_bytes, config.buffer_bytes)
    assert params["ecn"] is True and params["probability"] == config.ecn_pmax


def iproute2_wlog(qmin: int, burst: int, avpkt: int) -> int:
    """iproute2's tc_red_eval_ewma (tc/tc_red.c), ported line by line as an independent reference."""
    a, w = burst + 1 - qmin / avpkt, 0.5
    for wlog in range(1, 32):
        if a <= (1 - (1 - w) ** burst) / w:
            return wlog
        w /= 2
    return -1


def iproute2_plog(qmin: int, qmax: int, probability: float) -> int:
    """iproute2's tc_red_eval_P (tc/tc_red.c)."""
    probability /= qmax - qmin
    for plog in range(32):
        if probability > 1.0:
            return plog
        probability *= 2
    return -1


def test_red_encoder_follows_iproute2_and_rejects_impossible_thresholds():
    options = red.get_parameters({"limit": 400_000, "min": 30_000, "max": 90_000, "avpkt": 1500,
                                  "probability": 0.02, "bandwidth": 10**7, "ecn": True})
    attrs = dict(options["attrs"])
    qopt = attrs["TCA_RED_PARMS"]
    assert (qopt["limit"], qopt["qth_min"], qopt["qth_max"], qopt["flags"]) == (400_000, 30_000, 90_000, 1)
    burst = (2 * 30_000 + 90_000) // (3 * 1500)  # tc's default burst
    assert qopt["Wlog"] == iproute2_wlog(30_000, burst, 1500) == 4
    assert qopt["Plog"] == iproute2_plog(30_000, 90_000, 0.02) == 22
    assert attrs["TCA_RED_MAX_P"] == int(0.02 * 2**32) and len(attrs["TCA_RED_STAB"]) == 256
    with pytest.raises(ValueError, match="min 90000 must be > 0 and below max 30000"):
        red.get_parameters({"limit": 400_000, "min": 90_000, "max": 30_000})
    with pytest.raises(ValueError, match="max 500000 must not exceed limit 400000"):
        red.get_parameters({"limit": 400_000, "min": 30_000, "max": 500_000})


def test_netem_encoder_sends_zeros_so_impairments_reset():
    options = netem.get_parameters(netem_params(LinkConfig(bw_mbps=50, delay_ms=5)))
    attrs = dict((name, value) for name, value in options["attrs"])
    assert attrs["TCA_NETEM_REORDER"]["prob_reorder"] == 0
    assert attrs["TCA_NETEM_CORRUPT"]["prob_corrupt"] == 0
    assert attrs["TCA_NETEM_RATE"]["rate"] == 0
    assert options["loss"] == 0 and options["duplicate"] == 0
