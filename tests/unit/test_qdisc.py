"""The qdisc plans and the netlink encoders behind them (native: no kernel is asked)."""

import struct

import pytest
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from testbed.model.fabric import LinkConfig
from testbed.model.units import frame_bytes
from testbed.net.tc import netem, red
from testbed.net.tc.qdisc import U32_MAX, htb_class_params, netem_params, plan, red_params

TCA_OPTIONS, TCA_NETEM_LOSS, NETEM_LOSS_GE = 2, 5, 2  # linux/rtnetlink.h, linux/pkt_sched.h


def test_tree_is_netem_then_htb_then_red_then_its_queue():
    calls = plan(LinkConfig(bw_mbps=100, delay_ms=5).resolved(9000), 9000)
    assert [(c.kind, c.handle, c.parent, c.is_class) for c in calls] == [
        ("netem", "1:", None, False), ("htb", "10:", "1:1", False),
        ("htb", "10:1", "10:", True), ("red", "20:", "10:1", False), ("bfifo", "30:", "20:1", False)]


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
    params = red_params(config)
    assert (params["min"], params["max"], params["limit"]) == (
        config.ecn_kmin_bytes, config.ecn_kmax_bytes, config.buffer_bytes)
    assert params["ecn"] is True and params["probability"] == config.ecn_pmax


def test_red_queues_in_an_explicit_bfifo_and_a_change_keeps_the_queue():
    """RED's queue is a bfifo of the buffer; a change gives RED a limit of 0, which keeps that queue (any other
    makes the kernel flush it into a new one), and the bfifo its buffer."""
    config = LinkConfig(bw_mbps=50, delay_ms=5).resolved(9000)
    built, changed = plan(config, 9000), plan(config, 9000, change=True)
    for calls, red_limit in ((built, config.buffer_bytes), (changed, 0)):
        red_call, queue_call = calls[-2:]
        assert (red_call.kind, red_call.handle, red_call.params["limit"]) == ("red", "20:", red_limit)
        assert (queue_call.kind, queue_call.handle, queue_call.parent, queue_call.params) == (
            "bfifo", "30:", "20:1", {"limit": config.buffer_bytes})
    qopt = dict(red.get_parameters(changed[-2].params)["attrs"])["TCA_RED_PARMS"]
    assert (qopt["limit"], qopt["qth_min"], qopt["qth_max"]) == (0, config.ecn_kmin_bytes, config.ecn_kmax_bytes)


def iproute2_plog(qmin: int, qmax: int, probability: float) -> int:
    """iproute2's tc_red_eval_P (tc/tc_red.c)."""
    probability /= qmax - qmin
    for plog in range(32):
        if probability > 1.0:
            return plog
        probability *= 2
    return -1


def test_red_marks_the_instantaneous_queue_follows_iproute2_and_rejects_impossible_thresholds():
    """Wlog 0: the average is the backlog each packet finds, and any idle period resets it to 0."""
    options = red.get_parameters({"limit": 400_000, "min": 30_000, "max": 90_000, "probability": 0.02,
                                  "ecn": True})
    attrs = dict(options["attrs"])
    qopt = attrs["TCA_RED_PARMS"]
    assert (qopt["limit"], qopt["qth_min"], qopt["qth_max"], qopt["flags"]) == (400_000, 30_000, 90_000, 1)
    assert qopt["Wlog"] == 0 and set(attrs["TCA_RED_STAB"]) == {31}
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


def netem_options(config: LinkConfig) -> dict:
    """What the plan's netem call hands pyroute2 for ``config``."""
    (call,) = [c for c in plan(config.resolved(9000), 9000) if c.kind == "netem"]
    return netem.get_parameters(call.params)


def gemodel(options: dict) -> dict:
    """The NETEM_LOSS_GE fields among pyroute2 netem options."""
    (loss,) = [value for name, value in options["attrs"] if name == "TCA_NETEM_LOSS"]
    (ge,) = [value for name, value in loss["attrs"] if name == "NETEM_LOSS_GE"]
    return ge


def test_burst_loss_is_a_simple_gilbert_chain_with_the_average_loss():
    """5 % in bursts of 4: r = 1/4 ends a burst, p = r * 0.05 / 0.95 = 1/76 starts one; h = k1 = 0."""
    options = netem_options(LinkConfig(bw_mbps=50, delay_ms=5, loss_pct=5, loss_burst_pkts=4))
    assert options["loss"] == 0  # the model alone decides
    ge = gemodel(options)
    assert abs(ge["r"] - 2**32 / 4) <= 1 and abs(ge["p"] - 2**32 / 76) <= 1
    assert ge["h"] == 0 and ge["k1"] == 0  # the bad state loses every packet, the good state none
    p, r = ge["p"] / U32_MAX, ge["r"] / U32_MAX
    assert p / (p + r) == pytest.approx(0.05) and 1 / r == pytest.approx(4)


@pytest.mark.parametrize("config", [
    LinkConfig(bw_mbps=50, loss_pct=5),  # independent losses
    LinkConfig(bw_mbps=50, loss_pct=100, loss_burst_pkts=4),  # everything lost: no bursts to shape
    LinkConfig(bw_mbps=50, loss_burst_pkts=4),  # no loss at all
])
def test_without_bursts_netem_gets_plain_loss_and_no_loss_model(config):
    """No TCA_NETEM_LOSS: the kernel's netem_change() then goes back to random loss at ``loss``."""
    options = netem_options(config)
    assert "TCA_NETEM_LOSS" not in dict(options["attrs"])
    assert options["loss"] == int(U32_MAX * config.loss_pct / 100)


def test_steepest_burst_loss_the_validation_allows_still_encodes():
    ge = gemodel(netem_options(LinkConfig(bw_mbps=50, loss_pct=80, loss_burst_pkts=4)))
    assert ge["p"] == U32_MAX  # every gap is a single packet


def nested(data: bytes) -> dict[int, bytes]:
    """Netlink attributes (type without flags -> payload), parsed by hand as the kernel's nla_parse does."""
    attrs = {}
    while len(data) >= 4:
        length, kind = struct.unpack_from("=HH", data)
        attrs[kind & 0x3FFF] = data[4:length]
        data = data[(length + 3) & ~3:]
    return attrs


def test_gilbert_model_reaches_the_wire_as_the_kernel_reads_it_and_decodes_back():
    options = netem_options(LinkConfig(bw_mbps=50, delay_ms=5, loss_pct=5, loss_burst_pkts=4))
    expected = tuple(gemodel(options)[name] for name in ("p", "r", "h", "k1"))  # struct tc_netem_gemodel
    netem.register()  # pyroute2 decodes TCA_OPTIONS with the registered plugin
    msg = tcmsg()
    msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", options]]
    msg.encode()
    header_bytes = 16 + 20  # nlmsghdr, struct tcmsg
    qopt_bytes = 24  # struct tc_netem_qopt, followed by netem's own attributes
    netem_attrs = nested(nested(msg.data[header_bytes:])[TCA_OPTIONS][qopt_bytes:])
    assert struct.unpack("=4I", nested(netem_attrs[TCA_NETEM_LOSS])[NETEM_LOSS_GE]) == expected
    decoded = tcmsg(msg.data)
    decoded.decode()
    model = decoded.get_attr("TCA_OPTIONS").get_attr("TCA_NETEM_LOSS").get_attr("NETEM_LOSS_GE")
    assert (model["p"], model["r"], model["h"], model["k1"]) == expected
