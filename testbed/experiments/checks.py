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

A rate check fails only when the network is wrong, never because the probe could not drive the rate.  On
a busy host ``testbed run three_sites --seconds 1`` read its DCIs 19-28 % low.  A busy host makes auto pick a
large k (1,000 here under load), and a 50 Mbit/s DCI at k 100 passes 3.5 jumbo frames per 0.5 s reading:
one frame more or less is 29 %.
So each reading lasts long enough to hold ``CHUNK_FRAMES`` frames (the fidelity monitor's stretch: off by
2.5 % at most), a probe too short for one is not run, and a probe that read low is held against its own
fidelity (``testbed.observe.fidelity.Verdict`` with ``PROBE_CHECKS``): its sender offered at least the rate
it checks (iperf3's own count), and its receiver took what the DCI's shaper sent (the qdisc's counters
around the probe).  Either broken, the check is "not measurable here", with why and the k that would do.
"""

import contextlib
import math
from dataclasses import asdict, dataclass

import networkx as nx

from testbed.experiments.probes import (
    INTERVAL_S,
    UDP_HEADER_BYTES,
    iperf_udp,
    ping,
    reply_timeout_s,
    site_pairs,
)
from testbed.model.units import IPV4_HEADER_BYTES, frame_bytes, propagation_delay_ms
from testbed.net.network import Testbed
from testbed.net.routing import path_delay_ms
from testbed.observe.fidelity import CHUNK_FRAMES, MIN_DCI_RATE, Verdict

OFFERED_LOAD = 1.2  # times the bottleneck rate, so the bottleneck queue never runs dry
RTT_TOLERANCE_PCT, RTT_TOLERANCE_MS = 5.0, 0.5
RATE_TOLERANCE_PCT = 10.0
REFERENCE_KM = 20.0
# (name, how the value reads, bound, upper) as ``testbed.observe.fidelity.CHECKS``: what a rate probe must do
PROBE_CHECKS = (("sent", "the probe's sender reached, of the rate it checks", 1.0, False),
                ("delivered", "the probe's receiver took, of what the DCI sent", MIN_DCI_RATE, False))
MAX_READING_S = 60.0  # iperf3's longest reporting interval
READINGS = 2  # a probe this many readings long holds a full one between its ragged edges


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
    measured_mbps: float  # nan: the probe did not run (``unreadable``)
    lost_pct: float
    out_of_order: int
    dilation: float = 1.0
    sent_mbps: float = math.nan  # what the probe's sender reached (declared)
    delivered: float | None = None  # bytes the receiver took / bytes the DCI's egress sent (None: it sent none)
    sender_cpu_pct: float = math.nan  # iperf3's sender: its CPU time over its wall time
    unreadable: str = ""  # why the probe did not run, and what would let it

    @property
    def error_pct(self) -> float:
        return 100 * (self.measured_mbps - self.expected_mbps) / self.expected_mbps

    @property
    def probe(self) -> Verdict:
        """The probe's own fidelity: ``PROBE_CHECKS`` (both scale as 1 / k: the probe's packets per second)."""
        sent = self.sent_mbps / self.expected_mbps if math.isfinite(self.sent_mbps) else None
        return Verdict(f"rate probe {self.dci}", self.dilation, {"sent": sent, "delivered": self.delivered},
                       PROBE_CHECKS)

    @property
    def unmeasurable(self) -> str:
        """Why this host could not measure the rate ('' when it could).  Only a low reading is excused: a
        probe that could not keep up reads low, never high."""
        if self.unreadable:
            return self.unreadable
        probe = self.probe
        if self.error_pct < -RATE_TOLERANCE_PCT and not probe.faithful:
            return f"{probe.text}; k >= {probe.needed_dilation:.3g} would make it measurable"
        return ""

    @property
    def ok(self) -> bool | None:
        """Within tolerance; None when not measurable here (the probe measured the host, not the link)."""
        return None if self.unmeasurable else abs(self.error_pct) <= RATE_TOLERANCE_PCT

    @property
    def verdict(self) -> str:
        reason = self.unmeasurable
        return f"not measurable here ({reason})" if reason else "ok" if self.ok else "off"


def reading_s(bottleneck_mbps: float, mtu: int, dilation: float) -> float:
    """Wall seconds of one reading of the receiver's rate: ``INTERVAL_S``, or as long as ``CHUNK_FRAMES`` full
    frames take at the bottleneck's dilated rate, so that a count off by a frame is off by 2.5 % at most."""
    frames_per_s = bottleneck_mbps * 1e6 / 8 / frame_bytes(mtu) / dilation
    return max(INTERVAL_S, CHUNK_FRAMES / frames_per_s)


def too_short(seconds: float, reading: float, dilation: float) -> str:
    """Why a probe of ``seconds`` cannot read the rate in readings of ``reading`` s, and the --seconds or the
    k that would let it ('' when it can).  A frame-bound reading shrinks with k down to ``INTERVAL_S``."""
    if seconds >= READINGS * reading and reading <= MAX_READING_S:
        return ""
    fits = min(seconds / READINGS, MAX_READING_S)  # the longest reading such a probe holds
    fixes = [f"--seconds {READINGS * reading:.3g}"] if reading <= MAX_READING_S else []
    if reading > INTERVAL_S and fits >= INTERVAL_S and dilation * fits / reading >= 1:
        fixes.append(f"k <= {dilation * fits / reading:.3g}")
    return (f"a reading of {CHUNK_FRAMES} frames takes {reading:.3g} s at k {dilation:g}: --seconds {seconds:g} "
            f"holds no full one; {' or '.join(fixes) or 'nothing here'} would make it measurable")


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
    the receiver's full readings), over ``seconds`` of wall time beyond one round trip of the path, with
    the DCI egress's counters around it (what its shaper sent); not run when too short to read the rate."""
    dci = next(d for d in tb.topo.fabric.dci_links if d.name == dci_name)
    src, dst = tb.hosts(dci.a)[0], tb.hosts(dci.b)[0]
    path = nx.dijkstra_path(tb.graph, src.name, dst.name)
    bottleneck = min(tb.topo.linkInfo(a, b)["config"].bw_mbps for a, b in zip(path, path[1:]))
    mtu = tb.topo.fabric.mtu
    payload = mtu - IPV4_HEADER_BYTES - UDP_HEADER_BYTES
    expected = round(bottleneck * payload / frame_bytes(mtu), 3)
    reading = reading_s(bottleneck, mtu, tb.dilation)
    unreadable = too_short(seconds, reading, tb.dilation)
    if unreadable:
        return RateCheck(dci_name, src.name, dst.name, bottleneck, expected, math.nan, math.nan, 0,
                         tb.dilation, unreadable=unreadable)
    egress = _dci_egress(tb, dci, path)
    before = egress.stats()["sent_bytes"]
    round_trip_s = 2 * path_delay_ms(tb.graph, src.name, dst.name) * tb.dilation / 1e3  # wall time
    received = iperf_udp(src, dst, OFFERED_LOAD * bottleneck, seconds + round_trip_s, payload, dilation=tb.dilation,
                         timeout_s=30 + 10 * reply_timeout_s(tb), interval_s=reading)
    dci_sent = egress.stats()["sent_bytes"] - before
    delivered = round(received["bytes"] * frame_bytes(mtu) / payload / dci_sent, 4) if dci_sent else None
    return RateCheck(dci_name, src.name, dst.name, bottleneck, expected, round(received["steady_bps"] / 1e6, 3),
                     round(received["lost_percent"], 3), received["out_of_order"], tb.dilation,
                     sent_mbps=round(received["sent_bps"] / 1e6, 3),
                     delivered=delivered,
                     sender_cpu_pct=round(received["sender_cpu_pct"], 1))


def _dci_egress(tb: Testbed, dci, path: list[str]):
    """The egress of ``dci`` that ``path`` leaves through: its shaper is what the rate check measures."""
    link = tb.dci(dci.a, dci.b)
    ends = {link.intf1.node.name, link.intf2.node.name}
    return next(tb.egress(a, b) for a, b in zip(path, path[1:]) if {a, b} == ends)


def verify(tb: Testbed, seconds: float = 5.0) -> dict[str, list]:
    """Every site pair's RTT and every DCI link's rate, as lists of plain dicts."""
    rtts = measure_rtts(tb)
    rates = [measure_dci_rate(tb, d.name, seconds) for d in tb.topo.fabric.dci_links]
    return {
        "rtt": [{**asdict(c), "error_ms": round(c.error_ms, 6), "ok": c.ok} for c in rtts],
        "dci_rate": [{**asdict(c), "error_pct": round(c.error_pct, 2), "ok": c.ok, "verdict": c.verdict}
                     for c in rates],
    }
