"""Time dilation's scaling rules, knob by knob, and the proof that a dilated algorithm decides as the real one.

Each rule is checked against the list of what ``testbed.model.dilation`` says must be divided, multiplied
or left alone: a field added to a config later fails here until it is given a rule.
"""

from dataclasses import asdict, fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.adaptive import Adaptive, AdaptiveParams, Path
from controllers.dcqcn import Dcqcn, DcqcnParams
from controllers.dilated import Dilated
from controllers.fixed_rate import FixedRate
from controllers.swift import Swift, SwiftParams
from testbed.model import dilation
from testbed.model.fabric import LinkConfig
from testbed.roce import budget
from testbed.roce.rocev2 import data_frame_bytes
from testbed.roce.transport import TIME_FIELDS, TransportConfig
from testbed.topologies import load_topology

K = 2000.0
LINK = LinkConfig(bw_mbps=400_000, delay_ms=0.05, jitter_ms=0.01, loss_pct=0.5, loss_burst_pkts=3, reorder_pct=1,
                  duplicate_pct=0.2, corrupt_pct=0.1, ecn_pmax=0.2).resolved(mtu=9000)
PATH = Path(base_rtt_ns=100_000, bottleneck_bps=400e9, line_rate_bps=400e9, frame_bytes=4154, flows=2)


def test_a_link_runs_its_rate_divided_and_its_delays_multiplied_and_nothing_else_changes():
    slow = LINK.dilated(K)
    assert slow.bw_mbps == pytest.approx(LINK.bw_mbps / K)
    assert (slow.delay_ms, slow.jitter_ms) == pytest.approx((LINK.delay_ms * K, LINK.jitter_ms * K))
    unchanged = {f.name for f in fields(LinkConfig)} - {"bw_mbps", "delay_ms", "jitter_ms"}
    assert unchanged == {"loss_pct", "loss_burst_pkts", "reorder_pct", "duplicate_pct", "corrupt_pct",
                         "buffer_bytes", "ecn_kmin_bytes", "ecn_kmax_bytes", "ecn_pmax"}
    assert all(getattr(slow, name) == getattr(LINK, name) for name in unchanged)
    assert LINK.dilated(1) == LINK


def test_a_link_keeps_its_bandwidth_delay_product_in_bytes_and_packets():
    declared, slow = LINK, LINK.dilated(K)
    assert slow.bw_mbps * slow.delay_ms == pytest.approx(declared.bw_mbps * declared.delay_ms)
    assert slow.resolved(9000).buffer_bytes == declared.buffer_bytes  # resolved already: bytes stay


def test_only_a_resolved_link_dilates():
    """Derived thresholds re-derived from the slower rate would be k times too small."""
    with pytest.raises(ValueError, match="resolve a LinkConfig before dilating it"):
        LinkConfig(bw_mbps=400_000).dilated(K)


def test_the_transport_multiplies_every_time_and_keeps_sizes_and_counts():
    config = TransportConfig(mtu=2048, ackreq_every=4, ack_every=2, selective_repeat=True, reorder_window=64,
                             dscp=26, start_psn=100)
    slow = config.dilated(K)
    assert set(TIME_FIELDS) == {f.name for f in fields(TransportConfig) if f.name.endswith("_ns")}
    for name in TIME_FIELDS:
        assert getattr(slow, name) == round(getattr(config, name) * K), name
    for item in fields(TransportConfig):
        if item.name not in TIME_FIELDS:
            assert getattr(slow, item.name) == getattr(config, item.name), item.name


@pytest.mark.parametrize("k, ok", [(1, True), (1.5, True), (1e6, True), (0.5, False), (0, False),
                                   (float("nan"), False), (float("inf"), False), (2e6, False), (True, False)])
def test_dilation_is_a_number_from_one_up(k, ok):
    if ok:
        assert dilation.check(k) == k
    else:
        with pytest.raises(ValueError, match="dilation .* must be a number from 1"):
            dilation.check(k)


def test_the_header_says_k_and_that_figures_are_declared():
    assert dilation.header(2000) == "# dilation 2000: emulated 2000x slower; every figure in declared time"
    assert dilation.header(1) == "# dilation 1: real time"


@pytest.mark.parametrize("host_bw_mbps, dci_bw_mbps, busiest", [(500, 250, 500), (100, 800, 800)])
def test_auto_sizes_k_for_the_link_with_the_highest_rate(host_bw_mbps, dci_bw_mbps, busiest):
    """By rate, whatever the links' names (a max over (name, rate) pairs once picked the last name)."""
    topo = load_topology("two_sites")(host_bw_mbps=host_bw_mbps, dci_bw_mbps=dci_bw_mbps)
    link, mbps, pps = budget.busiest_link(topo)
    assert mbps == busiest and topo.linkInfo(*link)["config"].bw_mbps == busiest
    assert pps == pytest.approx(busiest * 1e6 / 8 / data_frame_bytes())


@pytest.mark.parametrize("budget, busiest, k", [
    (1000, 250, 1.0),  # the busiest link needs 25 % of the budget: real time keeps up
    (1000, 300, 1.0),  # exactly the share
    (1000, 301, 1.5),  # a little more: the next E6 number
    (1000, 3300, 15.0),  # 11 needed
    (2000, 12_036_109, 22_000.0),  # 400 Gbit/s of 4154-byte frames on a 2,000 packets/s TCG rank: 20,060 needed
    (65_000, 12_036_109, 680.0),  # natively: 617 needed
])
def test_auto_keeps_the_busiest_link_at_its_share_of_the_budget_on_round_numbers(budget, busiest, k):
    assert dilation.AUTO_SHARE == 0.3
    assert dilation.auto(budget, busiest) == k
    assert busiest / k <= 0.3 * budget  # never more than the share of the budget ...
    assert k == 1 or busiest / (k / 1.5) > 0.3 * budget * 0.999  # ... and never 1.5x slower than needed


@pytest.mark.parametrize("late_ms, rtt_ms, k", [
    (10.0, 0.12, 3300.0),  # a 10 km DCI under TCG: 2,500 needed, where the packets asked for 1
    (10.0, 10.0, 33.0),  # 1000 km: 30 needed
    (10.0, 30.0, 10.0),  # 3000 km: exactly 10
    (0.05, 10.0, 1.0),  # natively: the lateness asks for nothing
])
def test_auto_keeps_the_event_loops_lateness_within_a_tenth_of_the_rtt_with_its_margin(late_ms, rtt_ms, k):
    assert (dilation.MAX_LATE_RTT, dilation.LATE_MARGIN) == (0.1, 3.0)
    assert dilation.auto(1000, 250, late_p99_s=late_ms / 1e3, shortest_rtt_s=rtt_ms / 1e3) == k
    assert dilation.LATE_MARGIN * late_ms <= dilation.MAX_LATE_RTT * rtt_ms * k * (1 + 1e-9)


def test_auto_takes_the_larger_of_what_the_packets_and_the_lateness_ask_for():
    by_packets = dilation.auto(2000, 12_036_109)
    assert dilation.auto(2000, 12_036_109, late_p99_s=0.01, shortest_rtt_s=0.1) == by_packets == 22_000
    assert dilation.auto(1000, 250, late_p99_s=0.01, shortest_rtt_s=None) == 1.0  # one site: no RTT to keep


@pytest.mark.parametrize("late_s, rtt_s", [(float("nan"), 0.01), (-0.001, 0.01), (0.01, -1.0), (0.01, float("inf"))])
def test_auto_refuses_a_lateness_or_rtt_that_is_not_a_measurement(late_s, rtt_s):
    with pytest.raises(ValueError):
        dilation.auto(1000, 250, late_p99_s=late_s, shortest_rtt_s=rtt_s)


def test_the_shortest_dci_rtt_is_known_before_anything_is_built():
    assert load_topology("two_sites")(distance_km=1000).fabric.shortest_dci_rtt_ms() == pytest.approx(10.0, rel=0.02)
    three = load_topology("three_sites")().fabric
    assert three.shortest_dci_rtt_ms() == min(2 * d.one_way_delay_ms() for d in three.dci_links)


def test_the_budget_measures_packets_and_the_event_loops_lateness_of_real_ranks():
    """Two rank processes in a ring on loopback, here: a packet rate and a lateness, both measured."""
    found = budget.measure(2, seconds=0.5, warmup_s=0.2)
    assert found.packets_per_s > 100 and found.share == dilation.AUTO_SHARE
    assert 0 < found.late_p99_s < 1.0


def test_auto_refuses_what_no_dilation_can_emulate():
    with pytest.raises(ValueError):
        dilation.auto(1, 1e9)


# -- the dilated algorithm decides as the declared one --------------------------------------------------------

ALGORITHMS = {
    "dcqcn": lambda: Dcqcn(DcqcnParams().scaled_to(400e9)),
    "adaptive": lambda: Adaptive(AdaptiveParams.for_path(PATH)),
    "swift": lambda: Swift(SwiftParams.for_path(PATH)),
    "fixed": lambda: FixedRate(100e9),
}
EVENTS = st.lists(st.tuples(st.integers(1, 400_000),  # declared ns since the previous event
                            st.sampled_from(["send", "ack", "ack_rtt", "cnp", "loss", "timeout", "timer"]),
                            st.integers(90_000, 900_000)),  # an RTT sample, declared ns
                  min_size=1, max_size=120)


def trace(algorithm, events, scale: float) -> list:
    """Drive ``algorithm`` through ``events`` with every time ``scale`` times the declared one; what it set
    after each event, with rates and timers brought back to declared units."""
    now, seen = 1_000_000, []
    for gap, kind, rtt in events:
        now += gap
        at = round(now * scale)
        due = algorithm.next_timer_ns
        if due is not None and due <= at:
            algorithm.on_timer(at)
        if kind == "send":
            algorithm.on_send(at, 4154)
        elif kind in ("ack", "ack_rtt"):
            algorithm.on_ack(at, 4076, round(rtt * scale) if kind == "ack_rtt" else None)
        elif kind != "timer":
            getattr(algorithm, f"on_{kind}")(at)
        timer = algorithm.next_timer_ns
        seen.append((algorithm.rate_bps * scale, algorithm.cwnd_bytes, None if timer is None else timer / scale))
    return seen


@pytest.mark.parametrize("name", ALGORITHMS)
@settings(max_examples=60, deadline=None)
@given(events=EVENTS, k=st.sampled_from([1.0, 7.0, 2000.0, 15_000.0]))
def test_a_dilated_algorithm_takes_the_declared_decisions_k_times_slower(name, events, k):
    """Same events, k times later: the same rates (divided by k), windows and timers (multiplied by k)."""
    declared = trace(ALGORITHMS[name](), events, 1.0)
    dilated = trace(Dilated(ALGORITHMS[name](), k), events, k)
    for (rate, window, timer), (slow_rate, slow_window, slow_timer) in zip(declared, dilated):
        assert slow_rate == pytest.approx(rate, rel=1e-9)
        assert slow_window == window
        assert (timer is None) == (slow_timer is None)
        if timer is not None:
            assert slow_timer == pytest.approx(timer, abs=1)  # whole ns, rounded up


def test_dilation_leaves_the_spec_in_declared_units():
    """What a controller sends is declared: the rank wraps the algorithm, the spec never changes."""
    spec = Adaptive.spec(path=asdict(PATH), target_queue_ns=None)
    assert spec == {"kind": "adaptive", "path": asdict(PATH), "target_queue_ns": None}
