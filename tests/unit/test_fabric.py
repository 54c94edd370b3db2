"""The fabric model: delay arithmetic, derived defaults and validation (native, no kernel)."""

import re

import pytest

from testbed.model.fabric import DCI_ROUTER_ECN, IFNAMSIZ, DciLink, Fabric, LinkConfig, Site, TopologyError
from testbed.model.units import bdp_bytes, frame_bytes, propagation_delay_ms, tcp_goodput_mbps
from testbed.topologies import load_topology


def test_propagation_delay_is_five_microseconds_per_km():
    assert propagation_delay_ms(1000) == pytest.approx(5.0)
    assert propagation_delay_ms(10) == pytest.approx(0.05)
    assert propagation_delay_ms(0) == 0


def test_dci_delay_derives_from_distance_unless_overridden():
    assert DciLink("a", "b", distance_km=3000).one_way_delay_ms() == pytest.approx(15.0)
    assert DciLink("a", "b", distance_km=3000, delay_ms=2.5).one_way_delay_ms() == 2.5
    config = DciLink("a", "b", distance_km=400, config=LinkConfig(bw_mbps=80, jitter_ms=0.3, loss_pct=1,
                                                                   loss_burst_pkts=3)).link_config()
    assert config == LinkConfig(bw_mbps=80, delay_ms=2.0, jitter_ms=0.3, loss_pct=1, loss_burst_pkts=3)


def test_bdp_and_goodput_arithmetic():
    assert bdp_bytes(100, 10) == 125_000  # 100 Mbit/s * 10 ms
    assert frame_bytes(9000) == 9014
    assert tcp_goodput_mbps(100, 1500) == pytest.approx(100 * 1448 / 1514)


def test_resolved_defaults_follow_rate_delay_and_mtu():
    long_haul = LinkConfig(bw_mbps=1000, delay_ms=10).resolved(mtu=9000)
    assert long_haul.buffer_bytes == bdp_bytes(1000, 20)  # one round trip of the link
    short = LinkConfig(bw_mbps=100).resolved(mtu=9000)
    assert short.buffer_bytes == 64 * 9014
    assert 2 * 9014 <= short.ecn_kmin_bytes < short.ecn_kmax_bytes <= short.buffer_bytes
    fast = LinkConfig(bw_mbps=400_000).resolved(mtu=1500)
    assert fast.ecn_kmax_bytes == 40 * 400_000 // 8  # 40 us of queue at 400 Gbit/s (DCQCN's 200 KB @ 40G)
    assert (long_haul.ecn_pmax, short.ecn_pmax) == (0.01, 0.01)  # the DCQCN paper's Pmax
    explicit = LinkConfig(bw_mbps=100, buffer_bytes=10**6, ecn_kmin_bytes=50_000, ecn_kmax_bytes=150_000,
                          ecn_pmax=0.2)
    assert explicit.resolved(9000) == explicit == explicit.resolved(9000, DCI_ROUTER_ECN)


def test_a_dci_ships_with_the_deep_buffer_routers_wred_profile_clamped_to_its_buffer():
    """SONiC's AZURE_LOSSLESS: 1 MiB / 2 MiB / 5 %; a buffer under 2 MiB holds Kmax, and Kmin stays below it."""
    deep = DciLink("west", "east", 1000, LinkConfig(bw_mbps=400_000)).resolved(9000)
    assert (deep.ecn_kmin_bytes, deep.ecn_kmax_bytes, deep.ecn_pmax) == (1_048_576, 2_097_152, 0.05)
    shallow = DciLink("west", "east", 10, LinkConfig(bw_mbps=100, buffer_bytes=1_500_000)).resolved(9000)
    assert (shallow.ecn_kmin_bytes, shallow.ecn_kmax_bytes) == (750_000, 1_500_000)
    given = DciLink("west", "east", 10, LinkConfig(bw_mbps=100, ecn_kmin_bytes=20_000, ecn_pmax=0.5)).resolved(9000)
    assert (given.ecn_kmin_bytes, given.ecn_pmax) == (20_000, 0.5) and given.ecn_kmax_bytes == given.buffer_bytes


def two_sites(distance_km=1000, delay_ms=None, bw_mbps=50.0, **link) -> Fabric:
    return Fabric(sites=[Site("west"), Site("east")],
                  dci_links=[DciLink("west", "east", distance_km, LinkConfig(bw_mbps=bw_mbps, **link), delay_ms)])


@pytest.mark.parametrize("dci, declared", [
    ({}, LinkConfig(bw_mbps=50.0, delay_ms=5.0)),
    ({"distance_km": 0, "loss_pct": 100, "ecn_pmax": 1}, LinkConfig(bw_mbps=50.0, loss_pct=100, ecn_pmax=1)),
    ({"delay_ms": 0.25, "bw_mbps": 400_000, "jitter_ms": 0.1, "reorder_pct": 1},
     LinkConfig(bw_mbps=400_000, delay_ms=0.25, jitter_ms=0.1, reorder_pct=1)),
])
def test_a_valid_fabric_validates_and_keeps_what_was_declared(dci, declared):
    """The limits themselves (0 km, 100 % loss, Pmax 1) are valid, and validation changes nothing."""
    fabric = two_sites(**dci)
    fabric.validate()
    assert fabric.dci_links[0].link_config() == declared
    assert [site.node_names()["border"] for site in fabric.sites] == [["westb"], ["eastb"]]


@pytest.mark.parametrize("dci, message", [
    ({"distance_km": -5}, "dci west-east: distance_km -5 must be >= 0"),
    ({"distance_km": "far"}, "dci west-east: distance_km 'far' is not a number"),
    ({"distance_km": float("nan")}, "distance_km nan is not a number"),
    ({"bw_mbps": 0}, "dci west-east: bw_mbps 0 must be > 0"),
    ({"bw_mbps": -10}, "bw_mbps -10 must be > 0"),
    ({"loss_pct": 101}, "dci west-east: loss_pct 101 must be <= 100"),
    ({"loss_pct": -1}, "loss_pct -1 must be >= 0"),
    ({"jitter_ms": -0.1}, "jitter_ms -0.1 must be >= 0"),
    ({"ecn_kmin_bytes": 90_000, "ecn_kmax_bytes": 30_000}, "ecn_kmin_bytes 90000 must be below ecn_kmax_bytes"),
    ({"buffer_bytes": 10_000, "ecn_kmax_bytes": 30_000}, "ecn_kmax_bytes 30000 exceeds buffer_bytes 10000"),
    ({"delay_ms": -1}, "dci west-east: delay_ms -1 must be >= 0"),
    ({"ecn_kmin_bytes": 0.5, "ecn_kmax_bytes": 1}, "dci west-east: ecn_kmin_bytes 0.5 must be a whole number of bytes"),
    ({"loss_burst_pkts": 0.5}, "dci west-east: loss_burst_pkts 0.5 must be 0 (independent losses) or >= 1"),
    ({"loss_burst_pkts": -4}, "loss_burst_pkts -4 must be 0 (independent losses) or >= 1"),
    ({"loss_burst_pkts": "long"}, "loss_burst_pkts 'long' is not a number"),
    ({"loss_pct": 90, "loss_burst_pkts": 4},
     "dci west-east: loss_pct 90 with loss_burst_pkts 4 must be <= 80 (bursts need gaps) or 100"),
])
def test_bad_dci_values_name_the_field_and_value(dci, message):
    with pytest.raises(TopologyError, match=re.escape(message)):
        two_sites(**dci).validate()


def test_a_dci_delay_comes_from_its_distance_not_its_config():
    fabric = Fabric(sites=[Site("west"), Site("east")],
                    dci_links=[DciLink("west", "east", 10, LinkConfig(bw_mbps=50, delay_ms=3))])
    with pytest.raises(TopologyError, match="dci west-east: its delay comes from distance_km or delay_ms"):
        fabric.validate()


@pytest.mark.parametrize("loss_pct, burst", [(5, 4), (80, 4), (50, 1), (100, 4), (100, 1), (0, 10), (30, 0)])
def test_loss_bursts_accept_any_average_a_gilbert_chain_can_reach(loss_pct, burst):
    """Bursts of b packets leave room for at most b / (b + 1) loss; 100 % (no bursts at all) always works."""
    two_sites(loss_pct=loss_pct, loss_burst_pkts=burst).validate()


def test_structural_errors():
    cases = {
        "duplicate site name": Fabric(sites=[Site("west"), Site("west")]),
        "unknown site 'north'": Fabric(sites=[Site("west"), Site("east")],
                                       dci_links=[DciLink("west", "north", 10)]),
        "site 'east' is not connected": Fabric(sites=[Site("west"), Site("east")]),
        "site 'south' is not connected": Fabric(
            sites=[Site("west"), Site("east"), Site("south")], dci_links=[DciLink("west", "east", 10)]),
        "duplicate link between": Fabric(sites=[Site("west"), Site("east")],
                                         dci_links=[DciLink("west", "east", 10), DciLink("east", "west", 20)]),
        "must join two different sites": Fabric(sites=[Site("west")], dci_links=[DciLink("west", "west", 10)]),
        "no sites declared": Fabric(),
        "hosts 0 must be a whole number": Fabric(sites=[Site("west", hosts=0)]),
        "name must be lower-case": Fabric(sites=[Site("West")]),
        "name too long": Fabric(sites=[Site("averyveryverylongname")]),
        "mtu 100 must be a whole number": Fabric(sites=[Site("west")], mtu=100),
    }
    for message, fabric in cases.items():
        with pytest.raises(TopologyError, match=message):
            fabric.validate()


@pytest.mark.parametrize("fabric, message", [
    (Fabric(sites=[Site("west", hosts=10**18)]), "site 'west': hosts 1000000000000000000 must be at most 1000"),
    (Fabric(sites=[Site("west", leaves=40, spines=40)]), "leaves 40 x spines 40 make 1640 leaf, spine and"),
    (Fabric(sites=[Site("west", hosts=991, leaves=4, spines=2)]), "hosts 991 must be at most 990"),  # 10 others
    (Fabric(sites=[Site("abcdefgh", hosts=10, leaves=1)]),
     "site 'abcdefgh': hosts 10 must be at most 9: interface abcdefghh10-eth0 would exceed 15"),
    (Fabric(sites=[Site("abcdefg", hosts=2, leaves=1, spines=99)]),
     "site 'abcdefg': spines 99 must be at most 98: interface abcdefgl1-eth100 would exceed 15"),
    (Fabric(sites=[Site(f"s{i}", hosts=300) for i in range(4)],
            dci_links=[DciLink(f"s{i}", f"s{i + 1}", 10) for i in range(3)]),
     "fabric: 4 sites with 1200 hosts in all and 3 DCI links make 1215 links, at most 1000"),
])
def test_counts_are_refused_by_their_bound_before_any_node_is_named(fabric, message):
    with pytest.raises(TopologyError, match=re.escape(message)):
        fabric.validate()


def test_every_interface_name_the_check_allows_fits_and_the_longest_is_what_mininet_names():
    """The longest name the check computes from the counts is one Mininet gives, and it fits IFNAMSIZ."""
    topo = load_topology("leaf_spine")(sites=2, hosts=99, leaves=9, spines=9)
    names = {f"{node}-eth{port}" for node, ports in topo.ports.items() for port in ports}
    longest = max(names, key=len)
    site = topo.fabric.sites[0]
    assert len(site.longest_interface(dcis=1)) == len(longest) <= IFNAMSIZ
    assert site.longest_interface(dcis=1) in names


@pytest.mark.parametrize("dci, message", [
    ({"ecn_kmax_bytes": 576_897}, "ecn_kmax_bytes 576897 exceeds buffer_bytes 576896"),  # the derived buffer
    ({"ecn_kmin_bytes": 576_896}, "ecn_kmin_bytes 576896 must be below ecn_kmax_bytes 576896"),  # the derived Kmax
])
def test_a_threshold_given_alone_is_checked_against_the_derived_ones(dci, message):
    """Found by tests/unit/test_properties.py: RED's encoder refused these after the model had accepted them."""
    with pytest.raises(TopologyError, match=re.escape(f"dci west-east: {message}")):
        load_topology("two_sites")(**dci)


def test_reorder_needs_delay():
    with pytest.raises(TopologyError, match="reorder_pct 5 needs a delay_ms"):
        LinkConfig(bw_mbps=10, reorder_pct=5).check("link x")
