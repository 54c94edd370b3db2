"""``testbed compare``: one fabric, one workload, several modes in turn, side by side; with ``--distances``
the same again with every DCI at each length.

The scenario defaults (``COMPARE_SCENARIO``) apply to whatever the user did not give: rates at which the
ranks' Python transport keeps up under TCG (about 2000 packets/s per vCPU), so the network, not the
emulator's CPU, limits both modes.
"""

import argparse
from dataclasses import dataclass

import pandas as pd

from testbed.collective import nccl_tests
from testbed.collective.schedules.model import COLLECTIVES, Algorithm
from testbed.commands.options import (
    UsageError,
    add_algorithm_options,
    add_observe_options,
    add_topology_options,
    algorithm_from,
    exit_status,
    observe_from,
    rerun_in_microvm_if_needed,
    results_dir,
    topology_class,
    topology_params,
    write_report,
)
from testbed.experiments.comparison import Comparison, compare, save
from testbed.experiments.discovery import SitePath, discover
from testbed.experiments.modes import MODES
from testbed.model.units import propagation_delay_ms
from testbed.net.network import Testbed
from testbed.observe.observing import Observe, observing
from testbed.results.console import console, recording, say
from testbed.results.live import LiveView
from testbed.results.tables import discovery_table, frame_table
from testbed.topologies import accepted_keywords

COMPARE_SWEEP = "-b 1M -e 4M -f 4 -n 1 -w 0"
COMPARE_SCENARIO = {"hosts": 2, "host_bw_mbps": 20.0, "dci_bw_mbps": 10.0}
SHORT_NAMES = {"size_bytes": "size B", "bound_mbps": "bound", "completion_p50_ms": "done p50",
               "completion_p99_ms": "done p99", "dci_queue_p50_ms": "queue p50", "dci_queue_p99_ms": "queue p99",
               "ce_marks": "CE", "retransmitted": "retx", "timeouts": "RTOs"}


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
    parser.add_argument("--modes", default="baseline,adaptive",
                        help=f"comma-separated, the first is the reference (from: {', '.join(MODES)})")
    parser.add_argument("--distances", metavar="KM,KM,...",
                        help="also sweep distance: every DCI set to each of these lengths in turn")
    parser.add_argument("--target-queue-ms", type=float,
                        help="DCI queueing delay the adaptive modes aim at (default max(RTT/20, 2 frames))")
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
    modes = _modes(args.modes)
    distances = _distances(args.distances)
    if args.target_queue_ms is not None and args.target_queue_ms <= 0:
        raise UsageError(f"--target-queue-ms {args.target_queue_ms} must be > 0")
    observe = observe_from(args, topo)
    out = results_dir(args, "compare")
    in_vm = rerun_in_microvm_if_needed(args, argv, out)
    if in_vm is not None:
        return in_vm
    given = ", ".join(f"{k}={v:g}" for k, v in {**scenario, **params}.items() if isinstance(v, (int, float)))
    console.print(f"scenario: {given or 'topology defaults'}")
    run = run_comparisons(topo, options, algorithm, modes, distances, args.target_queue_ms, out, observe)
    run_params = {"topology": args.topology, "collective": args.collective,
                  "nccl_tests": " ".join(args.nccl or COMPARE_SWEEP.split()), "modes": ",".join(modes),
                  "distances_km": args.distances or "", "target_queue_ms": args.target_queue_ms or "derived",
                  "channels": algorithm.nchannels, "chunk_bytes": algorithm.chunk_bytes, **scenario, **params}
    write_report(out, f"{' vs '.join(modes)}: {args.collective} across sites", argv, run_params, run.lines,
                 run.results, run.tables)
    return exit_status(run.wrong)


def _modes(spec: str) -> list[str]:
    modes = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise UsageError(f"--modes {spec!r}: unknown mode {', '.join(unknown) or '(none given)'} "
                         f"(modes: {', '.join(MODES)})")
    return modes


def _distances(spec: str | None) -> list[float]:
    if not spec:
        return []
    try:
        values = [float(x) for x in spec.split(",")]
    except ValueError:
        raise UsageError(f"--distances {spec!r} must be comma-separated kilometres, e.g. 10,100,1000") from None
    if any(not (v > 0) for v in values):
        raise UsageError(f"--distances {spec!r}: every distance must be > 0 km")
    return values


@dataclass
class ComparisonRun:
    """What ``testbed compare`` leaves for its report: wrong elements, printed lines, results, CSV tables."""

    wrong: int
    lines: list[str]
    results: pd.DataFrame
    tables: list[str]


def run_comparisons(topo, options: nccl_tests.Options, algorithm: Algorithm, modes: list[str],
                    distances: list[float], target_queue_ms: float | None, out, observe: Observe) -> ComparisonRun:
    """Build ``topo``, compare the modes as declared, then at each of ``distances`` (every DCI set to that
    length, live); print and save everything, observed as ``observe`` says."""
    target_ns = None if target_queue_ms is None else round(target_queue_ms * 1e6)
    lines, frames = [], []
    total = 2 * options.measurements(len(topo.nodes_with(role="host"))) * len(modes) * (1 + len(distances))
    with console.status("building the fabric"), Testbed(topo) as tb:
        with console.status("probing the fabric: RTT and bottleneck rate between every pair of sites"):
            paths = discover(tb)
        console.print(discovery_table(paths))
        with observing(tb, out, observe, algorithm.nchannels) as telemetry, \
                LiveView(console, telemetry, total, "compare") as live:
            def run(paths: list[SitePath], tag: str) -> Comparison:
                return compare(tb, options, modes, algorithm, target_ns, paths, recording(lines), say, telemetry, tag,
                               on_answers=lambda call, answers: live.advance())

            comparison = run(paths, "")
            frames.append(comparison.results())
            _print(comparison)
            save(comparison, out)
            wrong = comparison.wrong
            rows = []
            for km in distances:
                for _, link in tb.dci_links():
                    link.set(delay_ms=propagation_delay_ms(km))
                with console.status(f"{km:g} km: probing the fabric"):
                    paths = discover(tb)
                console.rule(f"every DCI at {km:g} km")
                at = run(paths, f"@{km:g}km")
                frames.append(at.results(f"@{km:g}km"))
                _print(at)
                save(at, out / f"{km:g}km")
                wrong += at.wrong
                rows += [{"distance_km": km, **row} for row in at.ratios().to_dict("records")
                         if row["size_bytes"] == at.bounds[-1]["size_bytes"]]
    tables = ["compare-ratios.csv", "compare-summary.csv", "discovery.csv"]
    if rows:
        frame = pd.DataFrame(rows)
        console.print(frame_table("busbw (Mbit/s) against distance, largest size", frame.round(3)))
        frame.to_csv(out / "distance-sweep.csv", index=False)
        tables.append("distance-sweep.csv")
    return ComparisonRun(wrong, lines, pd.concat(frames, ignore_index=True), tables)


def _print(comparison: Comparison) -> None:
    """The two comparison tables, with column names short enough for 80 columns."""
    def short(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.round(2).rename(columns=lambda c: SHORT_NAMES.get(c, c.replace("_mbps", "").replace(
            "_of_bound_pct", " %bound").replace("_x", " x")))
    console.print(frame_table("busbw per size, Mbit/s (out of place); ratio to the first mode",
                              short(comparison.ratios())))
    console.print(frame_table("per mode, largest size: completion and DCI queueing delay (ms), cost",
                              short(comparison.summaries().drop(columns="size_bytes").round(1))))
