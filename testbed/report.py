"""The tables a run prints and the files it leaves in the results directory."""

import json
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

console = Console()


def rtt_table(rows: list[dict]) -> Table:
    table = Table(title="RTT between sites (ping, first host of each site)")
    for column in ("sites", "expected ms", "min ms", "avg ms", "max ms", "error", "received"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['src_site']} -> {r['dst_site']}", f"{r['expected_ms']:.3f}", f"{r['min_ms']:.3f}",
                      f"{r['avg_ms']:.3f}", f"{r['max_ms']:.3f}", f"{r['error_pct']:+.1f} %",
                      f"{r['received']}/{r['sent']}")
    return table


def rate_table(rows: list[dict]) -> Table:
    table = Table(title="DCI rate (iperf3 UDP goodput, offered 1.2x the bottleneck)")
    for column in ("dci", "path", "configured Mbit/s", "expected goodput", "measured", "error"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["dci"], f"{r['src']} -> {r['dst']}", f"{r['configured_mbps']:g}",
                      f"{r['expected_mbps']:.2f}", f"{r['measured_mbps']:.2f}", f"{r['error_pct']:+.1f} %")
    return table


def save(out_dir: Path, params: dict, results: dict[str, list]) -> list[Path]:
    """results/<name>.csv per table plus run.json with the parameters and every number."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in results.items():
        path = out_dir / f"{name}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        written.append(path)
    path = out_dir / "run.json"
    path.write_text(json.dumps({"params": params, **results}, indent=2, default=str))
    return written + [path]
