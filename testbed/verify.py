"""Check a built fabric against its declaration: RTT between every pair of sites, rate of every DCI link.

Expected values come from the declaration, never from the measurement: the RTT is twice the propagation
delay along the routed path, the rate is the narrowest link on that path less the UDP/IP/Ethernet headers.
Throughput is measured with UDP offered above the bottleneck (the capacity of the link, not the behaviour of
one TCP flow).
"""

import itertools
import json
import re
import time
from dataclasses import asdict, dataclass

import networkx as nx

from testbed.network import Testbed
from testbed.routing import path_delay_ms
from testbed.units import IPV4_HEADER_BYTES, frame_bytes

UDP_HEADER_BYTES = 8
OFFERED_LOAD = 1.2  # times the bottleneck rate, so the bottleneck queue never runs dry
PING_SUMMARY = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/")
PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class RttCheck:
    src_site: str
    dst_site: str
    src: str
    dst: str
    expected_ms: float
    min_ms: float
    avg_ms: float
    max_ms: float
    sent: int
    received: int

    @property
    def error_pct(self) -> float:
        return 100 * (self.min_ms - self.expected_ms) / self.expected_ms if self.expected_ms else 0.0


@dataclass
class RateCheck:
    dci: str
    src: str
    dst: str
    configured_mbps: float
    expected_mbps: float
    measured_mbps: float
    lost_pct: float

    @property
    def error_pct(self) -> float:
        return 100 * (self.measured_mbps - self.expected_mbps) / self.expected_mbps


def site_pairs(tb: Testbed) -> list[tuple[str, str]]:
    return list(itertools.combinations([s.name for s in tb.topo.fabric.sites], 2))


def measure_rtt(tb: Testbed, src_site: str, dst_site: str, count: int = 10, interval_s: float = 0.2) -> RttCheck:
    """Ping from the first host of one site to the first host of another (after one warm-up for ARP)."""
    src, dst = tb.hosts(src_site)[0], tb.hosts(dst_site)[0]
    src.cmd(f"ping -c 1 -W 5 {dst.IP()}")
    out = src.cmd(f"ping -c {count} -i {interval_s} -W 5 -q {dst.IP()}")
    counts, summary = PING_COUNTS.search(out), PING_SUMMARY.search(out)
    if not counts or not summary:
        raise RuntimeError(f"ping {src.name} -> {dst.name} failed: {out.strip()[-200:]}")
    expected = 2 * path_delay_ms(tb.graph, src.name, dst.name)
    low, avg, high = (float(x) for x in summary.groups())
    return RttCheck(src_site, dst_site, src.name, dst.name, round(expected, 3), low, avg, high,
                    int(counts.group(1)), int(counts.group(2)))


def measure_dci_rate(tb: Testbed, dci_name: str, seconds: float = 5.0) -> RateCheck:
    """iperf3 UDP from the first host of one end site to the first host of the other."""
    dci = next(d for d in tb.topo.fabric.dci_links if d.name == dci_name)
    src, dst = tb.hosts(dci.a)[0], tb.hosts(dci.b)[0]
    path = nx.dijkstra_path(tb.graph, src.name, dst.name)
    bottleneck = min(tb.topo.linkInfo(a, b)["config"].bw_mbps for a, b in zip(path, path[1:]))
    mtu = tb.topo.fabric.mtu
    payload = mtu - IPV4_HEADER_BYTES - UDP_HEADER_BYTES
    server = dst.popen(["iperf3", "-s", "-1", "-J"])
    time.sleep(0.5)
    client = src.cmd(f"iperf3 -c {dst.IP()} -u -b {OFFERED_LOAD * bottleneck:.3f}M -l {payload} "
                     f"-t {seconds} -J")
    server.wait(timeout=30)
    received = json.loads(server.stdout.read())["end"]["sum"]
    if "error" in client:
        raise RuntimeError(f"iperf3 {src.name} -> {dst.name}: {json.loads(client)['error']}")
    return RateCheck(dci_name, src.name, dst.name, bottleneck,
                     round(bottleneck * payload / frame_bytes(mtu), 3),
                     round(received["bits_per_second"] / 1e6, 3), received["lost_percent"])


def verify(tb: Testbed, seconds: float = 5.0) -> dict[str, list]:
    """Every site pair's RTT and every DCI link's rate, as lists of plain dicts."""
    rtts = [measure_rtt(tb, a, b) for a, b in site_pairs(tb)]
    rates = [measure_dci_rate(tb, d.name, seconds) for d in tb.topo.fabric.dci_links]
    return {
        "rtt": [{**asdict(c), "error_pct": round(c.error_pct, 2)} for c in rtts],
        "dci_rate": [{**asdict(c), "error_pct": round(c.error_pct, 2)} for c in rates],
    }
