"""``testbed flows``: long flows from chosen senders into chosen receivers under one or more modes, the
point-to-point experiment of congestion-control papers (``testbed.experiments.flows``).

    testbed flows --topology dumbbell --senders 2 --receivers 1 --distance-km 1000 --modes baseline,adaptive

Per mode it prints and saves each flow's goodput and completion time against its max-min fair share, the
DCI egresses' utilisation, queueing delay percentiles, drops and CE marks while the flows ran, each flow's
CNPs and retransmissions, and the run's fidelity verdict; the telemetry (rate traces, queue samples) and the
plots go to the results directory like every run's.
"""

import argparse
import sys

import pandas as pd

from testbed.collective import nccl_tests
from testbed.collective.bounds import rank_sites
from testbed.commands.options import (
    UsageError,
    add_observe_options,
    add_repeat_option,
    add_topology_options,
    check_dilation,
    check_repeat,
    fabric,
    modes_from,
    note_slow_nics,
    observe_from,
    probe_fabric,
    rerun_in_microvm_if_needed,
    resolve_dilation,
    results_dir,
    topology_class,
    topology_params,
    write_report,
)
from testbed.experiments.flows import FlowsError, default_pairs, jain_index, parse_pairs, run_flows, summary
from testbed.experiments.modes import MODES
from testbed.model.dilation import header
from testbed.observe.observing import observing
from testbed.results.console import console, recording, say, stage
from testbed.results.tables import frame_table

DEFAULT_SIZE = "4M"
MAX_SIZE_BYTES = 1 << 30  # a flow's bytes are held by its sender and its receiver at once
FLOW_COLUMNS = {"src": "src", "dst": "dst", "fct_ms": "done ms", "goodput_mbps": "goodput", "fair_mbps": "fair",
                "of_fair_pct": "% fair", "cnps": "CNPs", "delay_reports": "delay rep.", "retransmitted": "retx",
                "timeouts": "RTOs", "wrong_bytes": "wrong"}
EGRESS_COLUMNS = {"egress": "egress", "rate_mbps": "rate", "flows": "flows", "util_pct": "util %",
                  "queue_p50_ms": "queue p50", "queue_p99_ms": "queue p99", "queue_max_ms": "queue max",
                  "drops": "drops", "ce_marks": "CE"}


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "flows", help="long flows from chosen senders to chosen receivers (e.g. an incast across the DCI)",
        description="Every flow starts at once and carries --size bytes, verified at its receiver.  Default "
                    "flows: every host of the first site into the hosts of the last, in turn.")
    add_topology_options(parser)
    add_observe_options(parser)
    parser.add_argument("--flow", action="append", metavar="SRC:DST",
                        help="a flow between two hosts, e.g. westh1:easth1; repeat for more")
    parser.add_argument("--size", default=DEFAULT_SIZE, help=f"bytes per flow, K/M/G suffixes (default {DEFAULT_SIZE})")
    parser.add_argument("--modes", default="baseline",
                        help=f"comma-separated, run in turn on the same fabric (from: {', '.join(MODES)}; "
                             "default baseline)")
    add_repeat_option(parser, "summarise medians and spread")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, argv: list[str]) -> int:
    topo_cls = topology_class(args)
    topo = topo_cls(**topology_params(args, topo_cls))
    hosts = topo.nodes_with(role="host")  # in rank order, as ``Testbed.hosts()`` lists them
    try:
        pairs = parse_pairs(args.flow, hosts) if args.flow else default_pairs(rank_sites(topo, hosts))
    except FlowsError as error:
        raise UsageError(f"--flow: {error}") from None
    nbytes = flow_size(args.size)
    modes = modes_from(args.modes)
    check_repeat(args)
    observe = observe_from(args, topo)
    check_dilation(args, topo)
    out = results_dir(args, "flows")
    in_vm = rerun_in_microvm_if_needed(args, argv, out)
    if in_vm is not None:
        return in_vm
    dilation = resolve_dilation(args, topo)
    lines = []
    recording(lines)(header(dilation))
    runs = []
    note_slow_nics(topo)
    with fabric(topo, dilation) as tb:
        paths = probe_fabric(tb)
        with observing(tb, out, observe, 1) as telemetry:
            for repeat in range(1, args.repeat + 1):
                for mode in modes:
                    label = f"{mode} #{repeat}" if args.repeat > 1 else mode
                    with stage(f"{label}: {len(pairs)} flows of {nbytes:,} B"):
                        runs.append(run_flows(tb, pairs, nbytes, mode, paths, telemetry, repeat, label, log=say))
                    _print(runs[-1], recording(lines))
    table = summary(runs)
    console.print(frame_table(f"per mode, median (min-max) of {args.repeat} runs: the flows' goodput together "
                              "(Mbit/s declared), Jain's index, the busiest DCI egress's queue; totals",
                              _ranges(table)))
    _save(runs, table, out)
    params = {"topology": args.topology, "dilation": dilation, "modes": ",".join(modes), "repeats": args.repeat,
              "flow_bytes": nbytes,
              "flows": " ".join(f"{hosts[s]}:{hosts[d]}" for s, d in pairs), **topology_params(args, topo_cls)}
    write_report(out, f"{len(pairs)} flows under {', '.join(modes)}", argv, params, lines, None,
                 ["flows-summary.csv", "flows.csv", "flows-dci.csv"])
    return status(runs)


def flow_size(text: str) -> int:
    """``--size`` in bytes: at least 1, at most ``MAX_SIZE_BYTES``."""
    try:
        nbytes = nccl_tests.parsesize(text)
    except ValueError as error:
        raise UsageError(f"--size: {error}") from None
    if not 1 <= nbytes <= MAX_SIZE_BYTES:
        raise UsageError(f"--size {text!r} must be from 1 byte to {MAX_SIZE_BYTES >> 20} MB")
    return nbytes


def _print(run, print_line) -> None:
    """The mode's flows and DCI egresses as tables, Jain's index and the fidelity verdict as lines."""
    console.print(frame_table(f"{run.label}: flows (Mbit/s and ms, declared)", _short(run.flows, FLOW_COLUMNS)))
    console.print(frame_table(f"{run.label}: DCI egresses while the flows ran (Mbit/s, %, ms declared)",
                              _short(run.egresses, EGRESS_COLUMNS)))
    print_line(f"# {run.label}: Jain's fairness index {jain_index(run.flows['goodput_mbps']):.3f} over "
               f"{len(run.flows)} flows; fidelity: {run.fidelity.text if run.fidelity else 'not judged'}")


def _ranges(table: pd.DataFrame) -> pd.DataFrame:
    """The summary in 80 columns: each median with its min-max, the totals as they are."""
    def spread(column: str, digits: str = ".3g") -> list[str]:
        return [f"{row[column]:{digits}} ({row[column + '_min']:{digits}}-{row[column + '_max']:{digits}})"
                for _, row in table.iterrows()]

    return pd.DataFrame({"mode": table["mode"], "faithful": [f"{f}/{n}" for f, n in zip(table["faithful"],
                                                                                        table["repeats"])],
                         "goodput": spread("goodput_mbps"), "Jain": [f"{j:.3f}" for j in table["jain"]],
                         "queue p99 ms": spread("queue_p99_ms"), "drops": table["drops"],
                         "retx": table["retransmitted"]})


def _short(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    shown = frame[[c for c in columns if c in frame.columns]].rename(columns=columns)
    return shown.map(lambda v: float(f"{v:.3g}") if isinstance(v, float) else v)


def _save(runs: list, table: pd.DataFrame, out) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "flows-summary.csv", index=False)
    pd.concat([r.flows.assign(mode=r.mode, repeat=r.repeat) for r in runs]).to_csv(out / "flows.csv", index=False)
    pd.concat([r.egresses.assign(mode=r.mode, repeat=r.repeat) for r in runs]).to_csv(out / "flows-dci.csv",
                                                                                     index=False)
    pd.concat([r.utilisation.assign(mode=r.label) for r in runs]).to_parquet(out / "flows-utilisation.parquet",
                                                                           index=False)


def status(runs: list) -> int:
    """1 if a flow delivered wrong bytes or a mode was emulator-limited (its numbers are not results)."""
    wrong = sum(run.wrong for run in runs)
    limited = [run for run in runs if run.fidelity is not None and not run.fidelity.faithful]
    if wrong:
        print(f"testbed: {wrong} bytes delivered wrong (see the flows tables)", file=sys.stderr)
    for run in limited:
        print(f"testbed: not valid, emulator-limited: {run.label}: {run.fidelity.text}", file=sys.stderr)
    return 1 if wrong or limited else 0
