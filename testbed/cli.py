"""The ``testbed`` command: run a topology and check it, clean up after crashes, report what the kernel can do.

Bad input is rejected before anything is built (and before a microVM boots): one line naming the option or
field and its value, exit status 2.  When the kernel lacks netem or RED, ``run`` re-runs itself inside a
microVM (``testbed.microvm``) and says so in one line.
"""

import argparse
import importlib
import importlib.util
import inspect
import os
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd

from testbed import cleanup, kernel, microvm, nccl_tests, report
from testbed.capture import DEFAULT_MAX_MB, HEADERS_SNAPLEN, RING_FILES
from testbed.fabric import DciLink, TopologyError
from controllers.modes import MODES
from testbed.observe import Observe
from testbed.schedules import COLLECTIVES, Algorithm
from testbed.telemetry import SCOPES
from testbed.topo import FabricTopo

TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"
DEFAULT_TOPOLOGY = "two_sites"
RUN_SWEEP = "-b 64K -e 1M -f 4 -n 3 -w 1"  # about a minute under TCG emulation
COMPARE_SWEEP = "-b 1M -e 4M -f 4 -n 1 -w 0"
MIN_SNAPLEN = 74  # Ethernet, IPv4, UDP, BTH and the transport header with its send timestamp
# the comparison's scenario unless given: rates at which the ranks' Python transport keeps up under TCG
# (about 2000 packets/s per vCPU), so the network, not the emulator's CPU, limits both modes
COMPARE_SCENARIO = {"hosts": 2, "host_bw_mbps": 20.0, "dci_bw_mbps": 10.0}
# CLI flag -> build() keyword; each is passed only if given, and only if the topology takes it
TOPOLOGY_FLAGS = {
    "distance_km": float, "sites": int, "hosts": int, "leaves": int, "spines": int,
    "host_bw_mbps": float, "fabric_bw_mbps": float, "dci_bw_mbps": float, "jitter_ms": float,
    "loss_pct": float, "loss_burst_pkts": float, "buffer_bytes": int, "ecn_kmin_bytes": int,
    "ecn_kmax_bytes": int,
}


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line and the exit status is 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("perf", "compare"):
        args.nccl = rest  # nccl-tests' options, checked by nccl_tests.parse_args
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.handler(args, argv if argv is not None else sys.argv[1:])
    except (UsageError, TopologyError) as error:
        print(f"testbed: error: {error}", file=sys.stderr)
        return 2
    except (microvm.MicroVmError, report.ReportError) as error:
        print(f"testbed: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("testbed: interrupted; everything was cleaned up", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testbed", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="build a topology, measure RTTs and DCI rates, clean up")
    run.add_argument("topology", nargs="?", default=DEFAULT_TOPOLOGY,
                     help=f"a name from topologies/ or a path to a topology script (default {DEFAULT_TOPOLOGY})")
    add_run_options(run)
    run.set_defaults(handler=cmd_run)
    perf = commands.add_parser(
        "perf", help="run an nccl-tests-style collective sweep across the sites",
        description="Any option not listed here is nccl-tests' own (-b -e -f -i -n -w -c -o -d -r), e.g. "
                    "testbed perf all_reduce -b 64K -e 4M -f 4 --distance-km 1000")
    perf.add_argument("collective", choices=COLLECTIVES)
    perf.add_argument("--topology", default=DEFAULT_TOPOLOGY,
                      help=f"a name from topologies/ or a path to a topology script (default {DEFAULT_TOPOLOGY})")
    add_topology_options(perf)
    add_algorithm_options(perf)
    add_observe_options(perf)
    perf.set_defaults(handler=cmd_perf)
    compare = commands.add_parser(
        "compare", help="the same sweep under baseline and adaptive control, side by side",
        description="Probes the fabric, then runs the nccl-tests sweep once per mode on the same fabric and "
                    "prints both tables, the busbw ratio per size, the bound, and per mode completion times, "
                    f"DCI queueing delay, drops, CE marks, CNPs, retransmissions.  Sweep default {COMPARE_SWEEP!r}"
                    "; scenario defaults (when not given): "
                    + ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in COMPARE_SCENARIO.items()) + ".")
    compare.add_argument("--collective", default="all_reduce", choices=COLLECTIVES)
    compare.add_argument("--topology", default=DEFAULT_TOPOLOGY,
                         help=f"a name from topologies/ or a path to a topology script (default {DEFAULT_TOPOLOGY})")
    add_topology_options(compare)
    add_algorithm_options(compare)
    add_observe_options(compare)
    compare.add_argument("--modes", default="baseline,adaptive",
                         help=f"comma-separated, the first is the reference (from: {', '.join(MODES)})")
    compare.add_argument("--distances", metavar="KM,KM,...",
                         help="also sweep distance: every DCI set to each of these lengths in turn")
    compare.add_argument("--target-queue-ms", type=float,
                         help="DCI queueing delay the adaptive modes aim at (default max(RTT/20, 2 frames))")
    compare.set_defaults(handler=cmd_compare)
    analyze = commands.add_parser(
        "analyze", help="derive per-flow throughput, CE, CNPs, retransmissions and delay from a run's captures",
        description="Reads RESULTS_DIR/capture (a run with --capture), cross-checks it against the run's "
                    "telemetry, writes RESULTS_DIR/analysis and refreshes the report.  Needs no root.")
    analyze.add_argument("results_dir", type=Path, metavar="RESULTS_DIR")
    analyze.add_argument("--bin-ms", type=float, default=100.0,
                         help="time bin of the throughput and event series (default 100)")
    analyze.set_defaults(handler=cmd_analyze)
    clean = commands.add_parser("clean", help="remove what crashed or killed runs left behind")
    clean.set_defaults(handler=cmd_clean)
    doctor = commands.add_parser("doctor", help="show what the kernel supports and which path runs use")
    doctor.set_defaults(handler=cmd_doctor)
    return parser


def add_topology_options(parser: argparse.ArgumentParser) -> None:
    topo = parser.add_argument_group("topology options (passed to the topology's build)")
    for name, kind in TOPOLOGY_FLAGS.items():
        topo.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, metavar=kind.__name__.upper())
    topo.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="any other keyword of the topology's build(), e.g. --param west_south_km=2000")
    topo.add_argument("--mtu", type=int, help="link MTU (default 9000)")
    parser.add_argument("--out", type=Path, help="results directory (default results/<name>-<time>)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    add_topology_options(parser)
    add_observe_options(parser)
    parser.add_argument("--cli", action="store_true", help="open Mininet's CLI after the checks")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each rate check (default 5)")
    parser.add_argument("--sweep", default=RUN_SWEEP, metavar="NCCL-TESTS-ARGS",
                        help=f"the cross-site all_reduce sweep after the checks (default {RUN_SWEEP!r}; '' skips it)")


def add_observe_options(parser: argparse.ArgumentParser) -> None:
    obs = parser.add_argument_group("telemetry and packet captures (see testbed analyze)")
    obs.add_argument("--telemetry-ms", type=float, default=Observe.interval_s * 1e3, metavar="MS",
                     help=f"sampling interval of queues, links and flows (default {Observe.interval_s * 1e3:g})")
    obs.add_argument("--telemetry-scope", choices=SCOPES, default=Observe.scope,
                     help="queues sampled: the border routers' (dci, default) or every node's (all)")
    obs.add_argument("--capture", action="store_true",
                     help="record pcaps of --capture-links (headers only, ring-rotated) in RESULTS/capture")
    obs.add_argument("--capture-links", default="dci", metavar="dci|A-B,C-D",
                     help="the links to capture: every DCI link (default) or node pairs, e.g. westb-eastb,wests1-westb")
    obs.add_argument("--snaplen", type=int, default=HEADERS_SNAPLEN,
                     help=f"bytes kept per packet (default {HEADERS_SNAPLEN}: headers only; 0 keeps whole packets)")
    obs.add_argument("--capture-max-mb", type=int, default=DEFAULT_MAX_MB,
                     help=f"disk the capture may use at most, as a ring of {RING_FILES} files per link "
                          f"(default {DEFAULT_MAX_MB})")


def observe_from(args, topo: FabricTopo) -> Observe:
    """The --telemetry/--capture options checked against the topology before anything is built."""
    if not args.telemetry_ms > 0:
        raise UsageError(f"--telemetry-ms {args.telemetry_ms:g} must be > 0")
    if args.snaplen != 0 and args.snaplen < MIN_SNAPLEN:
        raise UsageError(f"--snaplen {args.snaplen} cuts the RoCE headers: use at least {MIN_SNAPLEN}, "
                         "or 0 for whole packets")
    links = None if args.capture_links == "dci" else tuple(_link_pair(topo, p) for p in args.capture_links.split(","))
    if args.capture_max_mb < RING_FILES * len(links or topo.dci_link_names()):
        raise UsageError(f"--capture-max-mb {args.capture_max_mb} leaves less than 1 MB per ring file "
                         f"({RING_FILES} files per captured link)")
    return Observe(args.telemetry_ms / 1e3, args.telemetry_scope, args.capture, links, args.snaplen,
                   args.capture_max_mb)


def _link_pair(topo: FabricTopo, spec: str) -> tuple[str, str]:
    a, sep, b = spec.strip().partition("-")
    if not sep or (a, b) not in {*topo.links(), *((y, x) for x, y in topo.links())}:
        raise UsageError(f"--capture-links: {spec.strip()!r} is not a link of the topology "
                         "(give node pairs like westb-eastb, or dci)")
    return a, b


def add_algorithm_options(parser: argparse.ArgumentParser) -> None:
    algo = parser.add_argument_group("collective algorithm")
    algo.add_argument("--channels", type=int, default=Algorithm.nchannels,
                      help=f"parallel rings, NCCL's nChannels (default {Algorithm.nchannels})")
    algo.add_argument("--chunk", default=str(Algorithm.chunk_bytes), metavar="SIZE",
                      help=f"pipelining chunk, e.g. 128K (default {Algorithm.chunk_bytes})")
    algo.add_argument("--hierarchical", action="store_true",
                      help="all_reduce within sites first, so each rank sends one shard across the DCI")


def algorithm_from(args) -> Algorithm:
    if args.channels < 1:
        raise UsageError(f"--channels {args.channels} must be >= 1")
    try:
        chunk = nccl_tests.parsesize(args.chunk)
    except ValueError as error:
        raise UsageError(f"--chunk {args.chunk!r}: {error}") from None
    if chunk < 1:
        raise UsageError(f"--chunk {args.chunk!r} must be at least 1 byte")
    return Algorithm(nchannels=args.channels, chunk_bytes=chunk, hierarchical=args.hierarchical)


# -- run ---------------------------------------------------------------------------------------------------

def cmd_run(args, argv: list[str]) -> int:
    topo_cls = load_topology(args.topology)
    topo = topo_cls(**topology_params(args, topo_cls))  # validates the whole fabric, builds nothing
    if args.seconds <= 0:
        raise UsageError(f"--seconds {args.seconds} must be > 0")
    args.observe = observe_from(args, topo)
    hosts = len(topo.nodes_with(role="host"))
    args.sweep_options = nccl_tests.parse_args("all_reduce", args.sweep.split(), nranks=hosts) if args.sweep else None
    out = (args.out or Path("results") / f"{Path(args.topology).stem}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    _require_root()
    reason = microvm.needed()
    if reason is None:
        args.argv = argv
        return run_checks(topo, args, out)
    if args.cli:  # the VM's console does not carry a terminal's input through to Mininet's CLI
        raise UsageError(f"--cli needs a kernel that emulates links itself ({reason}): use a full kernel, "
                         "e.g. the Vagrant VM")
    inner = [sys.executable, "-m", "testbed", "run", str(_topology_arg(args.topology)),
             *_without_positional(argv, args.topology), "--out", str(out)]
    return _run_in_microvm(inner, out, reason)


def run_checks(topo: FabricTopo, args, out: Path) -> int:
    """Build ``topo``, measure it, print and save the results, optionally open the CLI, tear down."""
    from testbed.network import Testbed
    from testbed.observe import observing
    from testbed.verify import verify

    started = time.monotonic()
    with report.console.status("building the fabric"), Testbed(topo) as tb:
        built_s = time.monotonic() - started
        report.console.print(f"built {len(topo.nodes())} nodes and {len(topo.links())} shaped links "
                             f"in {built_s:.1f} s")
        sweep, lines = [], []
        with observing(tb, out, args.observe, Algorithm().nchannels) as telemetry:
            telemetry.mode = "checks"
            with report.console.status("measuring RTTs and DCI rates"):
                results = verify(tb, args.seconds)
            report.console.print(report.rtt_table(results["rtt"]))
            report.console.print(report.rate_table(results["dci_rate"]))
            if args.sweep_options:
                telemetry.mode = "all_reduce"
                sweep, lines = run_sweep(tb, args.sweep_options, Algorithm(), out, telemetry)
                results["all_reduce_check"] = [{"size_bytes": r.size_bytes, "wrong": r.wrong_elements,
                                                "ok": r.wrong_elements == 0} for r in sweep]
        params = {"topology": args.topology, "build_s": round(built_s, 2), "in_microvm": microvm.inside(),
                  **topology_params(args, type(topo))}
        report.save(out, params, results)
        tables = [f"{name}.csv" for name in results] + (["all_reduce-bound.csv"] if sweep else [])
        frame = nccl_tests.to_frame(sweep).assign(mode="") if sweep else None
        write_report(out, f"testbed run {args.topology}", args.argv, params, lines, frame, tables)
        if args.cli:
            tb.cli()
    off = [r for rows in results.values() for r in rows if not r["ok"]]
    if off:
        print(f"testbed: {len(off)} check(s) outside tolerance (see the tables above)", file=sys.stderr)
    return 1 if off else 0


def load_topology(spec: str) -> type[FabricTopo]:
    """A FabricTopo subclass from a topology name or a script path (via its Mininet-style ``topos`` dict)."""
    path = Path(spec) if spec.endswith(".py") else TOPOLOGY_DIR / f"{spec}.py"
    if not path.is_file():
        raise UsageError(f"unknown topology {spec!r} (available: {', '.join(available_topologies())})")
    module_spec = importlib.util.spec_from_file_location(f"topologies.{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    topos = getattr(module, "topos", {})
    candidates = [t for t in topos.values() if isinstance(t, type) and issubclass(t, FabricTopo)]
    if not candidates:
        raise UsageError(f"topology script {path} defines no FabricTopo in its 'topos' dict")
    return topos.get(path.stem, candidates[0])


def available_topologies() -> list[str]:
    return sorted(p.stem for p in TOPOLOGY_DIR.glob("*.py") if not p.stem.startswith("_"))


def topology_params(args, topo_cls: type[FabricTopo]) -> dict:
    """build() keywords from the flags and --param KEY=VALUE, refusing any the topology does not take."""
    given = {name: getattr(args, name) for name in TOPOLOGY_FLAGS if getattr(args, name) is not None}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {item!r} must look like KEY=VALUE")
        given[key.replace("-", "_")] = _number(key, value)
    accepted = _accepted_keywords(topo_cls)
    for key in given:
        if key not in accepted:
            raise UsageError(f"topology {topo_cls.__name__} takes no option {key!r} "
                             f"(it takes: {', '.join(sorted(accepted))})")
    if args.mtu is not None:
        given["mtu"] = args.mtu
    return given


def _accepted_keywords(topo_cls: type[FabricTopo]) -> set[str]:
    signature = inspect.signature(topo_cls.build)
    named = {p.name for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    if any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        named |= {f.name for f in fields(DciLink)} - {"a", "b", "distance_km", "bw_mbps"}
    return named


def _number(key: str, value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"--param {key}={value!r} is not a number") from None


def _topology_arg(spec: str) -> str:
    return str(Path(spec).resolve()) if spec.endswith(".py") else spec


def _without_positional(argv: list[str], topology: str) -> list[str]:
    rest = list(argv[argv.index("run") + 1:]) if "run" in argv else list(argv)
    if topology in rest:
        rest.remove(topology)
    if "--out" in rest:
        del rest[rest.index("--out"):rest.index("--out") + 2]
    return rest


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("must run as root (Mininet and tc need CAP_NET_ADMIN): use sudo")


def run_script(topo_cls: type[FabricTopo]) -> None:
    """``__main__`` of a topology script: the same as ``testbed run <this script> [options]``."""
    script = str(Path(inspect.getfile(topo_cls)).resolve())
    sys.exit(main(["run", script, *sys.argv[1:]]))


# -- perf --------------------------------------------------------------------------------------------------

def cmd_perf(args, argv: list[str]) -> int:
    topo_cls = load_topology(args.topology)
    topo = topo_cls(**topology_params(args, topo_cls))
    hosts = len(topo.nodes_with(role="host"))
    options = nccl_tests.parse_args(args.collective, args.nccl, nranks=hosts)  # exits 2 with nccl-tests' usage
    algorithm = algorithm_from(args)
    observe = observe_from(args, topo)
    out = (args.out or Path("results") / f"{args.collective}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    in_vm = _rerun_in_microvm_if_needed(args, argv, out)
    if in_vm is not None:
        return in_vm
    from testbed.network import Testbed
    from testbed.observe import observing
    tb = Testbed(topo)
    try:
        with report.console.status("building the fabric"):
            tb.start()
        with observing(tb, out, observe, algorithm.nchannels) as telemetry:
            results, lines = run_sweep(tb, options, algorithm, out, telemetry)
    finally:
        tb.stop()
    params = {"topology": args.topology, "collective": args.collective, "nccl_tests": " ".join(args.nccl),
              "channels": algorithm.nchannels, "chunk_bytes": algorithm.chunk_bytes,
              "hierarchical": algorithm.hierarchical, **topology_params(args, topo_cls)}
    write_report(out, f"{args.collective} across sites", argv, params, lines,
                 nccl_tests.to_frame(results).assign(mode=""), [f"{args.collective}-bound.csv"])
    return _exit_status(sum(r.wrong_elements for r in results))


def _rerun_in_microvm_if_needed(args, argv: list[str], out: Path) -> int | None:
    """For the commands that take ``--topology``: root is required; where this kernel cannot emulate links,
    re-run the same command line in a microVM (topology path absolute, results in ``out``) and return its
    exit status; None when the command should go on here."""
    _require_root()
    reason = microvm.needed()
    if reason is None:
        return None
    inner = [sys.executable, "-m", "testbed", *argv, "--topology", str(_topology_arg(args.topology)),
             "--out", str(out)]
    return _run_in_microvm(inner, out, reason)


def _run_in_microvm(inner: list[str], out: Path, reason: str) -> int:
    """Run the command in the microVM, then draw its report here (``report.render`` says why)."""
    status = microvm.run(inner, rwdirs=[out], reason=reason)
    if (out / "params.json").exists():
        report.say_report(out)
    return status


def _exit_status(wrong: int) -> int:
    """1 (and one line) if any collective result was wrong, else 0."""
    if wrong:
        print(f"testbed: {wrong} wrong elements (see #wrong above)", file=sys.stderr)
    return 1 if wrong else 0


def run_sweep(tb, options, algorithm: Algorithm, out: Path, telemetry) -> tuple[list, list[str]]:
    """Run the collective sweep on ``tb`` under the live view, printing nccl-tests' lines as they come; save
    CSV and Parquet.  Returns the results and the printed lines."""
    from testbed.collectives import bounds_beside, perf
    from testbed.live import LiveView

    lines = []
    measurements = 2 * options.measurements(len(tb.hosts()))
    with LiveView(report.console, telemetry, measurements, options.collective) as live:
        def answered(call: dict, answers: list[dict]) -> None:
            telemetry.on_answers(call, answers)
            live.advance()
        results = perf(tb, options, algorithm, print_line=report.recording(lines), telemetry_s=telemetry.interval_s,
                       on_answers=answered)
    bounds = bounds_beside(tb, options, algorithm, results)
    report.console.print(report.bound_table(options.collective, bounds))
    nccl_tests.save(nccl_tests.to_frame(results), out, options.collective)
    pd.DataFrame(bounds).to_csv(out / f"{options.collective}-bound.csv", index=False)
    return results, lines


def write_report(out: Path, title: str, argv: list[str], params: dict, lines: list[str], results, tables) -> None:
    """The results directory's HTML report (``testbed.html_report``), its path printed last."""
    report.save_page(out, title, " ".join(["testbed", *argv]), params, lines, results, tables)
    report.say_path("results", out)
    report.say_report(out)


# -- compare -----------------------------------------------------------------------------------------------

def cmd_compare(args, argv: list[str]) -> int:
    topo_cls = load_topology(args.topology)
    params = topology_params(args, topo_cls)
    accepted = _accepted_keywords(topo_cls)
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
    out = (args.out or Path("results") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    in_vm = _rerun_in_microvm_if_needed(args, argv, out)
    if in_vm is not None:
        return in_vm
    from testbed.compare import run_comparisons
    given = ", ".join(f"{k}={v:g}" for k, v in {**scenario, **params}.items() if isinstance(v, (int, float)))
    report.console.print(f"scenario: {given or 'topology defaults'}")
    run = run_comparisons(topo, options, algorithm, modes, distances, args.target_queue_ms, out, observe)
    run_params = {"topology": args.topology, "collective": args.collective,
                  "nccl_tests": " ".join(args.nccl or COMPARE_SWEEP.split()), "modes": ",".join(modes),
                  "distances_km": args.distances or "", "target_queue_ms": args.target_queue_ms or "derived",
                  "channels": algorithm.nchannels, "chunk_bytes": algorithm.chunk_bytes, **scenario, **params}
    write_report(out, f"{' vs '.join(modes)}: {args.collective} across sites", argv, run_params, run.lines,
                 run.results, run.tables)
    return _exit_status(run.wrong)


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


# -- analyze -----------------------------------------------------------------------------------------------

def cmd_analyze(args, argv) -> int:
    from testbed import analysis

    if not args.bin_ms > 0:
        raise UsageError(f"--bin-ms {args.bin_ms:g} must be > 0")
    if not args.results_dir.is_dir():
        raise UsageError(f"results directory {args.results_dir} does not exist")
    try:
        with report.console.status("reading the captures"):
            result = analysis.analyze(args.results_dir, bin_s=args.bin_ms / 1e3)
    except analysis.AnalysisError as error:
        raise UsageError(str(error)) from None
    telemetry = {name: _parquet_or_none(args.results_dir / "telemetry" / f"{name}.parquet")
                 for name in ("flows", "queues")}
    check = analysis.cross_check(result, telemetry["flows"], telemetry["queues"])
    analysis.save(result, check, args.results_dir / "analysis")
    report.console.print(report.frame_table("flows in the capture", _capture_summary(result.flows)))
    lines = analysis.disagreements(check)
    for line in lines:
        report.say(line)
    report.console.print(f"{len(lines)} of {len(check)} cross-checks of the capture against the run's telemetry "
                         "disagree" if lines else f"the capture agrees with the run's telemetry ({len(check)} checks)")
    report.say_path("analysis", args.results_dir.resolve() / "analysis")
    report.say_report(args.results_dir.resolve())
    return 0


def _parquet_or_none(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _capture_summary(flows: pd.DataFrame) -> pd.DataFrame:
    """The per-flow columns that fit a terminal."""
    columns = {"src": "src", "dst": "dst", "dqpn": "qp", "data_packets": "packets", "mbps": "Mbit/s",
               "ce_fraction": "CE frac", "cnps": "CNPs", "retransmitted": "retx", "owd_p50_ms": "owd p50",
               "owd_p99_ms": "owd p99"}
    return flows[[c for c in columns if c in flows]].rename(columns=columns).round(3)


# -- clean and doctor --------------------------------------------------------------------------------------

def cmd_clean(args, argv) -> int:
    _require_root()
    results = cleanup.clean()
    for r in results:
        done = r.get("skipped") or f"killed {r['processes']} processes, removed {r['namespaces']} namespaces"
        print(f"{r['record']}: {done}")
    if not results:
        print("nothing to clean")
    return 0


def cmd_doctor(args, argv) -> int:
    _require_root()
    found = kernel.capabilities()
    print(f"kernel {os.uname().release}")
    for kind, ok in found.items():
        print(f"  {kind:12} {'yes' if ok else 'no'}")
    reason = kernel.shortfall(found)
    if reason is None or microvm.inside():
        print("path: native (this kernel emulates links itself)")
    else:
        try:
            print(f"path: microVM ({microvm.kernel_image().name}, {microvm.accel().upper()}), because {reason}")
        except microvm.MicroVmError as error:
            print(f"path: none: {error}")
            return 1
    for tool in ("mnexec", "iperf3", "ping", "tcpdump", "tshark", "qemu-system-x86_64", "vng"):
        where = shutil.which(tool) or (str(Path(sys.executable).parent / tool)
                                       if (Path(sys.executable).parent / tool).exists() else None)
        print(f"  {tool:20} {where or 'MISSING'}")
    return 0
