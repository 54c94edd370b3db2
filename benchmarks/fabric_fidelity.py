#!/usr/bin/env python3
"""Benchmark (not a test): topology build time against host count, and RTT / rate error of every link.

    sudo .venv/bin/python benchmarks/fabric_fidelity.py [--hosts 2 4 8 16] [--distance-km 1000] [--seconds 3]

Builds two leaf-spine sites (hosts split evenly, 2 leaves and 2 spines per site) for each total host count,
then measures the site-pair RTT and the DCI goodput exactly as ``testbed run`` does.  Prints one table and
writes it as CSV to the results directory, so later changes can be compared with these numbers.  Where the
kernel cannot emulate links it runs itself inside the microVM, like the CLI.
"""

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from testbed.net import microvm
from testbed.results.console import console
from testbed.results.tables import frame_table
from testbed.topologies import load_topology

SHORT_NAMES = {"build_s": "build s", "teardown_s": "down s", "rtt_fixed_ms": "fixed ms", "rtt_min_ms": "RTT ms",
               "rtt_error_ms": "error ms", "rate_measured_mbps": "Mbit/s", "rate_error_pct": "error %"}


def measure(total_hosts: int, distance_km: float, seconds: float) -> dict:
    """Build, measure and tear down one fabric; one row of the table."""
    from testbed.experiments.checks import measure_dci_rate, measure_rtts
    from testbed.net.network import Testbed

    topo = load_topology("leaf_spine")(sites=2, hosts=total_hosts // 2, leaves=2, spines=2,
                                       distance_km=distance_km)
    started = time.monotonic()
    with Testbed(topo) as tb:
        built_s = time.monotonic() - started
        rtt = measure_rtts(tb)[0]
        rate = measure_dci_rate(tb, tb.topo.fabric.dci_links[0].name, seconds)
        measured = time.monotonic()
    return {"hosts": total_hosts, "nodes": len(topo.nodes()), "links": len(topo.links()),
            "build_s": round(built_s, 1), "teardown_s": round(time.monotonic() - measured, 1),
            "rtt_expected_ms": rtt.expected_ms, "rtt_fixed_ms": rtt.fixed_ms, "rtt_min_ms": rtt.min_ms,
            "rtt_error_ms": round(rtt.error_ms, 3), "rate_expected_mbps": rate.expected_mbps,
            "rate_measured_mbps": rate.measured_mbps, "rate_error_pct": round(rate.error_pct, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 4, 8, 16], help="total host counts (even)")
    parser.add_argument("--distance-km", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each rate measurement")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks").resolve())
    args = parser.parse_args()
    bad = [n for n in args.hosts if n < 2 or n % 2]
    if bad:
        parser.error(f"--hosts {bad[0]}: each count must be even and >= 2 (two sites)")
    in_vm = microvm.run_if_needed([sys.executable, *sys.argv], rwdirs=[args.out])
    if in_vm is not None:
        return in_vm
    rows = []
    for total in args.hosts:
        with console.status(f"{total} hosts: building and measuring"):
            rows.append(measure(total, args.distance_km, args.seconds))
        console.print(f"{total} hosts: built in {rows[-1]['build_s']} s")
    frame = pd.DataFrame(rows)
    shown = frame[["hosts", "nodes", *SHORT_NAMES]].rename(columns=SHORT_NAMES).round(2)
    console.print(frame_table(
        f"Fabric build time and fidelity, 2 sites, {args.distance_km:g} km DCI"
        f"{' (microVM, TCG)' if microvm.inside() and microvm.accel() == 'tcg' else ''}", shown))
    console.print(f"RTT expected {rows[0]['rtt_expected_ms']} ms + fixed cost (measured at 20 km); "
                         f"rate expected {rows[0]['rate_expected_mbps']} Mbit/s UDP goodput")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fabric_fidelity-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    frame.to_csv(path, index=False)
    console.print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
