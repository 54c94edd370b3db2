"""The analytic lower bound on a collective's time, checked against hand computation (native)."""

import math

import networkx as nx
import pytest

from testbed.collective.bounds import PACKET_OVERHEAD, PACKET_PAYLOAD, collective_bound, rank_sites
from testbed.collective.nccl_tests import COLLECTIVES
from testbed.net.routing import fabric_graph
from testbed.topologies import load_topology

DCI_BYTES_PER_S = 50e6 / 8  # the two_sites DCI
MIB = 1 << 20
CHUNK = 128 * 1024


def wire(message_bytes: int) -> int:
    """Hand version of the link bytes of one message: 4076 data bytes and 78 header bytes per packet."""
    return message_bytes + math.ceil(message_bytes / 4076) * 78


def one_link(rate_mbps: float, delay_ms: float) -> nx.Graph:
    """Two hosts joined directly by one link, as routing.fabric_graph would describe it."""
    graph = nx.Graph()
    graph.add_node("h0", role="host")
    graph.add_node("h1", role="host")
    graph.add_edge("h0", "h1", weight=1, delay_ms=delay_ms, dci=False, bw_mbps=rate_mbps)
    return graph


def two_sites(distance_km: float = 1000.0):
    topo = load_topology("two_sites")(distance_km=distance_km)
    hosts = topo.nodes_with(role="host")
    return fabric_graph(topo), hosts, rank_sites(topo, hosts)


def test_packet_constants_are_the_transports():
    # IB MTU 4096 less our 20-byte header; IPv4 20 + UDP 8 + BTH 12 + ICRC 4 + header 20 + Ethernet 14.
    assert (PACKET_PAYLOAD, PACKET_OVERHEAD) == (4076, 78)


def test_two_ranks_one_chunk_on_one_link():
    # 1 MB all_reduce of 2 ranks: each sends its 500 kB half twice (reduce, then the result back), so
    # each direction carries 2 * (1/2) * S.  With one chunk every message waits for the one before.
    rate, delay_s, half = 1e6, 0.002, 500_000  # 8 Mbit/s = 1e6 bytes/s
    bound = collective_bound(one_link(8, delay_s * 1000), ["h0", "h1"], "all_reduce", 1_000_000,
                             chunk_bytes=1_000_000)
    assert bound.bandwidth_us == pytest.approx(2 * wire(half) / rate * 1e6)
    assert bound.bottleneck_bytes == 2 * wire(half) == 2 * (half + 123 * 78)
    assert bound.latency_us == pytest.approx(2 * (delay_s + wire(half) / rate) * 1e6)
    assert bound.time_us == bound.latency_us and bound.limited_by == "latency"
    assert bound.algbw_gbps == pytest.approx(1e6 / 1e9 / (bound.time_us / 1e6))
    assert bound.busbw_gbps == pytest.approx(bound.algbw_gbps)  # bus factor 2(n-1)/n = 1


def test_two_ranks_many_chunks_are_bandwidth_bound():
    # 50 chunks of 10 kB per half: chunk j+1 leaves once chunk j went out, so without delay the
    # chain is 51 chunk times, the link 100.
    chunk = 10_000
    bound = collective_bound(one_link(8, 0.0), ["h0", "h1"], "all_reduce", 1_000_000, chunk_bytes=chunk)
    assert bound.bandwidth_us == pytest.approx(100 * wire(chunk))  # 1 byte/us
    assert bound.latency_us == pytest.approx(51 * wire(chunk))
    assert bound.time_us == bound.bandwidth_us
    assert bound.limited_by in ("h0->h1", "h1->h0")


def test_flat_ring_on_two_sites_is_bound_by_the_dci():
    # Ranks east h1-h4 then west h1-h4: the ring crosses the DCI once each way (easth4 -> westh1 and
    # westh4 -> easth1), each ring link carrying 2(n-1)/n of the buffer: 14 sends of 64 chunks of
    # 128 KiB per iteration.
    graph, hosts, _ = two_sites()
    bound = collective_bound(graph, hosts, "all_reduce", 64 * MIB, chunk_bytes=CHUNK)
    dci_bytes = 14 * 64 * wire(CHUNK)
    assert set(bound.bottleneck) == {"eastb", "westb"}
    assert bound.bottleneck_bytes == dci_bytes
    assert bound.bandwidth_us == pytest.approx(dci_bytes / DCI_BYTES_PER_S * 1e6)
    assert bound.time_us == bound.bandwidth_us
    assert bound.link_bytes[("eastb", "westb")] == bound.link_bytes[("westb", "eastb")] == dci_bytes


def test_hierarchical_all_reduce_moves_less_over_the_dci():
    # Hierarchically only the inter-site all-reduce crosses: 4 rank pairs each exchange their quarter
    # shard (2 * (S-1)/S * D/4 = D/4 each way), so the DCI carries one buffer's worth (512 chunks)
    # instead of the flat ring's 1.75 buffers (896 chunks).
    graph, hosts, sites = two_sites()
    assert sites == ((4, 5, 6, 7), (0, 1, 2, 3))  # west is declared first
    flat = collective_bound(graph, hosts, "all_reduce", 64 * MIB, chunk_bytes=CHUNK)
    hier = collective_bound(graph, hosts, "all_reduce", 64 * MIB, chunk_bytes=CHUNK, sites=sites)
    dci = ("eastb", "westb")
    assert hier.link_bytes[dci] == 4 * 128 * wire(CHUNK)
    assert hier.link_bytes[dci] * 7 == flat.link_bytes[dci] * 4
    # The leaf uplink of eastl1 (intra ring 1.5 D plus two ranks' inter-site quarters, at twice the
    # DCI rate) ties with the DCI; the tie names the DCI.
    assert hier.link_bytes[("eastl1", "easts1")] == 2 * hier.link_bytes[dci]
    assert hier.limited_by in ("eastb->westb", "westb->eastb")
    assert hier.time_us < 0.6 * flat.time_us
    assert hier.busbw_gbps > flat.busbw_gbps


def test_hierarchical_on_three_sites_cuts_every_dci_to_four_fifths():
    # Flat ring of 6: each ring link, three of them DCIs, carries 2 * 5/6 D.  Hierarchically two rank
    # rings of the three sites each all-reduce a half shard: 2 * 2/3 * D/2 per rank, two ranks per DCI,
    # 4/3 D.  6 MiB cut into 1 MiB slices either way, so the messages are the same 512 KiB chunks.
    topo = load_topology("three_sites")()
    graph, hosts = fabric_graph(topo), topo.nodes_with(role="host")
    sites = rank_sites(topo, hosts)
    assert sites == ((4, 5), (0, 1), (2, 3))  # west, east, south as declared
    flat, hier = (collective_bound(graph, hosts, "all_reduce", 6 * MIB, chunk_bytes=512 * 1024, sites=s)
                  for s in (None, sites))
    dcis = [link for link in flat.link_bytes if graph.edges[link]["dci"]]
    assert len(dcis) == 3
    for link in dcis:
        assert flat.link_bytes[link] == 20 * wire(512 * 1024)
        assert hier.link_bytes[link] * 5 == flat.link_bytes[link] * 4
    assert hier.time_us < flat.time_us


@pytest.mark.parametrize("size", [8, 64, 1024])
def test_tiny_sizes_are_latency_bound_and_grow_with_distance(size):
    near, far = (two_sites(km) for km in (10, 1000))
    extra_dci_delay_us = (1000 - 10) * 5  # 5 us/km one way
    for sites, crossings in ((None, 4), (near[2], 2)):
        short = collective_bound(*near[:2], "all_reduce", size, chunk_bytes=CHUNK, sites=sites)
        long = collective_bound(*far[:2], "all_reduce", size, chunk_bytes=CHUNK, sites=sites)
        assert short.limited_by == long.limited_by == "latency"
        assert long.bandwidth_us == pytest.approx(short.bandwidth_us)
        assert long.latency_us - short.latency_us == pytest.approx(crossings * extra_dci_delay_us)


def test_ecmp_links_carry_no_bytes_in_the_bound():
    # With two spines each leaf-spine hop has an alternative, so only the host links, the DCI and the
    # links every path shares count; the DCI stays the bottleneck.
    topo = load_topology("leaf_spine")(sites=2, hosts=4, leaves=2, spines=2)
    graph = fabric_graph(topo)
    bound = collective_bound(graph, topo.nodes_with(role="host"), "all_reduce", MIB, chunk_bytes=CHUNK)
    assert not any(a.startswith("dc1s") or b.startswith("dc1s") for a, b in bound.link_bytes)
    assert set(bound.bottleneck) == {"dc1b", "dc2b"}


@pytest.mark.parametrize("collective", COLLECTIVES)
@pytest.mark.parametrize("topology", ["two_sites", "three_sites"])  # 8 and 6 ranks
@pytest.mark.parametrize("size", [1000, 4096, 100_000])
def test_every_collective_has_a_positive_bound(collective, topology, size):
    topo = load_topology(topology)()
    graph, hosts = fabric_graph(topo), topo.nodes_with(role="host")
    bound = collective_bound(graph, hosts, collective, size, root=1, nchannels=2, chunk_bytes=1000)
    assert bound.time_us > 0 and bound.bandwidth_us > 0 and bound.latency_us > 0
    assert bound.time_us == max(bound.bandwidth_us, bound.latency_us)
    assert bound.algbw_gbps > 0 and bound.busbw_gbps > 0
    in_place = collective_bound(graph, hosts, collective, size, root=1, nchannels=2, chunk_bytes=1000,
                                in_place=True)
    assert in_place.link_bytes == bound.link_bytes  # same traffic, possibly other dependencies


@pytest.mark.parametrize("collective", COLLECTIVES)
def test_size_zero_gives_zero(collective):
    graph, hosts, _ = two_sites()
    bound = collective_bound(graph, hosts, collective, 0, chunk_bytes=CHUNK)
    assert (bound.time_us, bound.algbw_gbps, bound.busbw_gbps) == (0, 0, 0)
    assert bound.bottleneck is None and bound.limited_by == "latency"


def test_a_graph_without_rates_is_refused():
    topo = load_topology("two_sites")()
    graph = fabric_graph(topo)
    del graph["westb"]["eastb"]["bw_mbps"]
    with pytest.raises(ValueError, match="link .* has no bw_mbps"):
        collective_bound(graph, topo.nodes_with(role="host"), "all_reduce", 1024, chunk_bytes=CHUNK)
