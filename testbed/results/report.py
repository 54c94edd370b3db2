"""What a run leaves in its results directory: the tables as CSV, ``run.json``, the inputs of the HTML
report, and the report itself, drawn in a fresh interpreter (``testbed.results.html_report``)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from testbed.net import microvm
from testbed.net.processes import python_module
from testbed.results.console import console, say_path


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
    """What the HTML report (``testbed.results.html_report``) shows besides telemetry: ``params.json`` (title, the
    command line, parameters, the CSV tables to show), ``nccl-tests.txt`` as printed, ``results.parquet``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").write_text(json.dumps({"title": title, "command": command, "params": params,
                                                     "tables": tables}, indent=2, default=str))
    (out_dir / "nccl-tests.txt").write_text("".join(f"{line}\n" for line in nccl_lines))
    if results is not None:
        results.to_parquet(out_dir / "results.parquet", index=False)


class ReportError(RuntimeError):
    """Drawing the plots or writing the HTML page failed; the results themselves are saved."""


def render(out_dir: Path) -> Path | None:
    """Plots and ``report.html`` (``testbed.results.html_report``) drawn in a fresh interpreter, so a crash costs
    only the pictures, never a run's results; None inside the microVM, where the host draws them once the VM
    exits (``testbed.commands.options``): drawing needs no kernel and is ~30x faster natively than under TCG
    (where numpy's AVX2 sorts also crashed pandas until ``microvm`` switched them off)."""
    if microvm.inside():
        return None
    command = python_module("testbed.results.html_report", str(out_dir), options=("-X", "faulthandler"))
    done = subprocess.run(command, capture_output=True, text=True)
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
