"""Long flows under one of the comparison's modes: the point-to-point experiment congestion-control papers run
(N flows from chosen senders into chosen receivers, e.g. an incast across the DCI), on a built fabric.

    pairs = parse_pairs(["westh1:easth1", "westh2:easth1"], [h.name for h in tb.hosts()])
    run = run_flows(tb, pairs, 16 << 20, "adaptive", discover(tb), telemetry)
    run.flows        # per flow: goodput and completion time, its max-min fair share, CNPs, retransmissions
    run.egresses     # per DCI egress the flows cross: utilisation, queue p50/p99/max, drops, CE marks
    run.utilisation  # per DCI egress and telemetry sample: utilisation and queueing delay over time

As ``testbed.experiments.comparison`` does for a collective, the fabric controller plans the mode for these
flows (thresholds on the DCI egresses, each path's congestion control, the latency loop) and fresh ranks run
them (``testbed.collective.point_to_point``: every flow starts at once, its bytes verified at the receiver).
A flow's completion time runs from its sender's start to its receiver's last delivery, both on the clock
every process shares; its goodput is its bytes over that time.  Its fair share is the max-min fair goodput
of the routed fabric (``testbed.collective.bounds.fair_shares``), what an ideal congestion control would give
it.  The DCI figures come from the run's telemetry (``testbed.observe.telemetry``, 10 ms wall samples)
between the first start and the last completion.  Everything is declared (``testbed.model.dilation``).
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from testbed.collective.bounds import fair_shares
from testbed.experiments.discovery import SitePath
from testbed.experiments.fabric_controller import FabricController
from testbed.observe.fidelity import Verdict

FLOW_CHUNK_BYTES = 512 * 1024  # the messages a flow is handed to its queue pair in (the runner's chunk)
# utilisation over time is taken over this many telemetry samples (100 ms of wall time at the default 10 ms):
# over one sample the moment the counters were read jitters by milliseconds under TCG, and single-sample
# ratios of a steadily full 50 Mbit/s DCI spread from 0 to 450 %
UTILISATION_SAMPLES = 10


class FlowsError(ValueError):
    """A flow given that the fabric cannot run: an unknown host, a host sending to itself, a repeat."""


def parse_pairs(specs: list[str], hosts: list[str]) -> list[tuple[int, int]]:
    """``SRC:DST`` host names as (src rank, dst rank), rank i being ``hosts[i]``; a one-line FlowsError
    naming the first bad one."""
    pairs = []
    for spec in specs:
        src, sep, dst = spec.partition(":")
        if not sep or not src or not dst:
            raise FlowsError(f"flow {spec!r} is not SRC:DST (two host names)")
        for name in (src, dst):
            if name not in hosts:
                raise FlowsError(f"flow {spec!r}: no host {name!r} (hosts: {', '.join(hosts)})")
        if src == dst:
            raise FlowsError(f"flow {spec!r}: a host cannot send to itself")
        pair = (hosts.index(src), hosts.index(dst))
        if pair in pairs:
            raise FlowsError(f"flow {spec!r} given twice")
        pairs.append(pair)
    return pairs


def default_pairs(sites: tuple[tuple[int, ...], ...]) -> list[tuple[int, int]]:
    """Every rank of the first site into the ranks of the last one, in turn: with one receiver, an incast
    across the DCI (``sites``: the ranks of each site, in the topology's order, ``bounds.rank_sites``)."""
    if len(sites) < 2:
        raise FlowsError("the default flows cross sites and this fabric has one: give the flows")
    senders, receivers = sites[0], sites[-1]
    return [(src, receivers[i % len(receivers)]) for i, src in enumerate(senders)]


@dataclass
class FlowsRun:
    mode: str
    flows: pd.DataFrame
    egresses: pd.DataFrame
    utilisation: pd.DataFrame
    fidelity: Verdict | None
    label: str  # what the telemetry's rows of this run say: the mode, and its repeat when there are several
    repeat: int = 1

    @property
    def wrong(self) -> int:
        """Bytes delivered that differ from what was sent, over every flow."""
        return int(self.flows["wrong_bytes"].sum())


def run_flows(tb, pairs: list[tuple[int, int]], nbytes: int, mode: str, paths: list[SitePath], telemetry,
              repeat: int = 1, label: str | None = None, seed: int = 0, log=print) -> FlowsRun:
    """Run the flows ``pairs`` (ranks of ``tb.hosts()``), ``nbytes`` each, under ``mode``, observed by
    ``telemetry`` (``testbed.observe.telemetry.Telemetry``); ``label`` (default: the mode) labels the run's
    telemetry rows, ``repeat`` numbers it."""
    hosts = tb.hosts()
    label = label or mode
    telemetry.mode = label
    controller = FabricController(tb, paths, mode, log=log)
    plan = controller.plan(hosts, {(src, dst, 0) for src, dst in pairs})
    log(f"mode {mode}: {controller.mode.description}")
    controller.configure_switches(plan)
    command = {"pairs": [list(pair) for pair in pairs], "bytes": nbytes, "chunk_bytes": FLOW_CHUNK_BYTES,
               "seed": seed, "nchannels": 1}
    with controller.ranks(plan, 1, telemetry.interval_s) as ranks:
        answers = ranks.run(command)
    telemetry.on_answers({"size_bytes": nbytes, "in_place": False}, answers)
    frames = telemetry.frames()
    senders = frames["flows"][(frames["flows"]["mode"] == label) & (frames["flows"]["side"] == "sender")] \
        if not frames["flows"].empty else frames["flows"]
    flows = flow_table(tb, pairs, answers, telemetry, _last_sender_rows(senders))
    crossed = [hop for hop, egress in plan.egresses.items() if egress.crossing]
    window = (flows["start_s"].min(), flows["end_s"].max())
    queues = frames["queues"][frames["queues"]["mode"] == label]
    utilisation = utilisation_table(queues, crossed, window)
    egresses = egress_table(queues, utilisation, crossed, window, plan)
    egresses["feedback_ms"] = [feedback_delay_ms(queues, senders, plan.egresses[hop]) for hop in crossed]
    border = {counters["egress"]: counters for counters in controller.near_source_counters}
    agents = [border.get(name, {}) for name in egresses["egress"]]
    egresses["border_cnps"] = [agent.get("cnps") for agent in agents]
    egresses["border_first_mark_s"] = [_declared_or_nan(telemetry, agent.get("first_mark_ns")) for agent in agents]
    verdict = next((v for v in telemetry.verdicts() if v.mode == label), None)
    return FlowsRun(mode, flows, egresses, utilisation, verdict, label, repeat)


def flow_table(tb, pairs: list[tuple[int, int]], answers: list[dict], telemetry,
               senders: dict[tuple[int, int], dict]) -> pd.DataFrame:
    """One row per flow: ends, bytes, completion time and goodput, fair share, the sender's counters (``senders``,
    by (rank, peer)), and when it started and ended (``start_s``, ``end_s``: declared seconds on the
    telemetry's axis)."""
    hosts = [h.name for h in tb.hosts()]
    ends = {}
    for answer in answers:
        for row in answer["ends"]:
            ends.setdefault((row["src"], row["dst"]), {}).update(row)
    shares = fair_shares(tb.graph, [(hosts[s], hosts[d]) for s, d in pairs])
    rows = []
    for (src, dst), share in zip(pairs, shares):
        end = ends[(src, dst)]
        fct_s = (end["end_ns"] - end["start_ns"]) / 1e9 / tb.dilation
        goodput = end["bytes"] * 8 / fct_s / 1e6
        counters = senders.get((src, dst), {})
        rows.append({"src": hosts[src], "dst": hosts[dst], "src_site": tb.topo.nodeInfo(hosts[src])["site"],
                     "dst_site": tb.topo.nodeInfo(hosts[dst])["site"], "bytes": end["bytes"],
                     "wrong_bytes": end["wrong"], "fct_ms": fct_s * 1e3, "goodput_mbps": goodput,
                     "fair_mbps": share * 8 / 1e6, "of_fair_pct": 100 * goodput / (share * 8 / 1e6),
                     "retransmitted": counters.get("retransmitted_packets"),
                     "cnps": counters.get("cnps_received"), "delay_reports": counters.get("delay_reports_received"),
                     "timeouts": counters.get("timeouts"),
                     "start_s": telemetry.declared_s(end["start_ns"]), "end_s": telemetry.declared_s(end["end_ns"]),
                     "first_cnp_s": _declared_or_nan(telemetry, end["first_cnp_ns"])})
    return pd.DataFrame(rows)


def _declared_or_nan(telemetry, monotonic_ns: int | None) -> float:
    """``monotonic_ns`` on the telemetry's declared axis (s), NaN for an event that never happened."""
    return float("nan") if monotonic_ns is None else telemetry.declared_s(monotonic_ns)


def _last_sender_rows(senders: pd.DataFrame) -> dict[tuple[int, int], dict]:
    """Each (rank, peer)'s sender counters at its last sample in ``senders`` (the telemetry's ``flows`` rows of
    one run's senders, cumulative)."""
    if senders.empty:
        return {}
    last = senders.sort_values("t_s").groupby(["rank", "peer"]).last()
    return {(int(rank), int(peer)): row.to_dict() for (rank, peer), row in last.iterrows()}


def feedback_delay_ms(queues: pd.DataFrame, senders: pd.DataFrame, egress) -> float:
    """How long after ``egress`` (an ``EgressPlan``) first marked CE the senders crossing it first had a CNP,
    declared ms: the marked packet's wait in the queue, then the loop, which near-source feedback shortens
    from a DCI RTT to an intra-site one.  Read from the telemetry's samples (its mark counter, the senders'
    CNP counters), so within about one sampling interval either way; NaN if either never happened."""
    q = _samples_of(queues, egress.node, egress.peer)
    crossed = q[q["ecn_marks"] > q["ecn_marks"].iloc[0]]["t_s"] if len(q) else q["t_s"]
    if senders.empty or crossed.empty:
        return float("nan")
    crossing = set(egress.crossing)
    mine = senders[[(int(r), int(p)) in crossing for r, p in zip(senders["rank"], senders["peer"])]]
    heard = mine[mine["cnps_received"] > 0]["t_s"]
    return float((heard.min() - crossed.min()) * 1e3) if len(heard) else float("nan")


def utilisation_table(queues: pd.DataFrame, egresses: list[tuple[str, str]],
                      window: tuple[float, float]) -> pd.DataFrame:
    """Per egress and sample inside ``window`` (declared s): utilisation of its set rate over the last
    ``UTILISATION_SAMPLES`` samples, and its queueing delay."""
    frames = []
    for node, peer in egresses:
        q = _samples_of(queues, node, peer)
        n = UTILISATION_SAMPLES
        sent = q["sent_bytes"].diff(n) * 8 / q["t_s"].diff(n) / q["rate_bps"]
        frame = pd.DataFrame({"t_s": q["t_s"], "egress": f"{node}->{peer}", "util_pct": 100 * sent,
                              "queue_delay_ms": q["queue_delay_ms"], "drops": q["drops"], "ecn_marks": q["ecn_marks"]})
        frames.append(frame[(frame["t_s"] > window[0]) & (frame["t_s"] <= window[1])])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def egress_table(queues: pd.DataFrame, utilisation: pd.DataFrame, egresses: list[tuple[str, str]],
                 window: tuple[float, float], plan) -> pd.DataFrame:
    """One row per DCI egress the flows cross: its rate, flows and the ECN thresholds the mode gave it (the
    latency loop may move them while the flows run); its utilisation over the samples inside ``window`` (the
    flows' first start to last end) and its queueing delay percentiles there; and the mode's sent bytes,
    drops and CE marks (counters at its last sample against its first)."""
    rows = []
    for node, peer in egresses:
        name = f"{node}->{peer}"
        u = utilisation[utilisation["egress"] == name]
        q = _samples_of(queues, node, peer)
        inside = q[(q["t_s"] >= window[0]) & (q["t_s"] <= window[1])]
        egress = plan.egresses[(node, peer)]
        rate_bps = egress.rate_bps
        sent_s = inside["t_s"].iloc[-1] - inside["t_s"].iloc[0] if len(inside) > 1 else float("nan")
        sent_bits = 8 * _change(inside, "sent_bytes") if len(inside) > 1 else 0
        delays = u["queue_delay_ms"].to_numpy()
        rows.append({"egress": name, "rate_mbps": rate_bps / 1e6, "flows": egress.flows,
                     "ecn_kmin_bytes": egress.kmin_bytes, "ecn_kmax_bytes": egress.kmax_bytes,
                     "util_pct": 100 * sent_bits / sent_s / rate_bps if sent_s > 0 else float("nan"),
                     "queue_p50_ms": _percentile(delays, 50), "queue_p99_ms": _percentile(delays, 99),
                     "queue_max_ms": float(delays.max()) if len(delays) else float("nan"),
                     "sent_bytes": _change(q, "sent_bytes"), "drops": _change(q, "drops"),
                     "ce_marks": _change(q, "ecn_marks"),
                     "window_s": window[1] - window[0]})
    return pd.DataFrame(rows)


def _samples_of(queues: pd.DataFrame, node: str, peer: str) -> pd.DataFrame:
    """The egress ``node -> peer``'s rows of the telemetry's ``queues`` table, in time order."""
    return queues[(queues["node"] == node) & (queues["peer"] == peer)].sort_values("t_s")


def _change(samples: pd.DataFrame, column: str) -> int:
    """A cumulative counter's increase from the first of ``samples`` (in time order) to the last."""
    return int(samples[column].iloc[-1] - samples[column].iloc[0])


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summary(runs: list[FlowsRun]) -> pd.DataFrame:
    """One row per mode over its repeats: median, min and max of the flows' aggregate goodput (their bytes over
    the first start to the last end, Mbit/s), of Jain's index, and of the busiest crossed DCI egress's
    utilisation and queueing delay p99; its drops, CE marks, the flows' CNPs and retransmissions in total; and
    how many repeats were faithful."""
    rows = []
    for mode in dict.fromkeys(run.mode for run in runs):
        of_mode = [run for run in runs if run.mode == mode]
        per_run = pd.DataFrame([_run_figures(run) for run in of_mode])
        row = {"mode": mode, "repeats": len(of_mode),
               "faithful": sum(1 for run in of_mode if run.fidelity is not None and run.fidelity.faithful)}
        for column in ("goodput_mbps", "jain", "util_pct", "queue_p99_ms"):
            values = per_run[column]
            row.update({column: float(values.median()), f"{column}_min": float(values.min()),
                        f"{column}_max": float(values.max())})
        row.update({name: int(per_run[name].sum()) for name in ("drops", "ce_marks", "cnps", "retransmitted")})
        rows.append(row)
    return pd.DataFrame(rows)


def _run_figures(run: FlowsRun) -> dict:
    flows, busiest = run.flows, run.egresses.sort_values("util_pct").iloc[-1]
    span_s = flows["end_s"].max() - flows["start_s"].min()
    return {"goodput_mbps": flows["bytes"].sum() * 8 / span_s / 1e6, "jain": jain_index(flows["goodput_mbps"]),
            "util_pct": busiest["util_pct"], "queue_p99_ms": busiest["queue_p99_ms"],
            "drops": run.egresses["drops"].sum(), "ce_marks": run.egresses["ce_marks"].sum(),
            "cnps": flows["cnps"].fillna(0).sum(), "retransmitted": flows["retransmitted"].fillna(0).sum()}


def jain_index(goodputs) -> float:
    """Jain's fairness index of the flows' goodputs (Jain, Chiu and Hawe, DEC-TR-301, 1984): 1 when equal,
    1/n when one flow takes everything."""
    x = np.asarray(goodputs, dtype=float)
    return float(x.sum() ** 2 / (len(x) * (x ** 2).sum()))
