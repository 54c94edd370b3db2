"""What the commands share: the topology, observation and algorithm options, their checks, the results
directory, the move into the microVM and the report at the end.

Every check here runs before anything is built (and before a microVM boots): a bad value is one line naming
the option, exit status 2 (``UsageError``, or ``TopologyError`` from the fabric model).
"""

import argparse
import contextlib
import functools
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from controllers.dcqcn import slow_fabric_note
from testbed.collective import nccl_tests
from testbed.collective.schedules.model import Algorithm
from testbed.experiments.discovery import SitePath, discover
from testbed.experiments.modes import MODES, lookup
from testbed.model import dilation
from testbed.model.fabric import LinkConfig
from testbed.net import microvm
from testbed.net.network import Testbed, check_emulable
from testbed.net.processes import python_module
from testbed.net.topo import FabricTopo
from testbed.observe.capture import DEFAULT_MAX_MB, HEADERS_SNAPLEN, RING_FILES, WHOLE
from testbed.observe.observing import Observe
from testbed.observe.telemetry import SCOPES
from testbed.results import report
from testbed.results.console import console, say, stage
from testbed.results.tables import discovery_table
from testbed.roce import budget
from testbed.roce.rocev2 import data_frame_bytes
from testbed.topologies import DEFAULT_TOPOLOGY, accepted_keywords, load_topology, script_path

MIN_SNAPLEN = 74  # Ethernet, IPv4, UDP, BTH and the transport header with its send timestamp
MAX_SNAPLEN = 262_144  # tcpdump's MAXIMUM_SNAPLEN; past the links' largest frame, a snaplen keeps that frame
# CLI flag -> build() keyword: the sizes and rates the topologies take, then every DCI link setting
# (LinkConfig's fields but the rate, which --dci-bw-mbps gives); each is passed only if given, and only if the
# topology takes it
TOPOLOGY_FLAGS = {
    "distance_km": float, "sites": int, "hosts": int, "leaves": int, "spines": int, "senders": int, "receivers": int,
    "host_bw_mbps": float, "fabric_bw_mbps": float, "dci_bw_mbps": float,
    **{f.name: int if f.type == int | None else float for f in fields(LinkConfig) if f.name != "bw_mbps"},
}


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line and the exit status is 2."""


def positive_finite(option: str, value: float, most: float, unit: str = "") -> float:
    """``value`` when it is a number > 0 and at most ``most`` (nan and inf are not); else UsageError naming
    ``option``: argparse's ``float`` takes "nan", "inf" and "1e12", which failed only after the build."""
    if not 0 < value <= most:
        raise UsageError(f"{option} {value:g} must be > 0 and at most {most:g}{unit}")
    return value


# -- the topology -------------------------------------------------------------------------------------------

def add_topology_options(parser: argparse.ArgumentParser) -> None:
    topo = parser.add_argument_group("topology options (passed to the topology's build)")
    topo.add_argument("--topology", help="a name from topologies/ or a path to a topology script "
                                         f"(default {DEFAULT_TOPOLOGY})")
    for name, kind in TOPOLOGY_FLAGS.items():
        topo.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, metavar=kind.__name__.upper())
    topo.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="any other keyword of the topology's build(), e.g. --param west_south_km=2000")
    topo.add_argument("--mtu", type=int, help="link MTU (default 9000)")
    topo.add_argument("--dilation", default="auto", metavar="K|auto",
                      help="run the declared fabric K times slower, every figure reported in declared time (1: real "
                           "time; auto, the default: measure this host's packet rate and timer lateness, then pick K)")
    parser.add_argument("--out", type=Path, help="results directory (default results/<name>-<time>)")


def topology_class(args) -> type[FabricTopo]:
    """The topology the options name (``--topology``, default two_sites)."""
    return load_topology(args.topology or DEFAULT_TOPOLOGY)


def topology_params(args, topo_cls: type[FabricTopo]) -> dict:
    """build() keywords from the flags and --param KEY=VALUE, refusing any the topology does not take."""
    given = {name: getattr(args, name) for name in TOPOLOGY_FLAGS if getattr(args, name) is not None}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {item!r} must look like KEY=VALUE")
        given[key.replace("-", "_")] = _number(key, value)
    accepted = accepted_keywords(topo_cls)
    for key in given:
        if key not in accepted:
            raise UsageError(f"topology {topo_cls.__name__} takes no option {key!r} "
                             f"(it takes: {', '.join(sorted(accepted))})")
    if args.mtu is not None:
        given["mtu"] = args.mtu
    return given


def resolve_dilation(args, topo: FabricTopo, rate_scale: float = 1.0) -> float:
    """The run's k: ``--dilation`` as given (times ``rate_scale``, for a fabric whose rates were scaled so, at
    least 1), or for auto the k at which the busiest link needs at most 30 % of the packets/s the transport
    sustains here with as many ranks as will run, and the event loop's lateness there stays within a tenth
    of the shortest RTT between sites (both measured once, where the fabric runs: natively or inside the
    microVM; ``testbed.model.dilation.auto``).  Says which and why in one line."""
    given = dilation_from(args)
    if given is not None:
        return max(1.0, given * rate_scale)
    ranks = len(topo.nodes_with(role="host"))
    found = measured_budget(ranks)
    (a, b), mbps, needed_pps = budget.busiest_link(topo)
    rtt_ms = topo.fabric.shortest_dci_rtt_ms()
    try:
        k = dilation.auto(found.packets_per_s, needed_pps, late_p99_s=found.late_p99_s,
                          shortest_rtt_s=None if rtt_ms is None else rtt_ms / 1e3)
    except ValueError:
        raise UsageError(f"--dilation auto: link {a}-{b} at {mbps:g} Mbit/s needs {needed_pps:,.0f} packets/s, "
                         f"more than {dilation.MAX_DILATION:g} x this host's {found.packets_per_s:,.0f}: "
                         "give a smaller rate") from None
    say(f"# dilation auto: {found.packets_per_s:,.0f} packets/s per rank here ({ranks} ranks at once); the "
        f"busiest link, {a}-{b} at {mbps:g} Mbit/s, needs {needed_pps:,.0f}/s of {data_frame_bytes()} B frames; "
        f"k {k:g} keeps it at {needed_pps / k / found.packets_per_s:.0%} of the budget"
        + ("" if rtt_ms is None else
           f" and the event loop's lateness ({found.late_p99_s * 1e3:.3g} ms at p99, x{dilation.LATE_MARGIN:g}) at "
           f"{dilation.LATE_MARGIN * found.late_p99_s / (rtt_ms / 1e3 * k):.0%} of the {rtt_ms:.3g} ms RTT (at "
           f"most {dilation.MAX_LATE_RTT:.0%})"))
    return k


@functools.cache
def measured_budget(ranks: int) -> budget.Budget:
    """The transport's packets/s per rank here and its event loop's lateness, ``ranks`` at once
    (``testbed.roce.budget``), once per process."""
    with stage(f"calibrating: the transport's packet rate and timers with {ranks} ranks at once"):
        return budget.measure(ranks)


def check_dilation(args, topo: FabricTopo) -> None:
    """``--dilation`` checked before anything starts: a number, at which the kernel can hold every link of
    ``topo``; auto at real time here (what does not depend on k: buffers, thresholds) and again once
    calibrated, still before anything is built."""
    given = dilation_from(args)
    check_emulable(topo, 1.0 if given is None else given)


def dilation_from(args) -> float | None:
    """``--dilation``: a k (checked), or None for auto (calibrated where the fabric will run)."""
    if args.dilation == "auto":
        return None
    try:
        return dilation.check(float(args.dilation))
    except ValueError:
        raise UsageError(f"--dilation {args.dilation!r} must be auto or a number from 1 (real time) to "
                         f"{dilation.MAX_DILATION:g}") from None


def _number(key: str, value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"--param {key}={value!r} is not a number") from None


# -- observation and the collective algorithm --------------------------------------------------------------

def add_observe_options(parser: argparse.ArgumentParser) -> None:
    obs = parser.add_argument_group("telemetry and packet captures (see testbed analyze)")
    obs.add_argument("--telemetry-ms", type=float, default=Observe.interval_s * 1e3, metavar="MS",
                     help=f"sampling interval of queues, links and flows (default {Observe.interval_s * 1e3:g})")
    obs.add_argument("--telemetry-scope", choices=SCOPES, default=Observe.scope,
                     help="queues sampled: the border routers' (dci, default) or every node's (all)")
    obs.add_argument("--capture", action="store_true",
                     help="record pcaps of --capture-links (whole packets, ring-rotated) in RESULTS/capture")
    obs.add_argument("--capture-links", default="dci", metavar="dci|A-B,C-D",
                     help="the links to capture: every DCI link (default) or node pairs, e.g. westb-eastb,wests1-westb")
    obs.add_argument("--snaplen", type=int, default=WHOLE,
                     help=f"bytes kept per packet (default {WHOLE}: whole packets, which Wireshark decodes; "
                          f"{HEADERS_SNAPLEN}: headers only, 1/29 of the disk, data packets shown as malformed)")
    obs.add_argument("--capture-max-mb", type=int, default=DEFAULT_MAX_MB,
                     help=f"disk the capture may use at most, as a ring of {RING_FILES} files per link "
                          f"(default {DEFAULT_MAX_MB})")


MAX_TELEMETRY_MS = 60_000.0  # a sample a minute: any coarser and a run has no time series left


def observe_from(args, topo: FabricTopo) -> Observe:
    """The --telemetry/--capture options checked against the topology before anything is built."""
    positive_finite("--telemetry-ms", args.telemetry_ms, MAX_TELEMETRY_MS)
    links = _capture_links(args, topo) if args.capture else None
    return Observe(args.telemetry_ms / 1e3, args.telemetry_scope, args.capture, links, args.snaplen,
                   args.capture_max_mb)


def _capture_links(args, topo: FabricTopo) -> tuple[tuple[str, str], ...] | None:
    """The links --capture records (None: every DCI), checked with --snaplen and --capture-max-mb only when a
    capture is asked for: ``leaf_spine --sites 127`` without one was refused for its ring size."""
    if not (args.snaplen == 0 or MIN_SNAPLEN <= args.snaplen <= MAX_SNAPLEN):
        raise UsageError(f"--snaplen {args.snaplen} must be 0 (whole packets) or from {MIN_SNAPLEN} (the RoCE "
                         f"headers) to {MAX_SNAPLEN}")
    links = None if args.capture_links == "dci" else tuple(_link_pair(topo, p) for p in args.capture_links.split(","))
    if args.capture_max_mb < RING_FILES * len(links or topo.dci_link_names()):
        raise UsageError(f"--capture-max-mb {args.capture_max_mb} leaves less than 1 MB per ring file "
                         f"({RING_FILES} files per captured link)")
    return links


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


# NCCL's own cap on nChannels (MAXCHANNELS, 32 then 64 in its device.h); each channel is a queue pair per peer
# and direction in every rank, so --channels 1000000 would open millions of them after the build
MAX_CHANNELS = 64


def algorithm_from(args) -> Algorithm:
    if not 1 <= args.channels <= MAX_CHANNELS:
        raise UsageError(f"--channels {args.channels} must be from 1 to {MAX_CHANNELS}")
    try:
        chunk = nccl_tests.parsesize(args.chunk)
    except ValueError as error:
        raise UsageError(f"--chunk {args.chunk!r}: {error}") from None
    if chunk < 1:
        raise UsageError(f"--chunk {args.chunk!r} must be at least 1 byte")
    return Algorithm(nchannels=args.channels, chunk_bytes=chunk, hierarchical=args.hierarchical)


def modes_from(spec: str) -> list[str]:
    """``--modes``: comma-separated names of ``testbed.experiments.modes`` (``adaptive:MECHANISM+...`` too), the
    first the reference."""
    modes = [m.strip() for m in spec.split(",") if m.strip()]
    if not modes:
        raise UsageError(f"--modes {spec!r}: no mode given (modes: {', '.join(MODES)})")
    for mode in modes:
        try:
            lookup(mode)
        except ValueError as error:
            raise UsageError(f"--modes {spec!r}: {error}") from None
    return modes


DEFAULT_REPEATS, MAX_REPEATS = 3, 100


def add_repeat_option(parser: argparse.ArgumentParser, reported: str) -> None:
    """``--repeat N``: run the modes N times, interleaved, and report ``reported``."""
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEATS, metavar="N",
                        help=f"run the modes N times, interleaved, and {reported.replace('%', '%%')} (default "
                             f"{DEFAULT_REPEATS})")


def check_repeat(args) -> None:
    if not 1 <= args.repeat <= MAX_REPEATS:
        raise UsageError(f"--repeat {args.repeat} must be from 1 to {MAX_REPEATS}")


def note_slow_nics(topo: FabricTopo) -> None:
    """Say so when the declared NICs are slower than any that ships the baseline's DCQCN firmware defaults."""
    slowest = min(site.host_link.bw_mbps for site in topo.fabric.sites) * 1e6
    note = slow_fabric_note(slowest)
    if note:
        say(note)


def probe_fabric(tb) -> list[SitePath]:
    """The controller's paths, probed as a stage the user sees and printed as a table."""
    with stage("probing the fabric: RTT and bottleneck rate between every pair of sites"):
        paths = discover(tb)
    console.print(discovery_table(paths))
    return paths


# -- where a command runs and what it leaves ------------------------------------------------------------------

def results_dir(args, name: str) -> Path:
    """``--out``, or ``results/<name>-<time>``, absolute (the microVM gets the same path); UsageError, before
    anything is built, when it could not be written: a file, under a file, or in a place this user cannot
    create it.  Nothing is created here, so a refused run leaves no empty directory."""
    out = (args.out or Path("results") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    existing = next(parent for parent in (out, *out.parents) if parent.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing} is not writable")
    return out


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("must run as root (Mininet and tc need CAP_NET_ADMIN): use sudo")


def rerun_in_microvm_if_needed(args, argv: list[str], out: Path, positional: str | None = None,
                               interactive: bool = False) -> int | None:
    """Root is required; where this kernel cannot emulate links, re-run the same command line in a microVM
    (the topology as an absolute ``--topology``, ``positional`` -- a topology given as ``run``'s argument --
    left out, results in ``out``), draw its report here, and return its exit status; None when the command
    should go on here.  An ``interactive`` command (``--cli``) needs a terminal, and in the VM runs on its
    console, joined to ours."""
    require_root()
    if interactive and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("--cli needs a terminal: standard input or output is not one")
    reason = microvm.needed()
    if reason is None:
        return None
    rest = list(argv)
    if positional is not None:
        rest.remove(positional)
    topology = args.topology or DEFAULT_TOPOLOGY
    topology = str(script_path(topology).resolve()) if topology.endswith(".py") else topology
    inner = python_module("testbed", *rest, "--topology", topology, "--out", str(out))
    status = microvm.run(inner, rwdirs=[out], reason=reason, console=interactive)
    if (out / "params.json").exists():
        report.say_report(out)  # drawn here: see report.render
    return status


def write_report(out: Path, title: str, argv: list[str], params: dict, lines: list[str], results, tables) -> None:
    """The results directory's HTML report (``testbed.results.html_report``), its path printed last."""
    report.save_page(out, title, " ".join(["testbed", *argv]), params, lines, results, tables)
    report.say_path("results", out)
    report.say_report(out)


def exit_status(wrong: int) -> int:
    """1 (and one line) if any collective result was wrong, else 0."""
    if wrong:
        print(f"testbed: {wrong} wrong elements (see #wrong above)", file=sys.stderr)
    return 1 if wrong else 0


@contextlib.contextmanager
def fabric(topo: FabricTopo, dilation: float):
    """``topo`` built at ``dilation`` as a stage the user sees (node by node, link by link), the running
    ``Testbed`` yielded, and torn down whatever happens."""
    tb = Testbed(topo, dilation)
    try:
        with stage("building the fabric") as progress:
            tb.start(progress)
        yield tb
    finally:
        tb.stop()
