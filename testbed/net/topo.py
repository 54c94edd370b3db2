"""Mininet topologies of multi-site fabrics.

Subclass ``FabricTopo`` and declare the fabric in ``build`` with ``addSite`` and ``addDci``, the way a
Mininet ``Topo`` declares hosts and links.  Once ``build`` returns the declaration is validated as a whole
(``testbed.model.fabric``) and only then turned into Mininet nodes and links, so a bad value never half-builds.

Every switch (leaf, spine, border) is an L3 router in its own namespace: sites are leaf-spine Clos fabrics
with ECMP over the spines and routed DCI links, as real scale-across fabrics are, and no spanning tree ever
blocks a spine or a DCI link.  Each link is a point-to-point /30: site N uses 10.N.0.0/16, DCI links use
10.255.0.0/16.
"""

import ipaddress
import math

from mininet.node import Host, Node
from mininet.topo import Topo

from testbed.model.fabric import (
    DEFAULT_DCI_BW_MBPS,
    MAX_LINKS,
    MAX_SITES,
    DciLink,
    Fabric,
    LinkConfig,
    Site,
    TopologyError,
)

DCI_POOL = "10.255.0.0/16"


IPV4_ONLY = {"net__ipv6__conf__all__disable_ipv6": 1, "net__ipv6__conf__default__disable_ipv6": 1}


def _sysctl(node: Node, **values) -> None:
    """Set namespace-local sysctls of ``node`` (keys use '__' for '.').

    Every node is IPv4-only, like the fabric's addressing: otherwise IPv6 neighbour discovery and router
    solicitations cross the links, get counted and dropped with the workload's packets, and fill captures.
    """
    args = " ".join(f"{key.replace('__', '.')}={value}" for key, value in {**IPV4_ONLY, **values}.items())
    node.cmd(f"sysctl -qw {args}")


class GpuHost(Host):
    """A GPU node: an end host whose TCP negotiates ECN, so RED marks instead of dropping."""

    def config(self, **params):
        result = super().config(**params)
        _sysctl(self, net__ipv4__tcp_ecn=1)
        return result


class Router(Node):
    """A leaf, spine or border switch as a Linux router: forwarding on, ECMP hashed on L4 ports."""

    def config(self, **params):
        result = super().config(**params)
        _sysctl(
            self,
            net__ipv4__ip_forward=1,
            net__ipv4__fib_multipath_hash_policy=1,
            net__ipv4__conf__all__rp_filter=0,
            net__ipv4__conf__default__rp_filter=0,
            net__ipv4__icmp_ratelimit=0,
        )
        return result


class FabricTopo(Topo):
    """A Mininet Topo built from sites and DCI links declared in ``build``."""

    def __init__(self, *args, mtu: int | None = None, dci_km: float | None = None, rate_scale: float = 1.0,
                 **params):
        """``params`` go to ``build``; ``dci_km`` and ``rate_scale`` vary what it declared (``Fabric.varied``)."""
        self.fabric = Fabric() if mtu is None else Fabric(mtu=mtu)
        try:
            super().__init__(*args, **params)  # runs build(), which declares the fabric
        except TypeError as error:  # build() or what it called was given a keyword it does not take
            raise TopologyError(f"topology {type(self).__name__}: {error}") from None
        if dci_km is not None or rate_scale != 1:
            self.fabric = self.fabric.varied(dci_km, rate_scale)
        self.fabric.validate()
        self._materialize()

    # -- declaration (called from build) ----------------------------------------------------------------

    def addSite(self, name: str, hosts: int = 4, leaves: int = 2, spines: int = 1,
                host_bw_mbps: float = 100.0, fabric_bw_mbps: float = 100.0, **link) -> str:
        """Declare a site; ``link`` holds further LinkConfig fields for its intra-site links.  Refused as soon as
        there are too many, so a script looping over a huge count stops before it has allocated them."""
        if len(self.fabric.sites) >= MAX_SITES:
            raise TopologyError(f"fabric: sites must be at most {MAX_SITES} (one 10.<site>.0.0/16 each)")
        self.fabric.sites.append(Site(
            name=name, hosts=hosts, leaves=leaves, spines=spines,
            host_link=LinkConfig(bw_mbps=host_bw_mbps, **link),
            fabric_link=LinkConfig(bw_mbps=fabric_bw_mbps, **link),
        ))
        return name

    def addDci(self, a: str, b: str, distance_km: float, bw_mbps: float = DEFAULT_DCI_BW_MBPS,
               delay_ms: float | None = None, **link) -> DciLink:
        """Declare a DCI link between the border switches of sites ``a`` and ``b``; ``delay_ms`` overrides the
        distance's delay, ``link`` holds further LinkConfig fields (jitter, loss, buffer, thresholds...)."""
        if len(self.fabric.dci_links) >= MAX_LINKS:
            raise TopologyError(f"fabric: DCI links must be at most {MAX_LINKS}, the links a fabric holds")
        dci = DciLink(a=a, b=b, distance_km=distance_km, config=LinkConfig(bw_mbps=bw_mbps, **link),
                      delay_ms=delay_ms)
        self.fabric.dci_links.append(dci)
        return dci

    # -- queries used by the runner, the checks and the routing -----------------------------------------

    def nodes_with(self, **match) -> list[str]:
        """Node names whose info matches all of ``match`` (e.g. role='host', site='west')."""
        return [n for n in self.nodes() if all(self.nodeInfo(n).get(k) == v for k, v in match.items())]

    def dci_link_names(self) -> list[tuple[str, str, dict]]:
        """(node1, node2, info) of every DCI link."""
        return [(a, b, info) for a, b, info in self.links(withInfo=True) if info.get("kind") == "dci"]

    # -- materialization ---------------------------------------------------------------------------------

    def _materialize(self) -> None:
        first_ip: dict[str, str] = {}
        for index, site in enumerate(self.fabric.sites, start=1):
            self._add_site(site, ipaddress.ip_network(f"10.{index}.0.0/16").subnets(new_prefix=30), first_ip)
        dci_pool = ipaddress.ip_network(DCI_POOL).subnets(new_prefix=30)
        for dci in self.fabric.dci_links:
            self._add_link(f"{dci.a}b", f"{dci.b}b", dci.resolved(self.fabric.mtu), "dci", next(dci_pool), first_ip,
                           dci=dci.name)
        for name, ip in first_ip.items():
            self.nodeInfo(name)["ip"] = ip  # Mininet configures a node's default interface with this

    def _add_site(self, site: Site, pool, first_ip: dict) -> None:
        names = site.node_names()
        for name in names["host"]:
            self.addHost(name, cls=GpuHost, role="host", site=site.name)
        for role in ("leaf", "spine", "border"):
            for name in names[role]:
                self.addNode(name, cls=Router, role=role, site=site.name)
        per_leaf = math.ceil(site.hosts / site.leaves)
        for i, host in enumerate(names["host"]):
            self._add_link(host, names["leaf"][i // per_leaf], site.host_link, "host", next(pool), first_ip)
        for leaf in names["leaf"]:
            for spine in names["spine"]:
                self._add_link(leaf, spine, site.fabric_link, "fabric", next(pool), first_ip)
        for spine in names["spine"]:
            self._add_link(spine, names["border"][0], site.fabric_link, "fabric", next(pool), first_ip)

    def _add_link(self, a: str, b: str, config: LinkConfig, kind: str, subnet, first_ip: dict, **info):
        ip_a, ip_b = (f"{ip}/{subnet.prefixlen}" for ip in list(subnet.hosts())[:2])
        first_ip.setdefault(a, ip_a)
        first_ip.setdefault(b, ip_b)
        self.addLink(a, b, kind=kind, config=config.resolved(self.fabric.mtu), mtu=self.fabric.mtu,
                     params1={"ip": ip_a}, params2={"ip": ip_b}, **info)

