"""``testbed flows``' pure parts: which flows, their max-min fair shares, and the figures made from the telemetry's
queue samples (the flows themselves: tests/unit/test_rank.py over loopback, tests/kernel/test_flows.py)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.collective.bounds import PACKET_OVERHEAD, PACKET_PAYLOAD, _route, fair_shares, rank_sites
from testbed.experiments.flows import (
    FlowsError,
    FlowsRun,
    default_pairs,
    egress_table,
    feedback_delay_ms,
    jain_index,
    parse_pairs,
    summary,
    utilisation_table,
)
from testbed.net.routing import fabric_graph
from topologies.dumbbell import Dumbbell

GOODPUT = PACKET_PAYLOAD / (PACKET_PAYLOAD + PACKET_OVERHEAD)  # of a link's bits, at full packets
HOSTS = ["easth1", "easth2", "westh1", "westh2", "westh3"]


def test_flows_are_named_by_host_and_become_rank_pairs():
    assert parse_pairs(["westh1:easth1", "easth2:westh3"], HOSTS) == [(2, 0), (1, 4)]


def test_the_default_is_every_host_of_the_first_site_into_the_last_sites_hosts_in_turn():
    topo = Dumbbell(senders=3, receivers=2)
    assert topo.nodes_with(role="host") == HOSTS  # rank order
    assert default_pairs(rank_sites(topo, HOSTS)) == [(2, 0), (3, 1), (4, 0)]
    with pytest.raises(FlowsError, match="has one"):
        default_pairs((tuple(range(len(HOSTS))),))


def test_fair_shares_fill_the_dci_equally_and_give_the_rest_of_a_receivers_link_to_a_local_flow():
    topo = Dumbbell(senders=3, receivers=2, host_bw_mbps=100, dci_bw_mbps=50)
    graph = fabric_graph(topo)
    pairs = [("westh1", "easth1"), ("westh2", "easth1"), ("westh3", "easth2"), ("easth2", "easth1")]
    shares_mbps = [share * 8 / 1e6 for share in fair_shares(graph, pairs)]
    # three flows share the 50 Mbit/s DCI; the local flow gets what they leave of easth1's 100 Mbit/s link
    assert shares_mbps == pytest.approx([50 / 3 * GOODPUT] * 3 + [(100 - 2 * 50 / 3) * GOODPUT])


@settings(max_examples=40, deadline=None)
@given(senders=st.integers(1, 4), receivers=st.integers(1, 3), dci=st.sampled_from([10.0, 40.0, 90.0]),
       picks=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=6))
def test_fair_shares_are_max_min_fair(senders, receivers, dci, picks):
    topo = Dumbbell(senders=senders, receivers=receivers, host_bw_mbps=100, dci_bw_mbps=dci)
    graph, hosts = fabric_graph(topo), topo.nodes_with(role="host")
    pairs = list(dict.fromkeys((hosts[a % len(hosts)], hosts[b % len(hosts)]) for a, b in picks
                               if a % len(hosts) != b % len(hosts)))
    if not pairs:
        return
    wire = [share / GOODPUT for share in fair_shares(graph, pairs)]  # bytes/s on the links
    routes = [_route(graph, src, dst).links for src, dst in pairs]
    load = {}
    for rate, links in zip(wire, routes):
        for link in links:
            load[link] = load.get(link, 0.0) + rate
    capacity = {link: graph[link[0]][link[1]]["bw_mbps"] * 1e6 / 8 for link in load}
    assert all(load[link] <= capacity[link] * (1 + 1e-9) for link in load)  # feasible
    for f, links in enumerate(routes):  # every flow has a full link on which no flow gets more than it
        assert any(load[link] >= capacity[link] * (1 - 1e-9)
                   and all(wire[g] <= wire[f] * (1 + 1e-9) for g, other in enumerate(routes) if link in other)
                   for link in links), (pairs[f], wire)


def test_jains_index_is_one_when_equal_and_one_over_n_when_one_flow_takes_all():
    assert jain_index([5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert jain_index([9.0, 0.0, 0.0]) == pytest.approx(1 / 3)


def queue_samples(rate_bps: float, seconds: float, interval_s: float, full_from_s: float) -> pd.DataFrame:
    """Samples of one egress sending at its rate from ``full_from_s`` on, with a queue of 2 ms meanwhile, one
    drop and ten CE marks per sample."""
    t = np.arange(0.0, seconds, interval_s)
    busy = np.clip(t - full_from_s, 0, None)
    sending = t >= full_from_s
    return pd.DataFrame({"t_s": t, "node": "westb", "peer": "eastb", "rate_bps": rate_bps,
                         "sent_bytes": (busy * rate_bps / 8).round(), "queue_delay_ms": np.where(sending, 2.0, 0.0),
                         "drops": np.cumsum(sending), "ecn_marks": 10 * np.cumsum(sending)})


def test_a_full_egress_reads_100_percent_with_its_queue_and_counters_inside_the_window():
    queues = queue_samples(50e6, seconds=3.0, interval_s=0.01, full_from_s=1.0)
    window = (1.0, 2.5)
    utilisation = utilisation_table(queues, [("westb", "eastb")], window)
    assert utilisation["t_s"].between(*window).all()
    settled = utilisation[utilisation["t_s"] > 1.1]  # past the 10 samples the utilisation is taken over
    assert settled["util_pct"].to_numpy() == pytest.approx(100.0)
    plan = SimpleNamespace(egresses={("westb", "eastb"): SimpleNamespace(rate_bps=50e6, flows=2, kmin_bytes=9000,
                                                                          kmax_bytes=18000)})
    (row,) = egress_table(queues, utilisation, [("westb", "eastb")], window, plan).to_dict("records")
    assert row["util_pct"] == pytest.approx(100.0) and row["queue_p99_ms"] == pytest.approx(2.0)
    assert (row["egress"], row["flows"], row["drops"], row["ce_marks"]) == ("westb->eastb", 2, 200, 2000)
    assert (row["ecn_kmin_bytes"], row["ecn_kmax_bytes"]) == (9000, 18000)
    assert row["sent_bytes"] == pytest.approx(50e6 / 8 * 1.99, rel=1e-6)


def test_feedback_runs_from_the_egresss_first_mark_to_the_first_cnp_of_a_sender_crossing_it():
    """Marks from the sample at 1.0 s (the counter rose since 0.99 s); the flow 0->2 through the egress has its
    first CNP in the sample at 1.05 s, the flow 1->3, which does not cross it, one earlier."""
    queues = queue_samples(50e6, seconds=3.0, interval_s=0.01, full_from_s=1.0)
    senders = pd.DataFrame({"rank": [0, 0, 0, 1], "peer": [2, 2, 2, 3], "t_s": [1.03, 1.04, 1.05, 1.02],
                            "cnps_received": [0, 0, 2, 1]})
    egress = SimpleNamespace(node="westb", peer="eastb", crossing=[(0, 2)])
    assert feedback_delay_ms(queues, senders, egress) == pytest.approx(50.0)
    assert np.isnan(feedback_delay_ms(queues, senders[senders["rank"] == 1], egress))  # its senders heard nothing
    assert np.isnan(feedback_delay_ms(queues.assign(ecn_marks=0), senders, egress))  # it never marked


def a_run(mode: str, repeat: int, goodputs: list[float], queue_p99_ms: float, faithful: bool) -> FlowsRun:
    """A finished run of two 1 MB flows over one egress, both started at 0 and ended at 8 / goodput s."""
    ends = [8 * 1e6 / (g * 1e6) for g in goodputs]
    flows = pd.DataFrame({"bytes": 1e6, "goodput_mbps": goodputs, "start_s": 0.0, "end_s": ends, "cnps": [1, 2],
                          "retransmitted": [0, 3]})
    egresses = pd.DataFrame({"egress": ["westb->eastb"], "util_pct": [90.0], "queue_p99_ms": [queue_p99_ms],
                             "drops": [1], "ce_marks": [5]})
    verdict = SimpleNamespace(faithful=faithful)
    return FlowsRun(mode, flows, egresses, pd.DataFrame(), verdict, f"{mode} #{repeat}", repeat)


def test_the_summary_gives_each_mode_its_median_and_spread_over_repeats_and_counts_the_faithful():
    runs = [a_run("baseline", 1, [4.0, 4.0], 90.0, True), a_run("adaptive", 1, [8.0, 8.0], 2.0, True),
            a_run("baseline", 2, [2.0, 2.0], 80.0, False), a_run("adaptive", 2, [8.0, 4.0], 4.0, True),
            a_run("baseline", 3, [4.0, 4.0], 70.0, True), a_run("adaptive", 3, [8.0, 8.0], 3.0, True)]
    table = summary(runs).set_index("mode")
    assert list(table.index) == ["baseline", "adaptive"]
    baseline, adaptive = table.loc["baseline"], table.loc["adaptive"]
    # aggregate goodput: 2 MB over the later end (8 Mbit/s flows end at 1 s: 16 Mbit/s together)
    assert (baseline["goodput_mbps"], baseline["goodput_mbps_min"], baseline["goodput_mbps_max"]) == (8.0, 4.0, 8.0)
    assert (adaptive["goodput_mbps"], adaptive["goodput_mbps_min"]) == (16.0, 8.0)
    assert adaptive["jain"] == 1.0 and adaptive["jain_min"] == pytest.approx(jain_index([8.0, 4.0]))
    assert (baseline["queue_p99_ms"], baseline["queue_p99_ms_max"]) == (80.0, 90.0)
    assert (baseline["faithful"], adaptive["faithful"], baseline["repeats"]) == (2, 3, 3)
    assert (baseline["drops"], baseline["ce_marks"], baseline["cnps"], baseline["retransmitted"]) == (3, 15, 9, 9)
