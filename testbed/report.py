"""The tables a run prints and the files it leaves in the results directory."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from testbed import microvm

console = Console()


def compact_table(title: str, columns: tuple[str, ...]) -> Table:
    """A compact table that fits 80 columns (CI logs are not terminals)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    return table


def _verdict(ok: bool) -> str:
    return "[green]ok[/]" if ok else "[red]OFF[/]"


def rtt_table(rows: list[dict]) -> Table:
    table = compact_table("RTT between sites, ms (expected = propagation + fixed cost at 20 km)",
                          ("sites", "propag.", "fixed", "expected", "min", "avg", "max", "error", "rx", ""))
    for r in rows:
        table.add_row(f"{r['src_site']}-{r['dst_site']}", f"{r['expected_ms']:.3f}", f"{r['fixed_ms']:.3f}",
                      f"{r['expected_ms'] + r['fixed_ms']:.3f}", f"{r['min_ms']:.3f}", f"{r['avg_ms']:.2f}",
                      f"{r['max_ms']:.2f}", f"{r['error_ms']:+.3f}", f"{r['received']}/{r['sent']}",
                      _verdict(r["ok"]))
    return table


def rate_table(rows: list[dict]) -> Table:
    table = compact_table("DCI rate, Mbit/s (iperf3 UDP goodput at 1.2x offered load)",
                          ("dci", "path", "link", "expected", "measured", "error", "reordered", ""))
    for r in rows:
        table.add_row(r["dci"], f"{r['src']}->{r['dst']}", f"{r['configured_mbps']:g}",
                      f"{r['expected_mbps']:.2f}", f"{r['measured_mbps']:.2f}", f"{r['error_pct']:+.1f} %",
                      str(r["out_of_order"]), _verdict(r["ok"]))
    return table


def frame_table(title: str, frame: pd.DataFrame) -> Table:
    """Any DataFrame as a compact table (benchmarks print theirs this way)."""
    table = compact_table(title, tuple(str(c) for c in frame.columns))
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:g}" if isinstance(v, float) else str(v) for v in row))
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


def save_page(out_dir: Path, title: str, command: str, params: dict, nccl_lines: list[str],
              results: pd.DataFrame | None, tables: list[str]) -> None:
    """What the HTML report (``testbed.html_report``) shows besides telemetry: ``params.json`` (title, the
    command line, parameters, the CSV tables to show), ``nccl-tests.txt`` as printed, ``results.parquet``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").write_text(json.dumps({"title": title, "command": command, "params": params,
                                                     "tables": tables}, indent=2, default=str))
    (out_dir / "nccl-tests.txt").write_text("".join(f"{line}\n" for line in nccl_lines))
    if results is not None:
        results.to_parquet(out_dir / "results.parquet", index=False)


def say(line: str) -> None:
    """``line`` as it is: no markup, no highlighting, never folded (nccl-tests rows, paths to copy)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def recording(lines: list[str]):
    """A ``print_line`` that says each line and keeps it in ``lines`` (for the report's nccl-tests text)."""
    def say_and_keep(line: str) -> None:
        lines.append(line)
        say(line)
    return say_and_keep


def say_path(label: str, path: Path) -> None:
    """``label: path`` on one line whatever the width, so it can be copied."""
    say(f"{label}: {path}")


def render(out_dir: Path) -> Path | None:
    """Plots and ``report.html`` (``testbed.html_report``) drawn in a fresh interpreter, so a crash costs only
    the pictures, never a run's results; None inside the microVM, where the host draws them once the VM exits
    (``testbed.cli``): drawing needs no kernel and is ~30x faster natively than under TCG (where numpy's AVX2
    sorts also crashed pandas until ``microvm`` switched them off)."""
    if microvm.inside():
        return None
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "testbed.html_report", str(out_dir)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)  # with faulthandler, a crash's Python stack
        raise ReportError(f"the report of {out_dir} could not be drawn (exit status {done.returncode})")
    return Path(done.stdout.strip().splitlines()[-1])


def say_report(out_dir: Path) -> None:
    """Draw the report and print its path, or say who draws it."""
    path = render(out_dir)
    if path is None:
        console.print("report: drawn on the host once the microVM exits", highlight=False)
    else:
        say_path("report", path)


class ReportError(RuntimeError):
    """Drawing the plots or writing the HTML page failed; the results themselves are saved."""


def bound_table(collective: str, rows: list[dict]) -> Table:
    """Measured (out of place) against the analytic bound of ``testbed.bounds``, per size."""
    table = compact_table(f"{collective}: measured vs the bound from link rates and delays (out of place)",
                          ("size B", "time us", "bound us", "busbw GB/s", "bound GB/s", "of bound", "limited by"))
    for r in rows:
        table.add_row(str(r["size_bytes"]), f"{r['time_us']:.0f}", f"{r['bound_us']:.0f}", f"{r['busbw_gbps']:.4f}",
                      f"{r['bound_busbw_gbps']:.4f}", f"{r['of_bound_pct']:.0f} %", r["limited_by"])
    return table


def discovery_table(paths: list) -> Table:
    """What the fabric controller's probes found between sites."""
    table = compact_table("paths the controller measured (probes, not the topology file)",
                          ("from", "to", "border RTT ms", "host RTT ms", "bottleneck Mbit/s", "DCIs"))
    for p in paths:
        table.add_row(p.src_site, p.dst_site, f"{p.rtt_ms:.3f}", f"{p.host_rtt_ms:.3f}", f"{p.bottleneck_mbps:.2f}",
                      " ".join(f"{a}->{b}" for a, b in p.dcis))
    return table
