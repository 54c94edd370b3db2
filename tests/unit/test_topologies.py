"""Topology scripts, addressing and routing (native: Mininet Topo objects are plain data)."""

import ipaddress
import re

import pytest

from testbed.model.fabric import TopologyError
from testbed.net.routing import compute_routes, fabric_graph, path_delay_ms
from testbed.topologies import load_topology


def routes_of(topo):
    return compute_routes(fabric_graph(topo))


def test_two_sites_defaults():
    topo = load_topology("two_sites")()
    assert len(topo.nodes_with(role="host")) == 8
    assert len(topo.nodes_with(role="host", site="west")) == 4
    assert [i["dci"] for _, _, i in topo.dci_link_names()] == ["west-east"]
    assert topo.linkInfo("westb", "eastb")["config"].delay_ms == pytest.approx(5.0)
    assert 2 * path_delay_ms(fabric_graph(topo), "westh1", "easth4") == pytest.approx(10.0)


def test_every_link_is_its_own_subnet_inside_its_site_block():
    topo = load_topology("leaf_spine")(sites=3, hosts=5, leaves=2, spines=3)
    subnets = []
    for _, _, info in topo.links(withInfo=True):
        a = ipaddress.ip_interface(info["params1"]["ip"])
        b = ipaddress.ip_interface(info["params2"]["ip"])
        assert a.network == b.network and a.ip != b.ip
        subnets.append(a.network)
        if info["kind"] != "dci":
            site = topo.nodeInfo(info["node1"])["site"]
            assert a.ip in ipaddress.ip_network(f"10.{int(site[2:])}.0.0/16")
    assert len(subnets) == len(set(subnets))


def test_spines_give_ecmp_and_hosts_get_a_default_route():
    topo = load_topology("leaf_spine")(sites=2, hosts=4, leaves=2, spines=2)
    routes = routes_of(topo)
    assert [r.dst for r in routes["dc1h1"]] == ["0.0.0.0/0"]
    far_host_prefix = str(ipaddress.ip_interface(topo.linkInfo("dc2h1", "dc2l1")["params1"]["ip"]).network)
    leaf_route = next(r for r in routes["dc1l1"] if r.dst == far_host_prefix)
    assert len(leaf_route.gateways) == 2  # one per spine
    border_route = next(r for r in routes["dc1b"] if r.dst == far_host_prefix)
    assert border_route.gateways == ("10.255.0.2",)  # across the DCI


def test_direct_dci_beats_a_shorter_two_hop_detour():
    topo = load_topology("three_sites")(west_south_km=3000, west_east_km=1000, east_south_km=1500)
    graph = fabric_graph(topo)
    assert path_delay_ms(graph, "westh1", "southh1") == pytest.approx(15.0)
    assert path_delay_ms(graph, "westh1", "easth1") == pytest.approx(5.0)


def test_dci_delay_override_changes_only_dci_hops():
    topo = load_topology("leaf_spine")(sites=3, distance_km=1000)  # dc1 - dc2 - dc3 in a chain
    graph = fabric_graph(topo)
    assert path_delay_ms(graph, "dc1h1", "dc3h1") == pytest.approx(10.0)  # two 5 ms DCI hops
    assert path_delay_ms(graph, "dc1h1", "dc3h1", dci_delay_ms=0.1) == pytest.approx(0.2)
    assert path_delay_ms(graph, "dc1h1", "dc1h4", dci_delay_ms=0.1) == 0  # stays inside the site


def test_every_router_reaches_every_prefix():
    topo = load_topology("three_sites")()
    graph = fabric_graph(topo)
    routes = compute_routes(graph)
    prefixes = {str(ipaddress.ip_interface(i["params1"]["ip"]).network) for _, _, i in topo.links(withInfo=True)}
    for router in topo.nodes_with(role="leaf") + topo.nodes_with(role="border"):
        assert len({r.dst for r in routes[router]}) == len(prefixes) - graph.degree(router)
        assert all(r.gateways for r in routes[router])


def test_bad_topology_values_fail_before_anything_is_built():
    with pytest.raises(TopologyError, match="distance_km -1"):
        load_topology("two_sites")(distance_km=-1)
    with pytest.raises(TopologyError, match="bw_mbps 0"):
        load_topology("two_sites")(dci_bw_mbps=0)


GOOD_SCRIPT = """
from testbed.net.topo import FabricTopo

class Mine(FabricTopo):
    def build(self, hosts=1):
        self.addSite("west", hosts=hosts, leaves=1, spines=1{site_extra})
        self.addSite("east", hosts=hosts, leaves=1, spines=1)
        self.addDci("west", "east", distance_km=10)

topos = {topos}
"""


@pytest.mark.parametrize("script, problem", [
    (GOOD_SCRIPT.format(site_extra="", topos="{'mine': Mine}") + "\nif True\n", "syntax error at line"),
    ("raise RuntimeError('no GPUs today')\n", "failed on import: RuntimeError: no GPUs today"),
    (GOOD_SCRIPT.format(site_extra="", topos="[Mine]"), "'topos' must be a dict of name -> FabricTopo subclass, "
                                                         "not a list"),
    (GOOD_SCRIPT.format(site_extra=", colour='red'", topos="{'mine': Mine}"),
     "topology Mine: LinkConfig.__init__() got an unexpected keyword argument 'colour'"),
])
def test_a_broken_topology_script_is_one_line_naming_the_script(tmp_path, script, problem):
    path = tmp_path / "mine.py"
    path.write_text(script)
    with pytest.raises(TopologyError, match=re.escape(problem)) as raised:
        load_topology(str(path))()
    assert "\n" not in str(raised.value)


def test_a_good_script_loads_by_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(GOOD_SCRIPT.format(site_extra="", topos="{'mine': Mine}"))
    assert len(load_topology(str(path))(hosts=2).nodes_with(role="host")) == 4


def test_a_dumbbell_puts_its_senders_and_receivers_either_side_of_one_dci_bottleneck():
    topo = load_topology("dumbbell")(senders=3, receivers=1, distance_km=3000, host_bw_mbps=100, dci_bw_mbps=40)
    assert topo.nodes_with(role="host", site="west") == ["westh1", "westh2", "westh3"]
    assert topo.nodes_with(role="host", site="east") == ["easth1"]
    assert [i["dci"] for _, _, i in topo.dci_link_names()] == ["west-east"]
    graph = fabric_graph(topo)
    assert 2 * path_delay_ms(graph, "westh3", "easth1") == pytest.approx(30.0)
    rates = {(a, b): info["config"].bw_mbps for a, b, info in topo.links(withInfo=True)}
    # the senders' leaf uplink and spine carry all three at once; the DCI is narrower than any one of them
    assert rates == {("westh1", "westl1"): 100, ("westh2", "westl1"): 100, ("westh3", "westl1"): 100,
                     ("westl1", "wests1"): 300, ("wests1", "westb"): 300, ("westb", "eastb"): 40,
                     ("easts1", "eastb"): 100, ("eastl1", "easts1"): 100, ("easth1", "eastl1"): 100}


def test_a_dumbbell_whose_dci_is_not_the_bottleneck_is_refused():
    with pytest.raises(TopologyError, match="dci_bw_mbps 100 must be below host_bw_mbps 100"):
        load_topology("dumbbell")(dci_bw_mbps=100)
