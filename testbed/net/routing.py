"""Static routes for a routed fabric, computed from the topology, installed through pyroute2.

Paths minimise first the number of hops and then the propagation delay, the way an IGP with hop-count
metrics and latency tie-breaks would: a direct DCI link is always used over a two-hop detour even when the
detour is shorter in kilometres, and equal-cost paths (over the spines of a site) become ECMP routes.
Hosts are single-homed end points and never transit.
"""

import ipaddress
from dataclasses import dataclass

import networkx as nx

HOP_WEIGHT_US = 1_000_000_000  # one hop outweighs any realistic delay (1000 s)


@dataclass(frozen=True)
class Route:
    """``dst`` reached through ``gateways`` (more than one: ECMP)."""

    dst: str
    gateways: tuple[str, ...]


def fabric_graph(topo) -> nx.Graph:
    """The topology as a weighted graph; each edge knows its delay, its rate, its prefix and each end's address."""
    graph = nx.Graph()
    for name in topo.nodes():
        graph.add_node(name, role=topo.nodeInfo(name).get("role"))
    for _, _, info in topo.links(withInfo=True):
        a, b = info["node1"], info["node2"]
        ip_a, ip_b = info["params1"]["ip"], info["params2"]["ip"]
        graph.add_edge(
            a, b,
            weight=HOP_WEIGHT_US + round(info["config"].delay_ms * 1000),
            delay_ms=info["config"].delay_ms,
            bw_mbps=info["config"].bw_mbps,
            dci=info.get("kind") == "dci",
            prefix=str(ipaddress.ip_interface(ip_a).network),
            addr={a: ip_a.split("/")[0], b: ip_b.split("/")[0]},
        )
    return graph


def compute_routes(graph: nx.Graph) -> dict[str, list[Route]]:
    """Routes every node needs beyond its connected prefixes: hosts a default route, routers one per prefix."""
    routes: dict[str, list[Route]] = {n: [] for n in graph}
    for u, v, edge in graph.edges(data=True):
        dist = nx.multi_source_dijkstra_path_length(graph, {u, v})
        for node in graph:
            if node in (u, v) or graph.nodes[node]["role"] == "host":
                continue
            hops = [n for n in graph[node]
                    if (graph.nodes[n]["role"] != "host" or n in (u, v))
                    and dist[n] + graph[node][n]["weight"] == dist[node]]
            routes[node].append(Route(edge["prefix"], tuple(sorted(graph[node][n]["addr"][n] for n in hops))))
    for host in (n for n in graph if graph.nodes[n]["role"] == "host"):
        gateways = tuple(sorted(graph[host][n]["addr"][n] for n in graph[host]))
        routes[host].append(Route("0.0.0.0/0", gateways))
    return routes


def path_delay_ms(graph: nx.Graph, src: str, dst: str, dci_delay_ms: float | None = None) -> float:
    """One-way propagation delay along the path traffic from ``src`` to ``dst`` takes.

    ``dci_delay_ms`` replaces the delay of every DCI link on the path (routes do not change with it).
    """
    path = nx.dijkstra_path(graph, src, dst)
    edges = [graph[a][b] for a, b in zip(path, path[1:])]
    return sum(e["delay_ms"] if dci_delay_ms is None or not e["dci"] else dci_delay_ms for e in edges)


def install_routes(ipr, routes: list[Route]) -> None:
    """Install ``routes`` through an open pyroute2 IPRoute of the node's namespace."""
    for route in routes:
        if len(route.gateways) == 1:
            ipr.route("replace", dst=route.dst, gateway=route.gateways[0])
        else:
            ipr.route("replace", dst=route.dst, multipath=[{"gateway": gw} for gw in route.gateways])
