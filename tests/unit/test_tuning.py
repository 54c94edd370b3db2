"""Distance-aware collectives: which algorithm the full-stack mode runs, from the fabric as measured (native:
the choice is the analytic bound's, computed on the fabric graph)."""

from types import SimpleNamespace

import pytest

from testbed.collective.bounds import collective_bound, rank_sites
from testbed.collective.schedules.model import Algorithm
from testbed.collective.tuning import CHUNKS, DEFAULT, MARGIN, candidates, choose, describe, with_measured_dcis
from testbed.experiments.discovery import SitePath
from testbed.experiments.fabric_controller import FabricController
from testbed.net.routing import fabric_graph
from testbed.topologies import load_topology

MIB = 1 << 20


def fabric(**options):
    topo = load_topology("two_sites")(**options)
    hosts = topo.nodes_with(role="host")
    return topo, fabric_graph(topo), hosts, rank_sites(topo, hosts)


def dci_of(graph) -> tuple[str, str]:
    (dci,) = [(a, b) for a, b, data in graph.edges(data=True) if data["dci"]]
    return dci


def test_the_candidates_are_flat_and_hierarchical_all_reduce_at_each_chunk_with_one_channel():
    assert [(a.hierarchical, a.chunk_bytes) for a in candidates("all_reduce", ((0, 1), (2, 3)))] == \
        [(False, c) for c in CHUNKS] + [(True, c) for c in CHUNKS]
    assert {a.nchannels for a in candidates("all_reduce", ((0, 1), (2, 3)))} == {1}
    # nothing to gain from a hierarchy: one rank per site, one site, or a collective without one
    assert not any(a.hierarchical for a in candidates("all_reduce", ((0,), (1,))))
    assert not any(a.hierarchical for a in candidates("all_reduce", ((0, 1, 2, 3),)))
    assert not any(a.hierarchical for a in candidates("all_gather", ((0, 1), (2, 3))))
    assert DEFAULT in candidates("all_gather", ((0, 1), (2, 3)))


def test_a_dci_narrower_than_its_site_makes_the_job_hierarchical_by_its_bound():
    _, graph, hosts, sites = fabric(hosts=2, host_bw_mbps=500, dci_bw_mbps=250, distance_km=1000)
    choice = choose(graph, hosts, sites, "all_reduce", 16 * MIB)
    assert choice.algorithm.hierarchical and choice.bound_us < (1 - MARGIN) * choice.default_bound_us
    # the figures are the bound's own, for the algorithm chosen and for NCCL's default
    assert choice.bound_us == collective_bound(graph, hosts, "all_reduce", 16 * MIB, sites=sites,
                                               chunk_bytes=choice.algorithm.chunk_bytes).time_us
    assert choice.default_bound_us == collective_bound(graph, hosts, "all_reduce", 16 * MIB,
                                                       chunk_bytes=DEFAULT.chunk_bytes).time_us
    assert choice.reason.startswith(describe(choice.algorithm) + ": bound ")


def test_the_default_stays_where_the_dci_is_not_the_bottleneck_but_not_once_it_is_measured_slower():
    _, graph, hosts, sites = fabric(hosts=2, host_bw_mbps=100, dci_bw_mbps=1000, distance_km=10)
    kept = choose(graph, hosts, sites, "all_reduce", 4 * MIB)
    assert kept.algorithm == DEFAULT and kept.reason.startswith("default kept")
    dci = dci_of(graph)
    slow = with_measured_dcis(graph, [(dci, graph.edges[dci]["delay_ms"], 50.0)])
    assert graph.edges[dci]["bw_mbps"] == 1000  # the declared graph is left as it was
    assert choose(slow, hosts, sites, "all_reduce", 4 * MIB).algorithm.hierarchical


def test_a_dci_measured_both_ways_keeps_its_slower_rate_and_longer_delay():
    _, graph, _, _ = fabric(hosts=1)
    a, b = dci_of(graph)
    measured = with_measured_dcis(graph, [((a, b), 5.2, 40.0), ((b, a), 5.0, 45.0)])
    assert (measured[a][b]["delay_ms"], measured[a][b]["bw_mbps"]) == (5.2, 40.0)


def test_describe_names_the_algorithm_as_the_log_and_summary_print_it():
    assert describe(Algorithm()) == "flat ring, 512 KiB chunks, 1 channel"
    assert describe(Algorithm(nchannels=2, chunk_bytes=2 * MIB, hierarchical=True)) == \
        "hierarchical, 2 MiB chunks, 2 channels"


class Host(SimpleNamespace):
    pass


@pytest.mark.parametrize("measured_mbps, dci_mbps, hierarchical",
                         [(250.0, 250.0, True), (480.0, 1000.0, False), (460.0, 1000.0, False)])
def test_the_controller_feeds_the_choice_the_dci_as_probed(measured_mbps, dci_mbps, hierarchical):
    """A DCI declared wider than the sites (1 Gbit/s against 500 Mbit/s NICs) is probed at ``measured_mbps``
    from host to host: the host's NIC caps the probe at 500, so only a shortfall beyond the probe's tolerance
    says the DCI is slower than declared, and then it runs at the rate measured."""
    topo, graph, hosts, _ = fabric(hosts=2, host_bw_mbps=500, dci_bw_mbps=1000, distance_km=1000)
    tb = SimpleNamespace(graph=graph, topo=topo,
                         hosts=lambda site=None: [Host(name=h) for h in hosts
                                                  if site is None or topo.nodeInfo(h)["site"] == site])
    a, b = dci_of(graph)
    west, east = topo.nodeInfo(a)["site"], topo.nodeInfo(b)["site"]
    paths = [SitePath(west, east, 10.2, 10.3, measured_mbps, ((a, b),)),
             SitePath(east, west, 10.2, 10.3, measured_mbps, ((b, a),))]
    controller = FabricController(tb, paths, "scale-across", log=lambda line: None)
    assert sorted(controller._measured_dcis()) == sorted([((a, b), 5.1, dci_mbps), ((b, a), 5.1, dci_mbps)])
    algorithm, why = controller.algorithm(tb.hosts(), "all_reduce", 16 * MIB, Algorithm())
    assert algorithm.hierarchical is hierarchical, why
    # the network-only modes run the user's algorithm whatever the fabric
    assert FabricController(tb, paths, "adaptive", log=print).algorithm(
        tb.hosts(), "all_reduce", 16 * MIB, Algorithm(chunk_bytes=MIB)) == \
        (Algorithm(chunk_bytes=MIB), "the user's (mode does not tune collectives)")
