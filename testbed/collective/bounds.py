"""An analytic lower bound on the time of one collective on a given fabric.

Printed beside a measurement it says how close the run came to what the fabric allows, and what limits it:
a link's rate (the *bandwidth term*) or the chain of dependent messages (the *latency term*).

Model
-----
Traffic is not guessed from formulas: it is read off the very schedules the ranks execute
(:func:`testbed.collective.schedules.builder.build_schedules`), with nccl-tests' element counts
(:func:`testbed.collective.nccl_tests.coll_counts`), so chunking, channels, uneven splits and the hierarchical
algorithm are all accounted exactly.  Every send step is one message of ``nelems * itemsize`` bytes; the
transport cuts it into ``ceil(bytes / packet_payload)`` packets that each carry ``packet_overhead`` bytes
of headers, so a message occupies :func:`wire_bytes` on every link it crosses.

* Bandwidth term: each message is routed as the routing module routes it (shortest paths by its
  hop-then-delay metric, :data:`testbed.net.routing.HOP_WEIGHT_US`).  Each directed link sums the wire bytes
  it must carry; the term is the largest ``bytes / rate`` over the links, and that link is the
  bottleneck.  Where ECMP offers several equal-cost paths a flow's bytes count only on the links *every*
  one of those paths uses, so the term holds however the flows hash.
* Latency term: the longest chain of dependent steps.  A step completes once its ``deps`` and the
  previous step on each of its queues have completed (queues are FIFO and issued in program order) and,
  if it receives, once its message has arrived: the k-th receive on a queue gets the k-th send.  A
  message sent at ``t`` arrives no earlier than ``t`` + the propagation delay of its path + its wire
  bytes at the path's slowest link: the whole chunk must pass that link, and a rank forwards a chunk only
  once it holds all of it (each step moves one whole chunk).

The bound is ``max(bandwidth term, latency term)``.

Assumptions: every rank stores and forwards whole chunks (a step's send leaves once its receive has
completed, as the schedules prescribe), links are otherwise idle (no queueing behind other flows on the
latency chain), nothing is lost, routes are those of :mod:`testbed.net.routing`, and the executor honours
per-queue program order.

Why it is a lower bound
-----------------------
Each term is a time no execution of these schedules can beat: no link delivers faster than its rate, and
no chain of messages completes faster than its propagation and serialisation; so neither can their
maximum.  Everything left out only adds time: queueing, loss and retransmission, ACKs and CNPs on the
reverse links, the IB pad bytes (at most 3 per message), congestion control, host processing.

Cost
----
Linear in the number of chunk steps, which grows with size / chunk: about 3 s for 16 ranks and a 1 GB
all_reduce at 128 KiB chunks (~250,000 steps), three quarters of it building the schedules.  No coarser
chunking is substituted for speed: it moves the critical path in either direction (fewer but longer
hops), so it would not bound the run actually made.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import networkx as nx

from testbed.collective import nccl_tests
from testbed.collective.schedules.builder import build_schedules
from testbed.collective.schedules.model import Schedule, Step
from testbed.model.units import ETHERNET_HEADER_BYTES
from testbed.roce.rocev2 import DATA_HEADER_LEN, WIRE_OVERHEAD, data_capacity

__all__ = [
    "PACKET_PAYLOAD",
    "PACKET_OVERHEAD",
    "Bound",
    "rank_sites",
    "wire_bytes",
    "collective_bound",
    "fair_shares",
]

#: Message bytes per full data packet at the transport's default IB MTU of 4096 (4076).
PACKET_PAYLOAD = data_capacity()
#: Header bytes each data packet adds on a link: our transport header, IPv4/UDP/BTH/ICRC and the Ethernet
#: header, which the HTB shaping a link's rate counts too (see ``testbed.model.units.frame_bytes``).
PACKET_OVERHEAD = DATA_HEADER_LEN + WIRE_OVERHEAD + ETHERNET_HEADER_BYTES

Link = tuple[str, str]  # a directed link (from node, to node)


@dataclass(frozen=True)
class Bound:
    """The lower bound on one collective call, with both terms and what limits each."""

    collective: str
    size_bytes: int  # nccl-tests' size column (CollCounts.size_bytes)
    time_us: float  # the bound: max(bandwidth_us, latency_us)
    bandwidth_us: float
    latency_us: float
    bottleneck: Link | None  # the directed link behind bandwidth_us; None when nothing is sent
    bottleneck_bytes: int  # wire bytes that link carries
    algbw_gbps: float  # algbw and busbw a run taking exactly time_us would print
    busbw_gbps: float
    link_bytes: dict[Link, int] = field(repr=False)  # wire bytes every directed link must carry

    @property
    def limited_by(self) -> str:
        """What the table should name as the limit: ``"latency"`` or the bottleneck link ``"a->b"``."""
        if self.bottleneck is None or self.latency_us > self.bandwidth_us:
            return "latency"
        return "->".join(self.bottleneck)


def rank_sites(topo, hosts: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Ranks grouped by the site of their host: ``sites=`` for the hierarchical all_reduce.

    Sites come in the order the topology declares them, as the runner groups them, since that order is
    the inter-site ring's.
    """
    site_of = [topo.nodeInfo(host)["site"] for host in hosts]
    groups = (tuple(r for r, s in enumerate(site_of) if s == site.name) for site in topo.fabric.sites)
    return tuple(group for group in groups if group)


def wire_bytes(message_bytes: int, packet_payload: int = PACKET_PAYLOAD,
               packet_overhead: int = PACKET_OVERHEAD) -> int:
    """Link bytes one message occupies: its data plus the headers of every packet it is cut into."""
    packets = -(-message_bytes // packet_payload)
    return message_bytes + packets * packet_overhead


@dataclass(frozen=True)
class _Path:
    """What a flow between two hosts can achieve: its best delay and rate, and the links it must use."""

    delay_s: float
    rate_bytes_per_s: float
    links: tuple[Link, ...]


def _rate_bytes_per_s(graph: nx.Graph, a: str, b: str) -> float:
    edge = graph[a][b]
    if "bw_mbps" not in edge:
        raise ValueError(f"link {a}-{b} has no bw_mbps: build the graph with routing.fabric_graph(topo)")
    return edge["bw_mbps"] * 1e6 / 8


def _route(graph: nx.Graph, src: str, dst: str) -> _Path:
    """The equal-cost paths routing gives ``src -> dst``, reduced to what holds on all of them.

    The most favourable delay and bottleneck rate over the paths keep the latency term a lower bound;
    only links common to every path take the flow's bytes, which keeps the bandwidth term one.
    """
    paths = [list(zip(p, p[1:])) for p in nx.all_shortest_paths(graph, src, dst, weight="weight")]
    delay_ms = min(sum(graph[a][b]["delay_ms"] for a, b in path) for path in paths)
    rate = max(min(_rate_bytes_per_s(graph, a, b) for a, b in path) for path in paths)
    common = set(paths[0]).intersection(*paths[1:])
    return _Path(delay_ms / 1000.0, rate, tuple(link for link in paths[0] if link in common))


def _check_hosts(graph: nx.Graph, hosts: Sequence[str]) -> None:
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"hosts must be distinct, got {list(hosts)}")
    unknown = [h for h in hosts if h not in graph]
    if unknown:
        raise ValueError(f"hosts not in the fabric: {unknown}")


def _pair_messages(schedules: Sequence[Schedule]) -> Counter:
    """How many messages of each size (elements) every rank sends to every other: (src, dst, nelems)."""
    return Counter((sch.rank, step.send_peer, step.nelems)
                   for sch in schedules for step in sch.steps if step.send_peer is not None)


def _link_loads(messages: Counter, path: Callable[[int, int], _Path],
                wire: Callable[[int], int]) -> dict[Link, int]:
    """Wire bytes each directed link must carry, given how many messages of each size every pair sends."""
    loads: Counter = Counter()
    for (src, dst, nelems), n in messages.items():
        for link in path(src, dst).links:
            loads[link] += n * wire(nelems)
    return dict(loads)


def _link_seconds(graph: nx.Graph, link: Link, nbytes: int) -> float:
    return nbytes / _rate_bytes_per_s(graph, *link)


def _bottleneck(graph: nx.Graph, loads: dict[Link, int]) -> tuple[float, Link | None]:
    """(seconds, link): the link that needs longest for its bytes.

    On a tie a DCI link is named, since that is the scarce resource a multi-site study is about.
    """
    if not loads:
        return 0.0, None
    link = max(loads, key=lambda hop: (_link_seconds(graph, hop, loads[hop]), graph.edges[hop].get("dci", False)))
    return _link_seconds(graph, link, loads[link]), link


class _CriticalPath:
    """Completion times of every rank's steps along their dependency chains (see the module docstring).

    A step completes at the latest of its ``deps``, the previous step on each queue it uses, and (if it
    receives) the arrival of its message; its message leaves then.  Ranks are filled in program order,
    each up to the first receive whose message is not sent yet; program order is a valid sequential
    execution of the schedules, so every step gets its time.  The times follow the dependencies, not
    that order.
    """

    def __init__(self, schedules: Sequence[Schedule], message_time: Callable[[int, int, int], float]):
        self._schedules = schedules
        self._message_time = message_time
        self._times = [[0.0] * len(sch.steps) for sch in schedules]
        self._position = [0] * len(schedules)
        self._arrivals: dict[tuple[int, int, int], deque] = {}  # (src, dst, channel) -> arrival times
        self._queue_free: dict[tuple, float] = {}  # (direction, rank, peer, channel) -> last step's time

    def longest(self) -> float:
        """Seconds until the last step of any rank completes."""
        pending = [r for r, sch in enumerate(self._schedules) if sch.steps]
        while pending:
            progressed = [self._advance(rank) for rank in pending]  # every rank, no short cut
            if not any(progressed):
                raise RuntimeError("schedules deadlock: every remaining rank waits for a message never sent")
            pending = [r for r in pending if self._position[r] < len(self._schedules[r].steps)]
        return max((max(times, default=0.0) for times in self._times), default=0.0)

    def _advance(self, rank: int) -> bool:
        """Time ``rank``'s steps in program order until one waits for a message; True if any was."""
        steps, start = self._schedules[rank].steps, self._position[rank]
        i = start
        while i < len(steps) and self._complete(rank, steps[i]):
            i += 1
        self._position[rank] = i
        return i > start

    def _complete(self, rank: int, step: Step) -> bool:
        """Give ``step`` its completion time and send its message; False if its message is not sent yet."""
        times = self._times[rank]
        t = max((times[d] for d in step.deps), default=0.0)
        if step.recv_peer is not None:
            inbox = self._arrivals.get((step.recv_peer, rank, step.channel))
            if not inbox:
                return False
            t = self._after_queue(("recv", rank, step.recv_peer, step.channel), max(t, inbox.popleft()))
        if step.send_peer is not None:
            t = self._after_queue(("send", rank, step.send_peer, step.channel), t)
            self._arrivals.setdefault((rank, step.send_peer, step.channel), deque()).append(
                t + self._message_time(rank, step.send_peer, step.nelems))
        times[step.index] = t
        return True

    def _after_queue(self, queue: tuple, t: float) -> float:
        """``t``, or later if the previous step on ``queue`` completed later (FIFO, program order)."""
        t = max(t, self._queue_free.get(queue, 0.0))
        self._queue_free[queue] = t
        return t


def collective_bound(graph: nx.Graph, hosts: Sequence[str], collective: str, size_bytes: int, *,
                     chunk_bytes: int, dtype: str = "float", root: int = 0, nchannels: int = 1,
                     sites: Sequence[Sequence[int]] | None = None, in_place: bool = False,
                     packet_payload: int = PACKET_PAYLOAD,
                     packet_overhead: int = PACKET_OVERHEAD) -> Bound:
    """Lower bound on one ``collective`` of ``size_bytes`` (as nccl-tests' -b/-e) among ``hosts``.

    ``graph`` is ``routing.fabric_graph`` of the topology; rank ``i`` runs on ``hosts[i]`` (the
    runner's order, ``topo.nodes_with(role="host")``).  ``dtype`` is nccl-tests' name; ``chunk_bytes``
    (rounded down to whole elements, as the runner does), ``root``, ``nchannels``, ``sites``
    (hierarchical all_reduce, see :func:`rank_sites`) and ``in_place`` go to the schedules as the
    runner passes them; ``chunk_bytes`` has no default so the bound cannot silently assume another
    chunk than the run.  In place the traffic is the same but the steps' dependencies, hence the
    latency term, may differ.
    """
    _check_hosts(graph, hosts)
    counts = nccl_tests.coll_counts(collective, size_bytes, dtype, len(hosts))
    itemsize = counts.element_size
    schedules = build_schedules(collective, len(hosts), counts.param_count, root=root,
                                nchannels=nchannels, chunk_elems=max(1, chunk_bytes // itemsize),
                                sites=sites, in_place=in_place)

    path = lru_cache(maxsize=None)(lambda src, dst: _route(graph, hosts[src], hosts[dst]))
    wire = lru_cache(maxsize=None)(lambda nelems: wire_bytes(nelems * itemsize, packet_payload,
                                                             packet_overhead))

    def message_time(src: int, dst: int, nelems: int) -> float:
        p = path(src, dst)
        return p.delay_s + wire(nelems) / p.rate_bytes_per_s

    loads = _link_loads(_pair_messages(schedules), path, wire)
    bandwidth_s, bottleneck = _bottleneck(graph, loads)
    latency_s = _CriticalPath(schedules, lru_cache(maxsize=None)(message_time)).longest()
    time_us = max(bandwidth_s, latency_s) * 1e6
    algbw = nccl_tests.algorithm_bandwidth(counts.size_bytes, time_us) if time_us > 0 else 0.0
    return Bound(collective=collective, size_bytes=counts.size_bytes, time_us=time_us,
                 bandwidth_us=bandwidth_s * 1e6, latency_us=latency_s * 1e6, bottleneck=bottleneck,
                 bottleneck_bytes=loads.get(bottleneck, 0), link_bytes=loads, algbw_gbps=algbw,
                 busbw_gbps=nccl_tests.bus_bandwidth(collective, len(hosts), algbw))


def fair_shares(graph: nx.Graph, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Each long flow's max-min fair goodput between hosts (bytes/s of payload): the reference a flow's
    measured goodput is held against.

    Water-filling (Bertsekas and Gallager, *Data Networks*, 6.5.2): raise every flow's rate together until
    a link is full, freeze the flows crossing it, repeat with the rest.  Links are the routed ones every
    equal-cost path uses, as for the bandwidth term; a flow's wire rate becomes goodput at full packets
    (``PACKET_PAYLOAD`` of every ``PACKET_PAYLOAD + PACKET_OVERHEAD`` bytes)."""
    routes = [set(_route(graph, src, dst).links) for src, dst in pairs]
    capacity = {link: _rate_bytes_per_s(graph, *link) for links in routes for link in links}
    crossing = {link: [f for f, links in enumerate(routes) if link in links] for link in capacity}
    rate = [0.0] * len(pairs)
    active = set(range(len(pairs)))
    while active:
        spare = {link: capacity[link] - sum(rate[f] for f in flows) for link, flows in crossing.items()}
        shared = {link: sum(1 for f in flows if f in active) for link, flows in crossing.items()}
        increments = [spare[link] / count for link, count in shared.items() if count]
        if not increments:  # flows that cross no shaped link (none in a fabric: hosts have links)
            break
        step = min(increments)
        for f in active:
            rate[f] += step
        full = {link for link, count in shared.items()
                if count and spare[link] - step * count <= 1e-9 * capacity[link]}
        active -= {f for f in active if full & routes[f]}
    return [r * PACKET_PAYLOAD / (PACKET_PAYLOAD + PACKET_OVERHEAD) for r in rate]
