"""``testbed analyze RESULTS_DIR``: a run's captures turned into per-flow throughput, CE, CNPs,
retransmissions and one-way delay, cross-checked against the run's telemetry (no root, no VM)."""

import argparse
from pathlib import Path

import pandas as pd

from testbed.commands.options import UsageError, positive_finite
from testbed.results import report
from testbed.results.analysis import analyze, save
from testbed.results.console import console, say, say_path, stage
from testbed.results.crosscheck import cross_check, disagreements
from testbed.results.pcap import AnalysisError
from testbed.results.tables import frame_table

MAX_BIN_MS = 3_600_000.0  # an hour


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "analyze", help="derive per-flow throughput, CE, CNPs, retransmissions and delay from a run's captures",
        description="Reads RESULTS_DIR/capture (a run with --capture), cross-checks it against the run's "
                    "telemetry, writes RESULTS_DIR/analysis and refreshes the report.  Needs no root.")
    parser.add_argument("results_dir", type=Path, metavar="RESULTS_DIR")
    parser.add_argument("--bin-ms", type=float, default=100.0,
                        help="time bin of the throughput and event series (default 100)")
    parser.add_argument("--allow-truncated", action="store_true",
                        help="analyse a capture whose last records were cut off mid-write (default: refuse)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, argv: list[str]) -> int:
    positive_finite("--bin-ms", args.bin_ms, MAX_BIN_MS)
    if not args.results_dir.exists():
        raise UsageError(f"results directory {args.results_dir} does not exist")
    if not args.results_dir.is_dir():
        raise UsageError(f"results directory {args.results_dir} is a file, not a directory")
    try:
        with stage("reading the captures"):
            result = analyze(args.results_dir, bin_s=args.bin_ms / 1e3)
        say(result.reading.line())
        if result.reading.truncated and not args.allow_truncated:
            raise UsageError("the capture was cut off mid-write, so its last packets are missing; "
                             "--allow-truncated analyses the rest")
        telemetry = {name: _parquet_or_none(args.results_dir / "telemetry" / f"{name}.parquet")
                     for name in ("flows", "queues")}
        check = cross_check(result, telemetry["flows"], telemetry["queues"])
        save(result, check, args.results_dir / "analysis")
    except AnalysisError as error:
        raise UsageError(str(error)) from None
    console.print(frame_table("flows in the capture", _capture_summary(result.flows)))
    say(_verdict(check, result, telemetry["flows"] is not None))
    for line in disagreements(check):
        say(line)
    say_path("analysis", args.results_dir.resolve() / "analysis")
    report.say_report(args.results_dir.resolve())
    return 0


def _verdict(check: pd.DataFrame, result, has_telemetry: bool) -> str:
    """The cross-check in one line; with nothing compared it says why, never that the two agree."""
    if check.empty:
        why = ("the capture holds no RoCE packets" if result.packets.empty
               else "the run left no telemetry (RESULTS_DIR/telemetry)" if not has_telemetry
               else "no captured flow or queue has telemetry to compare with")
        return f"nothing to compare with the run's telemetry: {why}"
    bad = int((~check["ok"]).sum())
    if bad:
        return f"{bad} of {len(check)} cross-checks of the capture against the run's telemetry disagree"
    return f"the capture agrees with the run's telemetry ({len(check)} checks)"


def _parquet_or_none(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _capture_summary(flows: pd.DataFrame) -> pd.DataFrame:
    """The per-flow columns that fit a terminal."""
    columns = {"src": "src", "dst": "dst", "dqpn": "qp", "data_packets": "packets", "mbps": "Mbit/s",
               "ce_fraction": "CE frac", "cnps": "CNPs", "retransmitted": "retx", "owd_p50_ms": "owd p50",
               "owd_p99_ms": "owd p99"}
    return flows[[c for c in columns if c in flows]].rename(columns=columns).round(3)
