#!/usr/bin/env python3
"""Benchmark (not a test): one declared scenario at k = auto / 2, auto and 2 x auto, side by side.

    sudo .venv/bin/python benchmarks/dilation.py [--sweep "-b 1M -e 4M -f 4 -n 3 -w 0"] [--km 10]
                                                 [--host-mbps 400000] [--dci-mbps 400000] [--hosts 2]

Builds the two-site fabric once, calibrates ``--dilation auto`` as a run does (``testbed.roce.budget``), then
runs the same all_reduce sweep at half that k, at it and at twice it (``testbed.experiments.invariance``):
per size the busbw, the completion time and the DCI's queueing delay in declared units, each one's
deviation from the largest k's, the fidelity verdict, and the wall time each k cost.  A faithful k agrees
with the larger ones within the run-to-run spread; a k too small shows as emulator-limited and drifts.
Writes the table as CSV.  Where the kernel cannot emulate links it runs itself inside the microVM.
"""

import argparse
import sys
import time
from pathlib import Path

from testbed.collective import nccl_tests
from testbed.collective.schedules.model import Algorithm
from testbed.experiments.invariance import deviations, measure_at
from testbed.model import dilation
from testbed.net import microvm
from testbed.results.console import console, say
from testbed.results.tables import frame_table
from testbed.roce.budget import measure as measure_budget
from testbed.roce.rocev2 import data_frame_bytes
from testbed.topologies import load_topology

DEFAULT_SWEEP = "-b 1M -e 4M -f 4 -n 3 -w 0"
SHORT = {"dilation": "k", "size_bytes": "size B", "busbw_gbps": "busbw GB/s", "busbw_gbps_dev_pct": "dev %",
         "time_us": "time us", "time_us_dev_pct": "dev %.", "queue_p50_ms": "queue p50 ms",
         "queue_p50_ms_dev_pct": "dev %..", "wall_s": "wall s", "verdict": "verdict"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=DEFAULT_SWEEP, help=f"nccl-tests options (default {DEFAULT_SWEEP!r})")
    parser.add_argument("--km", type=float, default=10.0, help="DCI length (default 10)")
    parser.add_argument("--hosts", type=int, default=2, help="hosts per site (default 2)")
    parser.add_argument("--host-mbps", type=float, default=400_000.0, help="host NIC rate, declared (default 400G)")
    parser.add_argument("--dci-mbps", type=float, default=400_000.0, help="DCI rate, declared (default 400G)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks").resolve())
    args = parser.parse_args()
    topo = load_topology("two_sites")(distance_km=args.km, hosts=args.hosts, host_bw_mbps=args.host_mbps,
                                      dci_bw_mbps=args.dci_mbps)
    ranks = len(topo.nodes_with(role="host"))
    options = nccl_tests.parse_args("all_reduce", args.sweep.split(), nranks=ranks)
    in_vm = microvm.run_if_needed([sys.executable, *sys.argv], rwdirs=[args.out])
    if in_vm is not None:
        return in_vm
    from testbed.net.network import Testbed

    with console.status(f"calibrating with {ranks} ranks"):
        found = measure_budget(ranks)
    auto = dilation.auto(found.packets_per_s, max(args.host_mbps, args.dci_mbps) * 1e6 / 8 / data_frame_bytes(),
                         late_p99_s=found.late_p99_s, shortest_rtt_s=topo.fabric.shortest_dci_rtt_ms() / 1e3)
    say(f"budget {found.packets_per_s:,.0f} packets/s per rank, {ranks} ranks, event-loop lateness p99 "
        f"{found.late_p99_s * 1e3:.3g} ms: auto k {auto:g}")
    runs = []
    with Testbed(topo, auto) as tb:
        for k in (max(1.0, auto / 2), auto, 2 * auto):
            with console.status(f"k {k:g}: all_reduce sweep"):
                runs.append(measure_at(tb, k, options, Algorithm()))
            say(f"k {k:g}: {runs[-1].verdict.line}; {runs[-1].wall_s:.0f} s")
    frame = deviations(runs)
    shown = frame[list(SHORT)].rename(columns=SHORT).map(lambda v: float(f"{v:.3g}") if isinstance(v, float) else v)
    where = " (microVM, TCG)" if microvm.inside() and microvm.accel() == "tcg" else ""
    console.print(frame_table(f"all_reduce, 2 sites x {args.hosts} hosts, {args.km:g} km, {args.host_mbps:g}/"
                              f"{args.dci_mbps:g} Mbit/s declared{where}; dev: from the largest k", shown))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dilation-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    frame.to_csv(path, index=False)
    console.print(f"written: {path}")
    return 1 if frame["wrong"].any() else 0


if __name__ == "__main__":
    sys.exit(main())
