"""Baseline against adaptive (and any other mode) on one built fabric: same topology, workload and seed.

    with Testbed(TwoSites()) as tb:
        comparison = compare(tb, nccl_tests.parse_args("all_reduce", ["-b", "1M", "-e", "4M"]),
                             modes=["baseline", "adaptive"])

The fabric is probed once (``testbed.experiments.discovery``).  Then for each mode in turn the fabric controller
configures the DCI thresholds and pushes per-path congestion control to freshly started ranks over the
control channel, and the nccl-tests sweep runs while the controller samples (and, in modes that govern,
manages) the DCI queues.  What a mode leaves behind (thresholds) is overwritten by the next mode's plan.

Per mode it returns the nccl-tests results and a summary: completion time p50/p99 of the largest size's
iterations (the slowest rank's time of each), DCI queueing delay p50/p99 over the samples taken while the
DCI was busy, and what the run cost: drops and CE marks at the DCI egresses, CNPs and retransmitted packets
at the senders, duplicates at the receivers (retransmissions whose original had arrived: spurious), and
packets lost inside the hosts (``host_drops``: refused by a sender's socket or dropped at a full receive buffer).
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from testbed.collective import nccl_tests
from testbed.collective.bounds import rank_sites
from testbed.collective.runner import bounds_beside, sweep
from testbed.collective.schedules.builder import flows
from testbed.collective.schedules.model import Algorithm
from testbed.collective.tuning import describe
from testbed.experiments.discovery import SitePath, discover
from testbed.experiments.fabric_controller import FabricController
from testbed.experiments.modes import lookup
from testbed.experiments.repeats import ratio_summary
from testbed.observe.fidelity import Verdict


@dataclass
class ModeRun:
    mode: str
    results: list[nccl_tests.Result]
    summary: dict
    samples: list[dict] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    repeat: int = 1
    fidelity: Verdict | None = None  # from the run's telemetry (None: run without)


@dataclass
class Comparison:
    paths: list[SitePath]
    runs: list[ModeRun]  # in the order they ran: every mode once per repeat
    bounds: list[dict]

    @property
    def modes(self) -> list[str]:
        return list(dict.fromkeys(run.mode for run in self.runs))

    def of(self, mode: str) -> list[ModeRun]:
        """``mode``'s runs, one per repeat."""
        return [run for run in self.runs if run.mode == mode]

    def faithful(self, mode: str) -> bool | None:
        """Whether every run of ``mode`` was faithful (None: no telemetry judged them)."""
        verdicts = [run.fidelity for run in self.of(mode)]
        return None if None in verdicts else all(v.faithful for v in verdicts)

    def fidelity_text(self, mode: str) -> str:
        """``faithful``, or the first repeat's ``emulator-limited: ...`` and the k its worst repeat needed."""
        verdicts = [run.fidelity for run in self.of(mode) if run.fidelity is not None]
        limited = [v for v in verdicts if not v.faithful]
        if not verdicts:
            return "not judged (no telemetry)"
        if not limited:
            return "faithful"
        return f"{limited[0].text}; k >= {max(v.needed_dilation for v in limited):.3g} needed"

    def ratios(self) -> pd.DataFrame:
        """Per size: each mode's median busbw over its repeats (Mbit/s, out of place, declared), the bound, and
        for every mode after the first its ratio to the first with spread, interval and verdict
        (``testbed.experiments.repeats``); ``valid`` is False where either mode was emulator-limited."""
        reference, rows = self.modes[0], []
        for i, bound in enumerate(self.bounds):
            row = {"size_bytes": bound["size_bytes"], "bound_mbps": bound["bound_busbw_gbps"] * 8e3}
            busbw = {mode: [run.results[i].out_of_place.busbw_gbps * 8e3 for run in self.of(mode)]
                     for mode in self.modes}
            for mode in self.modes:
                row[f"{mode}_mbps"] = float(np.median(busbw[mode]))
            for mode in self.modes[1:]:
                summary = ratio_summary(busbw[reference], busbw[mode])
                row.update({f"{mode}_x": summary["ratio"], f"{mode}_x_min": summary["ratio_min"],
                            f"{mode}_x_max": summary["ratio_max"], f"{mode}_x_ci_low": summary["ci_low"],
                            f"{mode}_x_ci_high": summary["ci_high"], f"{mode}_verdict": summary["verdict"],
                            f"{mode}_valid": self.faithful(reference) is not False
                            and self.faithful(mode) is not False,
                            f"{mode}_of_bound_pct": 100 * row[f"{mode}_mbps"] / row["bound_mbps"]})
            rows.append(row)
        return pd.DataFrame(rows)

    def by_mode(self) -> pd.DataFrame:
        """One row per mode at the largest size (an ablation's table): its median busbw (Mbit/s, declared) and
        share of the bound; its ratio to the first mode with spread, 95 % interval, verdict and validity (1 for
        the first); and the medians over its repeats of the DCI queue p99, drops and retransmitted packets."""
        largest = self.ratios().iloc[-1]
        summaries = self.summaries()
        rows = []
        for mode in self.modes:
            runs = summaries[summaries["mode"] == mode]
            row = {"mode": mode, "busbw_mbps": largest[f"{mode}_mbps"],
                   "of_bound_pct": 100 * largest[f"{mode}_mbps"] / largest["bound_mbps"]}
            if mode == self.modes[0]:
                row.update(ratio=1.0, ratio_min=1.0, ratio_max=1.0, ci_low=1.0, ci_high=1.0, verdict="reference",
                           valid=self.faithful(mode) is not False)
            else:
                row.update({key: largest[f"{mode}{suffix}"] for key, suffix in
                            (("ratio", "_x"), ("ratio_min", "_x_min"), ("ratio_max", "_x_max"),
                             ("ci_low", "_x_ci_low"), ("ci_high", "_x_ci_high"), ("verdict", "_verdict"),
                             ("valid", "_valid"))})
            row.update({name: float(runs[name].median()) for name in ("dci_queue_p99_ms", "drops", "retransmitted")})
            rows.append(row)
        return pd.DataFrame(rows).assign(size_bytes=int(largest["size_bytes"]))

    def summaries(self) -> pd.DataFrame:
        """One row per run (mode and repeat): completion, queueing, cost, and the run's fidelity."""
        return pd.DataFrame([dict(run.summary, repeat=run.repeat,
                                  fidelity=run.fidelity.text if run.fidelity else None) for run in self.runs])

    def results(self, tag: str = "") -> pd.DataFrame:
        """Every run's nccl-tests rows, ``mode`` naming it (plus ``tag``, e.g. "@100km") and ``repeat``."""
        return pd.concat([nccl_tests.to_frame(run.results).assign(mode=f"{run.mode}{tag}", repeat=run.repeat)
                          for run in self.runs], ignore_index=True)

    @property
    def wrong(self) -> int:
        """Wrong elements over every mode's results."""
        return sum(r.wrong_elements for run in self.runs for r in run.results)

    def invalid(self) -> list[str]:
        """The modes whose runs were emulator-limited, each with its verdict: what makes a ratio not valid."""
        return [f"{mode}: {self.fidelity_text(mode)}" for mode in self.modes if self.faithful(mode) is False]


def compare(tb, options: nccl_tests.Options, modes: list[str], algorithm: Algorithm = Algorithm(),
            target_queue_ns: int | None = None, paths: list[SitePath] | None = None,
            print_line: Callable[[str], None] = print, log: Callable[[str], None] = print,
            telemetry=None, tag: str = "", on_answers: Callable[[dict, list[dict]], None] | None = None,
            repeats: int = 1) -> Comparison:
    """Run ``options``' sweep under each of ``modes`` on ``tb``, ``repeats`` times interleaved (A B A B ...),
    probing the fabric first unless ``paths`` are given.  With ``telemetry`` (``testbed.observe.telemetry``)
    the ranks sample their flows, every row is labelled with the mode (plus ``tag``, e.g. "@100km", and the
    repeat, when there are several) and each run gets its fidelity verdict; ``on_answers`` sees every
    measurement's answers as well."""
    for mode in modes:
        lookup(mode)  # before the probes: a typo should not cost a discovery
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    paths = paths if paths is not None else discover(tb)
    runs = []
    for repeat in range(1, repeats + 1):
        for mode in modes:
            label = f"{mode}{tag}" + (f" #{repeat}" if repeats > 1 else "")
            print_line(f"# mode: {label}")
            if telemetry is not None:
                telemetry.mode = label
            run = run_mode(tb, options, mode, algorithm, paths, target_queue_ns, print_line, log, telemetry,
                           on_answers)
            run.repeat = repeat
            if telemetry is not None:
                run.fidelity = next(v for v in telemetry.verdicts() if v.mode == label)
            runs.append(run)
    return Comparison(paths, runs, bounds_beside(tb, options, algorithm, runs[0].results))


def run_mode(tb, options: nccl_tests.Options, mode: str, algorithm: Algorithm, paths: list[SitePath],
             target_queue_ns: int | None, print_line, log, telemetry=None, on_answers=None) -> ModeRun:
    """One mode: choose the algorithm (the user's unless the mode tunes collectives), plan, configure switches,
    start ranks wired to the controller, sweep while sampling."""
    hosts = tb.hosts()
    controller = FabricController(tb, paths, mode, target_queue_ns, log)
    largest = nccl_tests.coll_counts(options.collective, max(options.sizes), options.dtypes[0], len(hosts))
    algorithm, why = controller.algorithm(hosts, options.collective, largest.size_bytes, algorithm)
    sites = rank_sites(tb.topo, [h.name for h in hosts]) if algorithm.hierarchical else None
    plan = controller.plan(hosts, flows(options.collective, len(hosts), algorithm, sites=sites))
    log(f"mode {mode}: {controller.mode.description}; collective: {describe(algorithm)} ({why})")
    controller.configure_switches(plan)
    before = _dci_counters(tb, plan)
    calls = []

    def answered(call: dict, answers: list[dict]) -> None:
        calls.append(_call_row(mode, call, answers))
        for observer in (telemetry.on_answers if telemetry else None, on_answers):
            if observer:
                observer(call, answers)

    telemetry_s = telemetry.interval_s if telemetry else 0.0
    with controller.ranks(plan, algorithm.nchannels, telemetry_s) as ranks:
        results = sweep(tb, ranks, options, algorithm, print_line, on_answers=answered)
    after = _dci_counters(tb, plan)
    dci = {k: after[k] - before[k] for k in after}
    dci["border_cnps"] = sum(c["cnps"] for c in controller.near_source_counters)  # near-source feedback's
    summary = dict(_summary(mode, calls, controller.samples, dci), algorithm=describe(algorithm))
    return ModeRun(mode, results, summary, controller.samples, controller.actions, calls)


def _call_row(mode: str, call: dict, answers: list[dict]) -> dict:
    """One command's outcome: per iteration, the slowest rank's time (the collective's completion)."""
    completion = np.max([a["iter_us"] for a in answers], axis=0).tolist() if answers[0]["iter_us"] else []
    counters = {name: sum(a["counters"][name] for a in answers) for name in answers[0]["counters"]}
    return {"mode": mode, "size_bytes": call["size_bytes"], "in_place": call["in_place"],
            "completion_us": completion, **counters}


def _dci_counters(tb, plan) -> dict:
    stats = [tb.egress(*hop).stats() for hop in plan.egresses]
    return {"drops": sum(s["drops"] for s in stats), "ce_marks": sum(s["ecn_marks"] for s in stats)}


def _summary(mode: str, calls: list[dict], samples: list[dict], dci: dict) -> dict:
    largest = max(c["size_bytes"] for c in calls)
    completion = [t for c in calls if c["size_bytes"] == largest for t in c["completion_us"]]
    delays = [s["queue_delay_ms"] for s in samples if s["busy"]]

    def p(values: list, q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    return {"mode": mode, "size_bytes": largest,
            "completion_p50_ms": p(completion, 50) / 1e3, "completion_p99_ms": p(completion, 99) / 1e3,
            "dci_queue_p50_ms": p(delays, 50), "dci_queue_p99_ms": p(delays, 99), **dci,
            "cnps": sum(c["cnps_received"] for c in calls),
            "delay_reports": sum(c["delay_reports_received"] for c in calls),  # CNPs carrying a delay, not in cnps
            "retransmitted": sum(c["retransmitted_packets"] for c in calls),
            "duplicates": sum(c["duplicates"] for c in calls),
            "host_drops": sum(c["send_errors"] + c["socket_drops"] for c in calls),
            "timeouts": sum(c["timeouts"] for c in calls)}


def save(comparison: Comparison, out) -> None:
    """CSV (and Parquet for the long tables) in ``out``: results per mode, ratios, summaries, paths, samples."""
    out.mkdir(parents=True, exist_ok=True)
    nccl_tests.save(comparison.results(), out, "compare-results")
    comparison.ratios().to_csv(out / "compare-ratios.csv", index=False)
    comparison.summaries().to_csv(out / "compare-summary.csv", index=False)
    pd.DataFrame([asdict(p) for p in comparison.paths]).to_csv(out / "discovery.csv", index=False)
    pd.DataFrame([s for run in comparison.runs for s in run.samples]).to_parquet(out / "dci-queue-samples.parquet")
    pd.DataFrame([a for run in comparison.runs for a in run.actions]).to_csv(out / "latency-actions.csv",
                                                                            index=False)
