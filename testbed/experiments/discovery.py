"""Fabric discovery by measurement: what each pair of sites is apart, in round-trip time and in rate.

The controller learns the paths from probes, never from the topology file, as a WAN controller learns them
from TWAMP and capacity tests between its routers:

- ``rtt_ms``: the minimum of ``RTT_PROBES`` pings from one site's border router to the other's (the DCI
  path alone: what the distance costs);
- ``host_rtt_ms``: the same from a GPU host of one site to one of the other (what a flow's packets see:
  the DCI plus both sites' fabrics);
- ``bottleneck_mbps``: the rate a UDP stream offered above the source host's line rate arrives at (the
  narrowest link of the path, in wire bits: the receiver's steady goodput times frame / payload).  The probe
  fills the bottleneck's queue for a moment, like any capacity test, and waits for it to drain.  It lasts
  ``RATE_PROBE_S`` or four wall-time round trips and two seconds, whichever is longer, so the receiver sees
  full intervals of it on a long dilated path (``testbed.experiments.probes.iperf_udp``).

Which DCI links a site pair's traffic crosses comes from the routed path (the controller knows its routes).
On a dilated fabric every figure is declared (the probes convert, ``testbed.experiments.probes``).
"""

from dataclasses import dataclass

import networkx as nx

from testbed.experiments.probes import UDP_HEADER_BYTES, iperf_udp, ping, reply_timeout_s, site_pairs
from testbed.model.units import IPV4_HEADER_BYTES, frame_bytes
from testbed.net.link import wait_drained

RTT_PROBES = 50
RATE_PROBE_S = 1.0
RATE_PROBE_LOAD = 1.2  # times the source's line rate: the stream must exceed any link of the path


@dataclass(frozen=True)
class SitePath:
    """What the probes found between two sites (one direction for the rate, the round trip for the RTTs)."""

    src_site: str
    dst_site: str
    rtt_ms: float
    host_rtt_ms: float
    bottleneck_mbps: float
    dcis: tuple[tuple[str, str], ...]  # (from border, to border) of each DCI hop, in path order


def dci_hops(tb, src: str, dst: str) -> tuple[tuple[str, str], ...]:
    """The DCI links the routed path from node ``src`` to node ``dst`` crosses, as (from, to) borders."""
    path = nx.dijkstra_path(tb.graph, src, dst)
    return tuple((a, b) for a, b in zip(path, path[1:]) if tb.graph[a][b]["dci"])


def border_rtt_ms(tb, hops: tuple[tuple[str, str], ...]) -> float:
    """The minimum of ``RTT_PROBES`` pings from the first border of ``hops`` to the last one's DCI address."""
    last_border = hops[-1][1]
    border_address = tb.graph[hops[-1][0]][last_border]["addr"][last_border]
    return ping(tb.node(hops[0][0]), border_address, count=RTT_PROBES, dilation=tb.dilation,
                timeout_s=reply_timeout_s(tb))["min_ms"]


def probe_site_pair(tb, src_site: str, dst_site: str) -> SitePath:
    """Probe the path from ``src_site`` to ``dst_site``: border RTT, host RTT, bottleneck rate."""
    src_host, dst_host = tb.hosts(src_site)[0], tb.hosts(dst_site)[0]
    hops = dci_hops(tb, src_host.name, dst_host.name)
    border_rtt = border_rtt_ms(tb, hops)
    host_rtt = ping(src_host, dst_host, count=RTT_PROBES, dilation=tb.dilation, timeout_s=reply_timeout_s(tb))["min_ms"]
    mtu = tb.topo.fabric.mtu
    payload = mtu - IPV4_HEADER_BYTES - UDP_HEADER_BYTES
    line_mbps = src_host.defaultIntf().shape.bw_mbps
    seconds = max(RATE_PROBE_S, 2 + 4 * host_rtt * tb.dilation / 1e3)
    received = iperf_udp(src_host, dst_host, RATE_PROBE_LOAD * line_mbps, seconds, payload, dilation=tb.dilation,
                         timeout_s=30 + 10 * reply_timeout_s(tb))
    bottleneck = received["steady_bps"] * frame_bytes(mtu) / payload / 1e6
    wait_drained(tb.egress(a, b) for a, b in hops)  # the probe's backlog must not meet the next one
    return SitePath(src_site, dst_site, border_rtt, host_rtt, round(bottleneck, 3), hops)


def discover(tb) -> list[SitePath]:
    """Probe every ordered pair of sites (both directions: rates may differ)."""
    pairs = site_pairs(tb)
    return [probe_site_pair(tb, a, b) for x, y in pairs for a, b in ((x, y), (y, x))]
