"""``testbed run``: build a topology, check it against its declaration (RTT between sites, rate of every
DCI), run a cross-site all_reduce sweep, optionally open Mininet's CLI, tear down."""

import argparse
import sys
import time
from pathlib import Path

from testbed.collective import nccl_tests
from testbed.collective.schedules.model import Algorithm
from testbed.commands.fabric_cli import FabricCLI
from testbed.commands.options import (
    UsageError,
    add_observe_options,
    add_topology_options,
    check_dilation,
    fabric,
    observe_from,
    positive_finite,
    rerun_in_microvm_if_needed,
    resolve_dilation,
    results_dir,
    topology_class,
    topology_params,
    write_report,
)
from testbed.commands.perf import run_sweep
from testbed.experiments.checks import verify
from testbed.model.dilation import header
from testbed.net import microvm
from testbed.net.topo import FabricTopo
from testbed.observe.observing import observing
from testbed.results import report
from testbed.results.console import console, recording, stage
from testbed.results.tables import rate_table, rtt_table
from testbed.topologies import DEFAULT_TOPOLOGY

RUN_SWEEP = "-b 64K -e 1M -f 4 -n 3 -w 1"  # about a minute under TCG emulation


def add_parser(commands) -> None:
    parser = commands.add_parser("run", help="build a topology, measure RTTs and DCI rates, clean up")
    parser.add_argument("topology_name", nargs="?", metavar="TOPOLOGY",
                        help=f"a name from topologies/ or a path to a topology script (default {DEFAULT_TOPOLOGY}); "
                             "the same as --topology")
    add_topology_options(parser)
    add_observe_options(parser)
    parser.add_argument("--cli", action="store_true", help="open Mininet's CLI after the checks")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each rate check (default 5)")
    parser.add_argument("--sweep", default=RUN_SWEEP, metavar="NCCL-TESTS-ARGS",
                        help=f"the cross-site all_reduce sweep after the checks (default {RUN_SWEEP!r}; '' skips it)")
    parser.set_defaults(handler=handle)


MAX_CHECK_SECONDS = 3600.0  # an hour per rate check, declared (a dilated one takes k times that)


def handle(args: argparse.Namespace, argv: list[str]) -> int:
    if args.topology_name and args.topology and args.topology_name != args.topology:
        raise UsageError(f"two topologies given: {args.topology_name!r} and --topology {args.topology!r}")
    args.topology = args.topology or args.topology_name or DEFAULT_TOPOLOGY
    topo_cls = topology_class(args)
    topo = topo_cls(**topology_params(args, topo_cls))  # validates the whole fabric, builds nothing
    positive_finite("--seconds", args.seconds, MAX_CHECK_SECONDS, " s")
    args.observe = observe_from(args, topo)
    check_dilation(args, topo)  # resolved where the fabric runs
    hosts = len(topo.nodes_with(role="host"))
    args.sweep_options = nccl_tests.parse_args("all_reduce", args.sweep.split(), nranks=hosts) if args.sweep else None
    out = results_dir(args, Path(args.topology).stem)
    in_vm = rerun_in_microvm_if_needed(args, argv, out, positional=args.topology_name, interactive=args.cli)
    if in_vm is not None:
        return in_vm
    args.argv = argv
    return run_checks(topo, args, out, resolve_dilation(args, topo))


def run_checks(topo: FabricTopo, args, out: Path, dilation: float) -> int:
    """Build ``topo`` at ``dilation``, measure it, print and save the results, optionally open the CLI, tear
    down."""
    lines = []
    recording(lines)(header(dilation))
    started = time.monotonic()
    with fabric(topo, dilation) as tb:
        built_s = time.monotonic() - started
        console.print(f"built {len(topo.nodes())} nodes and {len(topo.links())} shaped links in {built_s:.1f} s")
        sweep = []
        with observing(tb, out, args.observe, Algorithm().nchannels) as telemetry:
            telemetry.mode = "checks"
            with stage("measuring RTTs and DCI rates"):
                results = verify(tb, args.seconds)
            console.print(rtt_table(results["rtt"]))
            console.print(rate_table(results["dci_rate"]))
            if args.sweep_options:
                telemetry.mode = "all_reduce"
                sweep, swept = run_sweep(tb, args.sweep_options, Algorithm(), out, telemetry)
                lines += swept
                results["all_reduce_check"] = [{"size_bytes": r.size_bytes, "wrong": r.wrong_elements,
                                                "ok": r.wrong_elements == 0} for r in sweep]
        params = {"topology": args.topology, "dilation": dilation, "build_s": round(built_s, 2),
                  "in_microvm": microvm.inside(), **topology_params(args, type(topo))}
        report.save(out, params, results)
        tables = [f"{name}.csv" for name in results] + (["all_reduce-bound.csv"] if sweep else [])
        frame = nccl_tests.to_frame(sweep).assign(mode="") if sweep else None
        write_report(out, f"testbed run {args.topology}", args.argv, params, lines, frame, tables)
        if args.cli:
            tb.cli(lambda: FabricCLI(tb, out))
    return checks_status(results)


def checks_status(results: dict[str, list[dict]]) -> int:
    """1 if any check failed; a check not measurable here (``ok`` None: the probe, not the network, fell short)
    is said, never counted."""
    off = [r for rows in results.values() for r in rows if r["ok"] is False]
    unmeasured = [r for rows in results.values() for r in rows if r["ok"] is None]
    if unmeasured:
        print(f"testbed: {len(unmeasured)} check(s) not measurable on this host (see under the tables above)",
              file=sys.stderr)
    if off:
        print(f"testbed: {len(off)} check(s) outside tolerance (see the tables above)", file=sys.stderr)
    return 1 if off else 0
