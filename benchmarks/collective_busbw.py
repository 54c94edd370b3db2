#!/usr/bin/env python3
"""Benchmark (not a test): all_reduce bus bandwidth against message size for several DCI distances.

    sudo .venv/bin/python benchmarks/collective_busbw.py [--distance-km 10 100 1000] [--sweep "-b 64K -e 4M -f 4"]
                                                         [--channels 1] [--hierarchical]

Builds the default two-site fabric once per distance, runs the nccl-tests-style sweep exactly as
``testbed perf all_reduce`` does, and prints one table (measured busbw and the analytic bound per size and
distance) and a PNG plot of busbw against size, one line per distance, with the bounds dashed.  Writes the
table as CSV beside the plot.  Where the kernel cannot emulate links it runs itself inside the microVM.
"""

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from testbed.collective import nccl_tests
from testbed.collective.runner import bounds_beside, perf
from testbed.collective.schedules.model import Algorithm
from testbed.net import microvm
from testbed.results.console import console
from testbed.results.tables import frame_table
from testbed.topologies import load_topology

DEFAULT_SWEEP = "-b 64K -e 4M -f 4 -n 3 -w 1"


def measure(distance_km: float, options: nccl_tests.Options, algorithm: Algorithm) -> list[dict]:
    """One fabric at ``distance_km``: the sweep's rows beside their bounds."""
    from testbed.net.network import Testbed

    with Testbed(load_topology("two_sites")(distance_km=distance_km)) as tb:
        results = perf(tb, options, algorithm, print_line=lambda line: None)
        rows = bounds_beside(tb, options, algorithm, results)
    return [dict(row, distance_km=distance_km, wrong=r.wrong_elements) for row, r in zip(rows, results)]


def plot(frame: pd.DataFrame, path: Path, title: str) -> None:
    """busbw against size, a solid line per distance and its bound dashed in the same colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for distance, rows in frame.groupby("distance_km"):
        line, = axes.plot(rows["size_bytes"], rows["busbw_gbps"] * 8e3, marker="o", label=f"{distance:g} km")
        axes.plot(rows["size_bytes"], rows["bound_busbw_gbps"] * 8e3, linestyle="--", color=line.get_color(),
                  label=f"{distance:g} km bound")
    axes.set(xscale="log", xlabel="message size (bytes)", ylabel="busbw (Mbit/s)", title=title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distance-km", type=float, nargs="+", default=[10.0, 100.0, 1000.0])
    parser.add_argument("--sweep", default=DEFAULT_SWEEP, help=f"nccl-tests options (default {DEFAULT_SWEEP!r})")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--hierarchical", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks").resolve())
    args = parser.parse_args()
    if any(d < 0 for d in args.distance_km):
        parser.error("--distance-km: distances must be >= 0")
    hosts = len(load_topology("two_sites")().nodes_with(role="host"))
    options = nccl_tests.parse_args("all_reduce", args.sweep.split(), nranks=hosts)
    algorithm = Algorithm(nchannels=args.channels, hierarchical=args.hierarchical)
    in_vm = microvm.run_if_needed([sys.executable, *sys.argv], rwdirs=[args.out])
    if in_vm is not None:
        return in_vm
    rows = []
    for distance in args.distance_km:
        with console.status(f"{distance:g} km: building, then the all_reduce sweep"):
            rows += measure(distance, options, algorithm)
        console.print(f"{distance:g} km: done")
    frame = pd.DataFrame(rows)
    shown = pd.DataFrame({"km": frame["distance_km"], "size B": frame["size_bytes"],
                          "time ms": (frame["time_us"] / 1e3).round(1),
                          "busbw Mb/s": (frame["busbw_gbps"] * 8e3).round(2),
                          "bound Mb/s": (frame["bound_busbw_gbps"] * 8e3).round(2),
                          "of bound %": frame["of_bound_pct"].round(1), "limited by": frame["limited_by"],
                          "wrong": frame["wrong"]})
    where = " (microVM, TCG)" if microvm.inside() and microvm.accel() == "tcg" else ""
    title = f"all_reduce busbw, 2 sites x 4 hosts{', hierarchical' if args.hierarchical else ''}{where}"
    console.print(frame_table(title, shown))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"collective_busbw-{time.strftime('%Y%m%d-%H%M%S')}"
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    plot(frame, stem.with_suffix(".png"), title)
    console.print(f"written: {stem}.csv, {stem}.png")
    return 1 if frame["wrong"].any() else 0


if __name__ == "__main__":
    sys.exit(main())
