"""The fabric controller: from measured paths to switch thresholds, per-path sender parameters and a latency
loop, for one of the comparison's modes.

    paths = discover(tb)                                  # probes (testbed.experiments.discovery)
    controller = FabricController(tb, paths, "adaptive")
    plan = controller.plan(hosts, job_flows(...))         # what each DCI egress and each rank gets
    controller.configure_switches(plan)                   # RED/ECN thresholds through pyroute2
    controller.configure_senders(plan, control_server)    # per-peer cc over the control channel
    with controller.governing(plan, control_server):      # latency loop (samples in every mode)
        ... run the collective ...

or all of the last three at once: ``with controller.ranks(plan, nchannels) as ranks: ...``.

Modes:
- ``baseline``: off-the-shelf RoCE: DCQCN with the mlx5 firmware defaults on every path, the DCI egresses as
  built (the shipped deep-buffer router profile, ``testbed.model.fabric``), no latency loop.  The loop still
  samples.  ``dcqcn-paper``: the same with the DCQCN paper's knobs, rates scaled to the line rate.
- ``adaptive``: intra-site paths keep intra-datacenter DCQCN; every path across a DCI runs the
  distance-adaptive controller (``controllers.adaptive``) derived from the measured RTT and bottleneck and
  the number of the job's flows sharing it; each DCI egress gets thresholds from its BDP and the queue target;
  the latency loop (``controllers.latency``) holds the DCI queues near the target.
- ``scale-across``: adaptive, and the job's collective algorithm and chunk chosen from the measured paths
  (``algorithm``, ``testbed.collective.tuning``), as NVIDIA's NCCL plug-in tunes for long-haul links.
- ``swift``: like adaptive, with the Swift-style delay-target window (``controllers.swift``) across DCIs.
- ``adaptive:timers+delay`` and the like: the adaptive controller with only the mechanisms named, each of them
  switched where it acts (the senders' knobs, the DCI thresholds, the loop: ``testbed.experiments.modes``).
Inside the sites, switches keep their shallow datacenter thresholds in every mode.

Everything here is in declared units (``testbed.model.dilation``): the paths come from the probes declared,
so do the plans, thresholds (bytes) and the messages to the ranks (which convert them); only the loop's
sampling interval is wall time, the host's to afford, and it waits a wall-time round trip after acting.
"""

import contextlib
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import networkx as nx

from controllers.adaptive import AdaptiveParams, Path, ecn_thresholds, target_queue_for
from controllers.dcqcn import MLX5_FIRMWARE, Dcqcn, params_from_spec
from controllers.latency import QueueGovernor
from testbed.collective import tuning
from testbed.collective.bounds import rank_sites
from testbed.collective.control_channel import ControlServer
from testbed.collective.near_source import NearSourceAgents
from testbed.collective.runner import start_ranks
from testbed.collective.schedules.model import Algorithm
from testbed.experiments.discovery import SitePath, dci_hops
from testbed.experiments.modes import Mode, lookup
from testbed.net.netlink_counters import NamespaceCounters
from testbed.roce.queue_pair import line_rate_bps
from testbed.roce.rocev2 import data_frame_bytes
from testbed.roce.transport import TransportConfig

# a probe's rate reads within 10 % of its path's declared bottleneck on a faithful run (test_three_sites:
# 45-51 Mbit/s on 50 Mbit/s DCIs); a shortfall beyond it is the fabric's, not the probe's
PROBE_TOLERANCE = 0.1
SAMPLE_INTERVAL_S = 0.05  # wall time: what the host can sample; in declared time 0.05 s / dilation


@dataclass
class EgressPlan:
    """One DCI egress queue (border ``node`` towards ``peer``) and what the mode gives it."""

    node: str
    peer: str
    rate_bps: float  # measured
    rtt_ns: int  # measured, host to host: what the flows crossing it see
    flows: int  # the job's flows through this queue
    kmin_bytes: int
    kmax_bytes: int
    target_ns: int
    crossing: list[tuple[int, int]] = field(default_factory=list)  # (rank, peer rank) of those flows


@dataclass
class Plan:
    mode: Mode
    egresses: dict[tuple[str, str], EgressPlan]
    ranks: dict[int, dict]  # rank -> control message


class FabricController:
    """Turns measured ``paths`` into a ``Plan`` for ``mode`` and applies it; samples the DCI queues."""

    def __init__(self, tb, paths: list[SitePath], mode: str, target_queue_ns: int | None = None,
                 log=print) -> None:
        self.tb, self.mode, self.target_queue_ns, self.log = tb, lookup(mode), target_queue_ns, log
        self.paths = {(p.src_site, p.dst_site): p for p in paths}
        self.frame = data_frame_bytes(TransportConfig().mtu)  # a full RoCE data packet on the wire
        self.samples: list[dict] = []
        self.actions: list[dict] = []
        self.near_source_counters: list[dict] = []

    def algorithm(self, hosts: list, collective: str, size_bytes: int, default: Algorithm) -> tuple[Algorithm, str]:
        """The algorithm the job runs ``collective`` with at its largest size ``size_bytes``, and why: ``default``
        (the user's, NCCL's unless told) unless the mode tunes collectives; then the choice of
        ``tuning.choose`` on the fabric with every DCI at its measured delay and rate."""
        if not self.mode.tuned_collective:
            return default, "the user's (mode does not tune collectives)"
        names = [h.name for h in hosts]
        choice = tuning.choose(tuning.with_measured_dcis(self.tb.graph, self._measured_dcis()), names,
                               rank_sites(self.tb.topo, names), collective, size_bytes)
        return choice.algorithm, choice.reason

    def _measured_dcis(self) -> list[tuple[tuple[str, str], float, float]]:
        """(DCI hop, one-way delay ms, rate Mbit/s) as the probes found them.  Each path's border RTT is
        shared among its DCI hops as their declared delays are.  A probe measures the whole path's
        bottleneck, so a rate says something about the DCIs only when it falls short of what the declared
        path allows (host links included) by more than ``PROBE_TOLERANCE``: then the DCIs, the links the
        probe was sent across, are taken to run at the measured rate; otherwise they keep their declared one."""
        graph, measured = self.tb.graph, []
        for path in self.paths.values():
            declared_ms = sum(graph[a][b]["delay_ms"] for a, b in path.dcis)
            short = path.bottleneck_mbps < (1 - PROBE_TOLERANCE) * min(self._declared_path_rates(path))
            for a, b in path.dcis:
                edge = graph[a][b]
                rate = min(edge["bw_mbps"], path.bottleneck_mbps) if short else edge["bw_mbps"]
                measured.append(((a, b), path.rtt_ms / 2 * edge["delay_ms"] / declared_ms, rate))
        return measured

    def _declared_path_rates(self, path: SitePath) -> list[float]:
        """The declared rates (Mbit/s) of the links the probe between ``path``'s sites crossed."""
        src, dst = self.tb.hosts(path.src_site)[0].name, self.tb.hosts(path.dst_site)[0].name
        nodes = nx.dijkstra_path(self.tb.graph, src, dst)
        return [self.tb.graph[a][b]["bw_mbps"] for a, b in zip(nodes, nodes[1:])]

    def plan(self, hosts: list, flows: set[tuple[int, int, int]]) -> Plan:
        """Thresholds per DCI egress and control messages per rank for the job's ``flows``
        ((rank, peer rank, channel) that carry data), ranks being ``hosts`` in order."""
        sites = [self.tb.topo.nodeInfo(h.name)["site"] for h in hosts]
        crossing = defaultdict(list)
        for rank, peer, _ in sorted(flows):
            for hop in dci_hops(self.tb, hosts[rank].name, hosts[peer].name):
                crossing[hop].append((rank, peer))
        egresses = {hop: self._egress_plan(hop, crossing.get(hop, [])) for hop in self._all_dci_hops()}
        ranks = {rank: self._rank_message(rank, hosts, sites, egresses) for rank in range(len(hosts))}
        return Plan(self.mode, egresses, ranks)

    def configure_switches(self, plan: Plan) -> None:
        """Set every DCI egress's RED/ECN thresholds (pyroute2, in place, no traffic lost)."""
        for (node, peer), egress in plan.egresses.items():
            self.tb.egress(node, peer).set(ecn_kmin_bytes=egress.kmin_bytes, ecn_kmax_bytes=egress.kmax_bytes)
            self.log(f"{self.mode.name}: {node}->{peer} ECN {egress.kmin_bytes}-{egress.kmax_bytes} B "
                     f"({egress.flows} flows, {egress.rate_bps / 1e6:.1f} Mbit/s, RTT {egress.rtt_ns / 1e6:.2f} ms)")

    def configure_senders(self, plan: Plan, server) -> None:
        """Push each rank its per-peer congestion control over the control channel."""
        for rank, message in plan.ranks.items():
            server.push(rank, message)

    @contextlib.contextmanager
    def governing(self, plan: Plan, server):
        """Sample every DCI egress while the block runs; in modes that govern, act on the samples.

        The loop reads the queues with ``NamespaceCounters`` on sockets of its own, one qdisc dump per border
        router: a few ms under TCG, where pyroute2's full decoding took ~90 ms per egress and stretched the
        50 ms loop to ~200 ms."""
        intfs = {hop: self.tb.egress(*hop) for hop in plan.egresses}
        borders = {intf.node.name: intf.node for intf in intfs.values()}
        counters = {name: NamespaceCounters.of(node) for name, node in borders.items()}
        stop = threading.Event()
        thread = threading.Thread(target=self._loop, args=(plan, server, intfs, counters, stop), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            for reader in counters.values():
                reader.close()

    @contextlib.contextmanager
    def ranks(self, plan: Plan, nchannels: int, telemetry_s: float = 0.0):
        """A rank on every host, each connected to this controller and given its plan's congestion control,
        the DCI queues sampled (and governed) while the block runs; yields the ``Ranks``."""
        with ControlServer() as server, start_ranks(self.tb, nchannels, control=server.path,
                                                    telemetry_s=telemetry_s) as ranks:
            server.accept(len(ranks.hosts))
            self.configure_senders(plan, server)
            with self.near_source(plan, ranks.hosts, nchannels), self.governing(plan, server):
                yield ranks

    @contextlib.contextmanager
    def near_source(self, plan: Plan, hosts: list, nchannels: int):
        """In modes with near-source feedback, an agent on every DCI egress while the block runs, pacing each
        flow's CNPs at its site's near loop (``_near_rtt_ns``); what each saw lands in
        ``near_source_counters`` (one dict per egress and run)."""
        if not self.mode.near_source:
            yield
            return
        borders = {node for node, _ in plan.egresses}
        agents = NearSourceAgents(self.tb, list(plan.egresses), [h.IP() for h in hosts], nchannels,
                                  {border: self._near_rtt_ns(border) for border in borders})
        try:
            yield
        finally:
            agents.close()  # the agents report their counters as they stop
            self.near_source_counters += [{"egress": f"{node}->{peer}", "mode": self.mode.name, **counters}
                                          for (node, peer), counters in agents.counters.items()]

    def _near_rtt_ns(self, border: str) -> int:
        """The near loop of ``border``'s site, sender to its border and back, declared: half of what the host
        RTT adds to the border-to-border RTT on the site's shortest path (its legs in both sites), at least
        the NIC's own CNP interval."""
        site = self.tb.topo.nodeInfo(border)["site"]
        legs_ms = min(p.host_rtt_ms - p.rtt_ms for p in self.paths.values() if p.src_site == site)
        return max(MLX5_FIRMWARE.np_min_time_between_cnps_ns, round(legs_ms / 2 * 1e6))

    # -- planning ----------------------------------------------------------------------------------------

    def _all_dci_hops(self) -> list[tuple[str, str]]:
        return [hop for a, b, _ in self.tb.topo.dci_link_names() for hop in ((a, b), (b, a))]

    def _site_path(self, node: str, peer: str) -> SitePath:
        info = self.tb.topo.nodeInfo
        return self.paths[(info(node)["site"], info(peer)["site"])]

    def _egress_plan(self, hop: tuple[str, str], crossing: list[tuple[int, int]]) -> EgressPlan:
        node, peer = hop
        path = self._site_path(node, peer)
        rate, rtt_ns = path.bottleneck_mbps * 1e6, round(path.host_rtt_ms * 1e6)
        shape = self.tb.egress(node, peer).shape
        target = target_queue_for(self._path(path, 1), self.target_queue_ns)
        if self.mode.derived_thresholds:
            kmin, kmax = ecn_thresholds(rate, rtt_ns, target, self.frame, shape.buffer_bytes)
        else:
            built = self.tb.topo.linkInfo(node, peer)["config"]  # as declared, before any controller
            kmin, kmax = built.ecn_kmin_bytes, built.ecn_kmax_bytes
        return EgressPlan(node, peer, rate, rtt_ns, max(1, len(set(crossing))), kmin, kmax, target, crossing)

    def _path(self, site_path: SitePath, flows: int) -> Path:
        return Path(base_rtt_ns=round(site_path.host_rtt_ms * 1e6), bottleneck_bps=site_path.bottleneck_mbps * 1e6,
                    line_rate_bps=line_rate_bps(self.tb.hosts(site_path.src_site)[0]), frame_bytes=self.frame,
                    flows=flows)

    def _rank_message(self, rank: int, hosts: list, sites: list[str], egresses: dict) -> dict:
        """Per peer: the NIC's DCQCN inside the site, the mode's cc across a DCI (and the CNP interval its
        receiver paces at, where the mode sets one, and the target and base RTT its receiver reports forward
        queueing against, in modes with the delay signal)."""
        cc, cnp, delay = {}, {}, {}
        line = line_rate_bps(hosts[rank])
        for peer, host in enumerate(hosts):
            if peer == rank:
                continue
            if sites[peer] == sites[rank]:
                cc[peer] = Dcqcn.spec(line_rate_bps=line)
                continue
            if self.mode.dci_cc is Dcqcn:
                cc[peer] = self.mode.cc_spec(line_rate_bps=line)
                cnp[peer] = params_from_spec(cc[peer]).np_min_time_between_cnps_ns
                continue
            hops = dci_hops(self.tb, hosts[rank].name, host.name)
            flows = max(egresses[hop].flows for hop in hops)
            path = self._path(self.paths[(sites[rank], sites[peer])], flows)
            target = target_queue_for(path, self.target_queue_ns)
            cc[peer] = self.mode.cc_spec(path=asdict(path), target_queue_ns=target)
            if self.mode.near_source:
                cnp[peer] = None  # the sender's border answers the marks (``near_source``)
            elif "timers" in self.mode.mechanisms:
                cnp[peer] = AdaptiveParams.for_path(path, target).dcqcn.np_min_time_between_cnps_ns
            if self.mode.delay_reports:
                delay[peer] = [target, path.base_rtt_ns]  # the peer -> rank path is this one reversed
        return {"cc": cc, "cnp_interval_ns": cnp, "delay_reports": delay}

    # -- the loop ----------------------------------------------------------------------------------------

    def _loop(self, plan: Plan, server, intfs: dict, counters: dict, stop: threading.Event) -> None:
        governors = {hop: self._governor(e) for hop, e in plan.egresses.items()} if self.mode.govern else {}
        last = _queues(intfs, counters)
        start = time.monotonic()
        while not stop.wait(SAMPLE_INTERVAL_S):
            queues = _queues(intfs, counters)
            for hop, egress in plan.egresses.items():
                queue = queues[hop]
                busy = queue["sent_bytes"] > last[hop]["sent_bytes"]
                delay_ns = round(queue["backlog_bytes"] * 8e9 / egress.rate_bps)
                self.samples.append({"t_s": self._declared_s(start), "mode": self.mode.name,
                                     "egress": f"{hop[0]}->{hop[1]}", "busy": busy,
                                     "backlog_bytes": queue["backlog_bytes"], "queue_delay_ms": delay_ns / 1e6,
                                     "ecn_marks": queue["ecn_marks"], "drops": queue["drops"]})
                if hop in governors:
                    self._act(hop, egress, governors[hop].observe(delay_ns, busy), server, start)
            last = queues

    def _declared_s(self, start: float) -> float:
        """Declared seconds since the loop started (``testbed.model.dilation``)."""
        return (time.monotonic() - start) / self.tb.dilation

    def _governor(self, egress: EgressPlan) -> QueueGovernor:
        share = egress.rate_bps / egress.flows
        hold = max(2, round(egress.rtt_ns * self.tb.dilation / 1e9 / SAMPLE_INTERVAL_S) + 1)  # a wall-time RTT
        return QueueGovernor(egress.target_ns, egress.kmin_bytes, egress.kmax_bytes, 2 * self.frame, share, hold)

    def _act(self, hop, egress: EgressPlan, action, server, start: float) -> None:
        if action is None:
            return
        if action.kind == "ecn":
            self.tb.egress(*hop).set(ecn_kmin_bytes=action.kmin_bytes, ecn_kmax_bytes=action.kmax_bytes)
        else:
            for rank, peer in egress.crossing:
                server.push(rank, {"pace": {peer: action.cap_bps}})
        row = {"t_s": self._declared_s(start), "mode": self.mode.name, "egress": f"{hop[0]}->{hop[1]}",
               "queue_delay_ms": action.queue_delay_ns / 1e6, "target_ms": egress.target_ns / 1e6,
               "action": action.kind, "kmin_bytes": action.kmin_bytes, "kmax_bytes": action.kmax_bytes,
               "cap_mbps": None if action.cap_bps is None else round(action.cap_bps / 1e6, 3)}
        self.actions.append(row)
        self.log(f"latency: {row['egress']} queue {row['queue_delay_ms']:.2f} ms (target {row['target_ms']:.2f}): "
                 + (f"ECN {action.kmin_bytes}-{action.kmax_bytes} B" if action.kind == "ecn"
                    else f"pace {row['cap_mbps'] if row['cap_mbps'] is not None else 'uncapped'} Mbit/s"))


def _queues(intfs: dict, counters: dict) -> dict[tuple[str, str], dict]:
    """Each egress queue's counters (``intfs``: hop -> ShapedIntf) from one qdisc dump per border router
    (``counters``: node name -> NamespaceCounters)."""
    dumps = {name: reader.read_queues() for name, reader in counters.items()}
    return {hop: dumps[intf.node.name][intf.index] for hop, intf in intfs.items()}
