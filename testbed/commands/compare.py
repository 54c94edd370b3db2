"""``testbed compare``: one fabric, one workload, several modes in turn (``--repeat`` times, interleaved), side
by side; with ``--distances`` the same again on the fabric rebuilt at each DCI length.

The default scenario (``COMPARE_SCENARIO``, for whatever the user does not give) is a declared
Spectrum-X-class fabric: two sites, a GPU host with a 400 Gbit/s NIC in each, one 400 Gbit/s DCI, 10 km
apart as in NVIDIA's published scale-across claim, run time-dilated (``testbed.model.dilation``).  The DCI
carries the ring's one cross-site edge per direction at the NIC's full rate (1:1).  One host per site keeps
the default within minutes under TCG: with two (four ranks on two vCPUs) the packet budget per rank halved
(2,287 against 4,283 packets/s), k doubled to 15,000, and one 16 MB measurement took over three minutes, so
the default ran past 25 minutes.  ``--hosts 2 --channels 2`` gives the 2:1 oversubscribed DCI (both of a
site's senders can each fill it).  Sizes go up to a few bandwidth-delay products of the 10 km path (~5 MB),
where all_reduce is bandwidth-bound.

A distance sweep keeps the DCI's bandwidth-delay product in packets (and so message / BDP) as declared: at
10x the distance every rate is 10x lower, and k with it (``run_comparisons``).  It is the only way a run
at 3000 km stays in minutes: at 400 Gbit/s that path holds ~360,000 packets in flight, a minute of wall
time per round trip at the ranks' packet budget under TCG.  The output says the rate of every distance.
"""

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from testbed.collective import nccl_tests
from testbed.collective.schedules.model import COLLECTIVES, Algorithm
from testbed.commands.options import (
    UsageError,
    add_algorithm_options,
    add_observe_options,
    add_repeat_option,
    add_topology_options,
    algorithm_from,
    check_dilation,
    check_repeat,
    exit_status,
    fabric,
    modes_from,
    note_slow_nics,
    observe_from,
    positive_finite,
    probe_fabric,
    rerun_in_microvm_if_needed,
    resolve_dilation,
    results_dir,
    topology_class,
    topology_params,
    write_report,
)
from testbed.experiments.comparison import Comparison, compare, save
from testbed.experiments.modes import MECHANISMS, MODES, ablation_modes
from testbed.model.dilation import header
from testbed.model.units import propagation_delay_ms
from testbed.net.topo import FabricTopo
from testbed.observe.observing import Observe, observing
from testbed.results.console import console, recording, say
from testbed.results.live import LiveView, measurement_label
from testbed.results.tables import frame_table
from testbed.topologies import accepted_keywords

COMPARE_SWEEP = "-b 4M -e 16M -f 4 -n 1 -w 0"
ABLATION_CSV = "ablation.csv"
MAX_DISTANCE_KM = 20_000.0  # half the Earth's circumference: no two sites are further apart
MAX_TARGET_QUEUE_MS = 10_000.0
DEFAULT_MODES = "baseline,adaptive"
COMPARE_SCENARIO = {"hosts": 1, "host_bw_mbps": 400_000.0, "dci_bw_mbps": 400_000.0, "distance_km": 10.0}
SHORT_NAMES = {"size_bytes": "size B", "bound_mbps": "bound", "completion_p50_ms": "done p50",
               "completion_p99_ms": "done p99", "dci_queue_p50_ms": "queue p50", "dci_queue_p99_ms": "queue p99",
               "ce_marks": "CE", "retransmitted": "retx", "timeouts": "RTOs", "duplicates": "dup",
               "host_drops": "host drops"}


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "compare", help="the same sweep under baseline and adaptive control, side by side",
        description="Probes the fabric, then runs the nccl-tests sweep once per mode on the same fabric and "
                    "prints both tables, the busbw ratio per size, the bound, and per mode completion times, "
                    f"DCI queueing delay, drops, CE marks, CNPs, retransmissions.  Sweep default {COMPARE_SWEEP!r}"
                    "; scenario defaults (when not given): "
                    + ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in COMPARE_SCENARIO.items()) + ".")
    parser.add_argument("--collective", default="all_reduce", choices=COLLECTIVES)
    add_topology_options(parser)
    add_algorithm_options(parser)
    add_observe_options(parser)
    parser.add_argument("--modes", help=f"comma-separated, the first is the reference (from: {', '.join(MODES)}, "
                                        f"or adaptive:MECHANISM+... with mechanisms {', '.join(MECHANISMS)}; "
                                        f"default {DEFAULT_MODES})")
    parser.add_argument("--ablation", action="store_true",
                        help="the modes of an ablation: baseline, the adaptive controller with each mechanism "
                             "alone, then with all; adds ablation.csv and its plot (ratio against distance)")
    parser.add_argument("--distances", metavar="KM,KM,...",
                        help="also sweep distance: every DCI set to each of these lengths in turn")
    parser.add_argument("--target-queue-ms", type=float,
                        help="DCI queueing delay the adaptive modes aim at (default max(RTT/20, 2 frames))")
    add_repeat_option(parser, "report medians, spread and a 95 % interval of each ratio")
    parser.set_defaults(handler=handle, nccl_tests_options=True)


def handle(args: argparse.Namespace, argv: list[str]) -> int:
    topo_cls = topology_class(args)
    params = topology_params(args, topo_cls)
    accepted = accepted_keywords(topo_cls)
    scenario = {k: v for k, v in COMPARE_SCENARIO.items() if k in accepted and k not in params}
    topo = topo_cls(**scenario, **params)
    hosts = len(topo.nodes_with(role="host"))
    options = nccl_tests.parse_args(args.collective, args.nccl or COMPARE_SWEEP.split(), nranks=hosts)
    algorithm = algorithm_from(args)
    if args.ablation and args.modes:
        raise UsageError("--ablation runs its own modes: give --modes or --ablation, not both")
    modes = ablation_modes() if args.ablation else modes_from(args.modes or DEFAULT_MODES)
    distances = _distances(args.distances)
    if args.target_queue_ms is not None:
        positive_finite("--target-queue-ms", args.target_queue_ms, MAX_TARGET_QUEUE_MS)
    check_repeat(args)
    observe = observe_from(args, topo)
    check_dilation(args, topo)  # resolved where the fabric runs
    out = results_dir(args, "compare")
    in_vm = rerun_in_microvm_if_needed(args, argv, out)
    if in_vm is not None:
        return in_vm
    given = ", ".join(f"{k}={v:g}" for k, v in {**scenario, **params}.items() if isinstance(v, (int, float)))
    console.print(f"scenario: {given or 'topology defaults'}")
    dilations = {}

    def dilation_of(topo: FabricTopo, rate_scale: float) -> float:
        dilations[rate_scale] = resolve_dilation(args, topo, rate_scale)
        return dilations[rate_scale]

    run = run_comparisons(lambda km, scale: topo_cls(**scenario, **params, dci_km=km, rate_scale=scale), options,
                          algorithm, modes, distances, args.target_queue_ms, out, observe, dilation_of, args.repeat,
                          args.ablation)
    run_params = {"topology": args.topology, "dilation": dilations[1.0], "collective": args.collective,
                  "nccl_tests": " ".join(args.nccl or COMPARE_SWEEP.split()), "modes": ",".join(modes),
                  "repeats": args.repeat, "distances_km": args.distances or "", "ablation": args.ablation,
                  "target_queue_ms": args.target_queue_ms or "derived", "channels": algorithm.nchannels,
                  "chunk_bytes": algorithm.chunk_bytes, **scenario, **params}
    write_report(out, f"{' vs '.join(modes)}: {args.collective} across sites", argv, run_params, run.lines,
                 run.results, run.tables)
    for line in run.invalid:
        print(f"testbed: not valid, emulator-limited: {line}", file=sys.stderr)
    return max(exit_status(run.wrong), 1 if run.invalid else 0)


def _distances(spec: str | None) -> list[float]:
    if not spec:
        return []
    try:
        values = [float(x) for x in spec.split(",")]
    except ValueError:
        raise UsageError(f"--distances {spec!r} must be comma-separated kilometres, e.g. 10,100,1000") from None
    if any(not 0 < v <= MAX_DISTANCE_KM for v in values):
        raise UsageError(f"--distances {spec!r}: every distance must be > 0 and at most {MAX_DISTANCE_KM:g} km")
    return values


@dataclass
class ComparisonRun:
    """What ``testbed compare`` leaves for its report: wrong elements, printed lines, results, CSV tables, and
    the modes whose runs were emulator-limited (their ratios are not valid)."""

    wrong: int
    lines: list[str]
    results: pd.DataFrame
    tables: list[str]
    invalid: list[str]


def run_comparisons(topo_of: Callable[[float | None, float], FabricTopo], options: nccl_tests.Options,
                    algorithm: Algorithm, modes: list[str], distances: list[float], target_queue_ms: float | None,
                    out: Path, observe: Observe, dilation_of: Callable[[FabricTopo, float], float],
                    repeats: int, ablation: bool = False) -> ComparisonRun:
    """The declared scenario (``topo_of(None, 1)``), then each of ``distances``: a fabric built anew with every
    DCI that long and every rate scaled so the DCI's bandwidth-delay product, in packets, stays the declared
    scenario's (``rate_scale``); each at its own k (``dilation_of(topo, rate_scale)``).  Print and save it all;
    for an ``ablation`` also each mode's row at the largest size and every distance (``ablation.csv``)."""
    base = topo_of(None, 1.0)
    base_delay_ms = min(d.one_way_delay_ms() for d in base.fabric.dci_links)
    lines, frames, invalid, rows, modes_rows = [], [], [], [], []
    tables, wrong = ["compare-ratios.csv", "compare-summary.csv", "discovery.csv"], 0
    runs = [(None, 1.0, base, out, "")]
    for km in distances:
        if {d.one_way_delay_ms() for d in base.fabric.dci_links} == {propagation_delay_ms(km)}:
            continue  # the declared scenario already runs at this distance
        scale = min(1.0, base_delay_ms / propagation_delay_ms(km)) if base_delay_ms > 0 else 1.0
        runs.append((km, scale, topo_of(km, scale), out / f"{km:g}km", f"@{km:g}km"))
    for km, scale, topo, directory, tag in runs:
        if km is not None:
            console.rule(f"every DCI at {km:g} km, every rate x {scale:.3g} (the DCI's BDP in packets as declared)")
        comparison = _compare_on(topo, dilation_of(topo, scale), options, algorithm, modes, target_queue_ms,
                                 directory, observe, repeats, tag, lines)
        frames.append(comparison.results(tag))
        if ablation:
            at_km = km if km is not None else base.fabric.dci_links[0].distance_km
            modes_rows.append(comparison.by_mode().assign(distance_km=at_km, rate_scale=scale))
        wrong += comparison.wrong
        invalid += [f"{line} {tag}".strip() for line in comparison.invalid()]
        if km is not None or any(d.distance_km == k for d in base.fabric.dci_links for k in distances):
            at = km if km is not None else base.fabric.dci_links[0].distance_km
            rows += [{"distance_km": at, "rate_scale": scale, **row} for row in comparison.ratios().to_dict("records")
                     if row["size_bytes"] == comparison.bounds[-1]["size_bytes"]]
    if rows:
        frame = pd.DataFrame(rows).sort_values("distance_km")
        console.print(frame_table("busbw (Mbit/s, declared) against distance, largest size", _short(frame)))
        frame.to_csv(out / "distance-sweep.csv", index=False)
        tables.append("distance-sweep.csv")
    if ablation:
        frame = pd.concat(modes_rows, ignore_index=True)
        console.print(frame_table("ablation, largest size: busbw (Mbit/s declared), ratio to baseline (95 % "
                                  "interval), DCI queue p99 (ms), drops, retransmitted (medians)", _ablation(frame)))
        frame.to_csv(out / ABLATION_CSV, index=False)
        tables.insert(0, ABLATION_CSV)
    return ComparisonRun(wrong, lines, pd.concat(frames, ignore_index=True), tables, invalid)


def _compare_on(topo: FabricTopo, dilation: float, options: nccl_tests.Options, algorithm: Algorithm,
                modes: list[str], target_queue_ms: float | None, out: Path, observe: Observe, repeats: int, tag: str,
                lines: list[str]) -> Comparison:
    """Build ``topo`` at ``dilation``, probe it, compare the modes ``repeats`` times interleaved; print it and
    save it in ``out``."""
    target_ns = None if target_queue_ms is None else round(target_queue_ms * 1e6)
    recording(lines)(header(dilation))
    total = 2 * options.measurements(len(topo.nodes_with(role="host"))) * len(modes) * repeats
    note_slow_nics(topo)
    with fabric(topo, dilation) as tb:
        paths = probe_fabric(tb)
        with observing(tb, out, observe, algorithm.nchannels) as telemetry, \
                LiveView(console, telemetry, total, f"compare{tag}") as live:
            def advance(call: dict, answers: list[dict]) -> None:
                live.advance(f"{telemetry.mode} {measurement_label(call)}")

            comparison = compare(tb, options, modes, algorithm, target_ns, paths, recording(lines), say, telemetry,
                                 tag, on_answers=advance, repeats=repeats)
    _print(comparison)
    save(comparison, out)
    return comparison


def _ablation(frame: pd.DataFrame) -> pd.DataFrame:
    """The ablation's rows in 80 columns."""
    return pd.DataFrame({
        "km": frame["distance_km"].map(lambda v: f"{v:g}"), "mode": frame["mode"],
        "busbw": frame["busbw_mbps"].map(lambda v: f"{v:.3g}"),
        "ratio": [f"{r:.2f} ({lo:.2f}-{hi:.2f})" + ("" if ok else " NOT VALID")
                  for r, lo, hi, ok in zip(frame["ratio"], frame["ci_low"], frame["ci_high"], frame["valid"])],
        "queue p99": frame["dci_queue_p99_ms"].map(lambda v: f"{v:.3g}"), "drops": frame["drops"].map("{:g}".format),
        "retx": frame["retransmitted"].map("{:g}".format)})


def _short(frame: pd.DataFrame) -> pd.DataFrame:
    """Column names short enough for 80 columns, numbers to 3 significant digits."""
    names = {c: SHORT_NAMES.get(c, c.replace("_mbps", "").replace("_of_bound_pct", " %bound").replace("_x", " x"))
             for c in frame.columns}
    return frame.rename(columns=names).map(lambda v: float(f"{v:.3g}") if isinstance(v, float) else v)


def _print(comparison: Comparison) -> None:
    """busbw per size with each ratio, its spread, interval and verdict; each run's cost; each mode's fidelity."""
    ratios, reference = comparison.ratios(), comparison.modes[0]
    busbw = ratios[["size_bytes", "bound_mbps", *(f"{m}_mbps" for m in comparison.modes)]]
    runs = len(comparison.of(reference))
    console.print(frame_table(f"busbw per size, Mbit/s declared (out of place, median of {runs} runs)", _short(busbw)))
    for mode in comparison.modes[1:]:
        shown = pd.DataFrame({"size B": ratios["size_bytes"], "ratio": ratios[f"{mode}_x"],
                              "min": ratios[f"{mode}_x_min"], "max": ratios[f"{mode}_x_max"],
                              "95% low": ratios[f"{mode}_x_ci_low"], "95% high": ratios[f"{mode}_x_ci_high"],
                              "verdict": [v if ok else "NOT VALID" for v, ok in zip(ratios[f"{mode}_verdict"],
                                                                                   ratios[f"{mode}_valid"])]})
        console.print(frame_table(f"{mode} / {reference} ({_scope(comparison, mode)})", _short(shown)))
    summaries = comparison.summaries().drop(columns=["size_bytes", "fidelity", "algorithm"])
    console.print(frame_table("per run, largest size: completion and DCI queueing delay (ms, declared), cost",
                              _short(summaries)))
    for mode in comparison.modes:
        algorithm = comparison.of(mode)[0].summary["algorithm"]
        say(f"fidelity {mode}: {comparison.fidelity_text(mode)}; collective: {algorithm}")


def _scope(comparison: Comparison, mode: str) -> str:
    """What a ratio measures: the network alone when both modes ran the same collective algorithm."""
    algorithms = {comparison.of(m)[0].summary["algorithm"] for m in (comparison.modes[0], mode)}
    return "network only" if len(algorithms) == 1 else "full stack: network and collective algorithm"
