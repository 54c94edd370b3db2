"""``testbed perf``: an nccl-tests-style sweep of one collective across the sites, as nccl-tests' ``*_perf``
binaries run it, with the analytic bound beside each size."""

import argparse
from pathlib import Path

import pandas as pd

from testbed.collective import nccl_tests
from testbed.collective.runner import bounds_beside, perf
from testbed.collective.schedules.model import COLLECTIVES, Algorithm
from testbed.commands.options import (
    add_algorithm_options,
    add_observe_options,
    add_topology_options,
    algorithm_from,
    check_dilation,
    exit_status,
    fabric,
    observe_from,
    rerun_in_microvm_if_needed,
    resolve_dilation,
    results_dir,
    topology_class,
    topology_params,
    write_report,
)
from testbed.model.dilation import header
from testbed.observe.observing import observing
from testbed.results.console import console, recording
from testbed.results.live import LiveView, measurement_label
from testbed.results.tables import bound_table


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "perf", help="run an nccl-tests-style collective sweep across the sites",
        description="Any option not listed here is nccl-tests' own (-b -e -f -i -n -w -c -o -d -r), e.g. "
                    "testbed perf all_reduce -b 64K -e 4M -f 4 --distance-km 1000")
    parser.add_argument("collective", choices=COLLECTIVES)
    add_topology_options(parser)
    add_algorithm_options(parser)
    add_observe_options(parser)
    parser.set_defaults(handler=handle, nccl_tests_options=True)


def handle(args: argparse.Namespace, argv: list[str]) -> int:
    topo_cls = topology_class(args)
    topo = topo_cls(**topology_params(args, topo_cls))
    hosts = len(topo.nodes_with(role="host"))
    options = nccl_tests.parse_args(args.collective, args.nccl, nranks=hosts)  # exits 2 with nccl-tests' usage
    algorithm = algorithm_from(args)
    observe = observe_from(args, topo)
    check_dilation(args, topo)  # resolved where the fabric runs
    out = results_dir(args, args.collective)
    in_vm = rerun_in_microvm_if_needed(args, argv, out)
    if in_vm is not None:
        return in_vm
    dilation = resolve_dilation(args, topo)
    lines = []
    recording(lines)(header(dilation))
    with fabric(topo, dilation) as tb, observing(tb, out, observe, algorithm.nchannels) as telemetry:
        results, swept = run_sweep(tb, options, algorithm, out, telemetry)
        lines += swept
    params = {"topology": args.topology, "dilation": dilation, "collective": args.collective,
              "nccl_tests": " ".join(args.nccl),
              "channels": algorithm.nchannels, "chunk_bytes": algorithm.chunk_bytes,
              "hierarchical": algorithm.hierarchical, **topology_params(args, topo_cls)}
    write_report(out, f"{args.collective} across sites", argv, params, lines,
                 nccl_tests.to_frame(results).assign(mode=""), [f"{args.collective}-bound.csv"])
    return exit_status(sum(r.wrong_elements for r in results))


def run_sweep(tb, options, algorithm: Algorithm, out: Path, telemetry) -> tuple[list, list[str]]:
    """Run the collective sweep on ``tb`` under the live view, printing nccl-tests' lines as they come; save
    CSV and Parquet.  Returns the results and the printed lines."""
    lines = []
    measurements = 2 * options.measurements(len(tb.hosts()))
    with LiveView(console, telemetry, measurements, options.collective) as live:
        def answered(call: dict, answers: list[dict]) -> None:
            telemetry.on_answers(call, answers)
            live.advance(measurement_label(call))
        results = perf(tb, options, algorithm, print_line=recording(lines), telemetry_s=telemetry.interval_s,
                       on_answers=answered)
    bounds = bounds_beside(tb, options, algorithm, results)
    console.print(bound_table(options.collective, bounds))
    for verdict in telemetry.verdicts():
        recording(lines)(verdict.line)
    nccl_tests.save(nccl_tests.to_frame(results), out, options.collective)
    pd.DataFrame(bounds).to_csv(out / f"{options.collective}-bound.csv", index=False)
    return results, lines
