"""Check a built fabric against its declaration: RTT between every pair of sites, rate of every DCI link.

Expected values come from the declaration, never from the measurement: the propagation RTT is twice the
one-way delay along the routed path, the rate is the narrowest link on that path less the UDP/IP/Ethernet
headers.  Throughput is measured with UDP offered above the bottleneck (the capacity of the link, not the
behaviour of one TCP flow).

The emulator itself takes time too: every hop forwards in a namespace, and each delay line waits on a
kernel timer that fires late.  Natively that is tens of microseconds; under an emulated CPU (the microVM on
TCG) it is about 0.8 ms across a two-site path.  So each site pair is pinged twice on the same built
fabric: once with every DCI set to a short reference distance (20 km, so the delay timer runs exactly as at
any distance), giving the path's fixed cost, and once as declared.  A DCI is accurate when the declared
RTT lies within 5 % + 0.5 ms of propagation + fixed cost; both numbers are reported, never hidden.

On a dilated fabric (``testbed.model.dilation``) every figure is declared: the probes convert what they
measure (``testbed.experiments.probes``), the fixed cost shrinks k-fold with everything the emulator costs,
and so does the absolute part of the tolerance, which is the emulator's timer noise (0.5 ms of wall time).
"""

import contextlib
from dataclasses import asdict, dataclass

import networkx as nx

from testbed.experiments.probes import UDP_HEADER_BYTES, iperf_udp, ping, reply_timeout_s, site_pairs
from testbed.model.units import IPV4_HEADER_BYTES, frame_bytes, propagation_delay_ms
from testbed.net.network import Testbed
from testbed.net.routing import path_delay_ms

OFFERED_LOAD = 1.2  # times the bottleneck rate, so the bottleneck queue never runs dry
RTT_TOLERANCE_PCT, RTT_TOLERANCE_MS = 5.0, 0.5
RATE_TOLERANCE_PCT = 10.0
REFERENCE_KM = 20.0


@dataclass
class RttCheck:
    src_site: str
    dst_site: str
    src: str
    dst: str
    expected_ms: float  # propagation only: 2 x the one-way delay of the routed path
    fixed_ms: float  # the path's RTT beyond propagation, measured with every DCI at REFERENCE_KM
    min_ms: float
    avg_ms: float
    max_ms: float
    sent: int
    received: int

    @property
    def error_ms(self) -> float:
        return self.min_ms - self.fixed_ms - self.expected_ms

    dilation: float = 1.0

    @property
    def ok(self) -> bool:
        return abs(self.error_ms) <= RTT_TOLERANCE_PCT / 100 * self.expected_ms + RTT_TOLERANCE_MS / self.dilation


@dataclass
class RateCheck:
    dci: str
    src: str
    dst: str
    configured_mbps: float
    expected_mbps: float
    measured_mbps: float
    lost_pct: float
    out_of_order: int

    @property
    def error_pct(self) -> float:
        return 100 * (self.measured_mbps - self.expected_mbps) / self.expected_mbps

    @property
    def ok(self) -> bool:
        return abs(self.error_pct) <= RATE_TOLERANCE_PCT


@contextlib.contextmanager
def dci_at_reference_distance(tb: Testbed):
    """Every DCI link at REFERENCE_KM without jitter while the block runs, restored afterwards."""
    saved = [(link, link.intf1.shape) for _, link in tb.dci_links()]
    try:
        for link, _ in saved:
            link.set(delay_ms=propagation_delay_ms(REFERENCE_KM), jitter_ms=0.0)
        yield
    finally:
        for link, shape in saved:
            link.set(delay_ms=shape.delay_ms, jitter_ms=shape.jitter_ms)


def measure_rtts(tb: Testbed) -> list[RttCheck]:
    """Each site pair, first host to first host: the reference pass, then the declared fabric."""
    pairs = [(a, b, tb.hosts(a)[0], tb.hosts(b)[0]) for a, b in site_pairs(tb)]
    reference_ms = propagation_delay_ms(REFERENCE_KM)
    probe = {"dilation": tb.dilation, "timeout_s": reply_timeout_s(tb)}
    with dci_at_reference_distance(tb):
        fixed = [ping(src, dst, **probe)["min_ms"] - 2 * path_delay_ms(tb.graph, src.name, dst.name, reference_ms)
                 for _, _, src, dst in pairs]
    checks = []
    for (a, b, src, dst), fixed_ms in zip(pairs, fixed):
        expected = 2 * path_delay_ms(tb.graph, src.name, dst.name)
        checks.append(RttCheck(a, b, src.name, dst.name, round(expected, 6), round(fixed_ms, 6),
                               **ping(src, dst, **probe), dilation=tb.dilation))
    return checks


def measure_dci_rate(tb: Testbed, dci_name: str, seconds: float = 5.0) -> RateCheck:
    """UDP goodput from the first host of one end site to the first host of the other, steady (the median of
    the receiver's full intervals), over ``seconds`` of wall time beyond one round trip of the path."""
    dci = next(d for d in tb.topo.fabric.dci_links if d.name == dci_name)
    src, dst = tb.hosts(dci.a)[0], tb.hosts(dci.b)[0]
    path = nx.dijkstra_path(tb.graph, src.name, dst.name)
    bottleneck = min(tb.topo.linkInfo(a, b)["config"].bw_mbps for a, b in zip(path, path[1:]))
    mtu = tb.topo.fabric.mtu
    payload = mtu - IPV4_HEADER_BYTES - UDP_HEADER_BYTES
    round_trip_s = 2 * path_delay_ms(tb.graph, src.name, dst.name) * tb.dilation / 1e3  # wall time
    received = iperf_udp(src, dst, OFFERED_LOAD * bottleneck, seconds + round_trip_s, payload, dilation=tb.dilation,
                         timeout_s=30 + 10 * reply_timeout_s(tb))
    return RateCheck(dci_name, src.name, dst.name, bottleneck,
                     round(bottleneck * payload / frame_bytes(mtu), 3),
                     round(received["steady_bps"] / 1e6, 3), round(received["lost_percent"], 3),
                     received["out_of_order"])


def verify(tb: Testbed, seconds: float = 5.0) -> dict[str, list]:
    """Every site pair's RTT and every DCI link's rate, as lists of plain dicts."""
    rtts = measure_rtts(tb)
    rates = [measure_dci_rate(tb, d.name, seconds) for d in tb.topo.fabric.dci_links]
    return {
        "rtt": [{**asdict(c), "error_ms": round(c.error_ms, 6), "ok": c.ok} for c in rtts],
        "dci_rate": [{**asdict(c), "error_pct": round(c.error_pct, 2), "ok": c.ok} for c in rates],
    }
