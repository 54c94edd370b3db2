"""One self-contained HTML page per results directory: a run's plots, parameters, tables and raw output.

The page has to open anywhere on its own (mailed, attached to a ticket, copied off a lab machine), so its CSS
is inline, it has no JavaScript and fetches nothing: every plot is embedded as a data: URI, and still wrapped
in a link to its PNG in ``plots/`` so the page names each file it shows.  Everything read from the results
directory is HTML-escaped: titles, command lines and nccl-tests text contain ``<``, ``>`` and ``&``.
"""

from __future__ import annotations

import base64
import errno
import json
import math
from collections.abc import Sequence
from datetime import datetime
from html import escape
from pathlib import Path

import pandas as pd

from testbed.results.plots import write_plots

REPORT_NAME = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.85em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
tr.bad td { background: #fdd; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
.meta, .missing { color: #666; }
"""
SAMPLER_FIELDS = (  # sampler.json key, what it means, unit
    ("interval_ms", "sampling interval", "ms"),
    ("samples", "samples taken", ""),
    ("tick_ms_p50", "time to take one sample, median", "ms"),
    ("tick_ms_p99", "time to take one sample, p99", "ms"),
    ("cpu_pct", "CPU the sampler used", "%"),
    ("late_pct", "samples taken late", "%"),
)


def build_report(results_dir: Path) -> Path:
    """Write the plots and ``results_dir/report.html``; returns the page's path."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such results directory", str(results_dir))
    plots = write_plots(results_dir)
    meta = _read_json(results_dir / "params.json")
    title = str(meta.get("title") or f"results {results_dir.name}")
    sections = (_header(results_dir, meta, title), _answer_section(results_dir, meta),
                _plots_section(results_dir, plots), _params_section(meta),
                _tables_section(results_dir, meta.get("tables", [])), _nccl_tests_section(results_dir),
                _telemetry_section(results_dir), _crosscheck_section(results_dir))
    page = results_dir / REPORT_NAME
    page.write_text(_page(title, [section for section in sections if section]), encoding="utf-8")
    return page


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _page(title: str, sections: Sequence[str]) -> str:
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _section(heading: str, body: str) -> str:
    return f"<section>\n<h2>{escape(heading)}</h2>\n{body}\n</section>"


def _missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


def _cell(value) -> str:
    """A table cell's text: floats to 6 significant digits as the terminal tables print them, NaN blank."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _html_table(frame: pd.DataFrame, bad_rows: Sequence[bool] = ()) -> str:
    """``frame`` as an escaped HTML table; rows flagged in ``bad_rows`` are highlighted."""
    head = "".join(f"<th>{escape(str(column))}</th>" for column in frame.columns)
    rows = []
    for index, row in enumerate(frame.itertuples(index=False)):
        flag = ' class="bad"' if index < len(bad_rows) and bad_rows[index] else ""
        rows.append(f"<tr{flag}>" + "".join(f"<td>{escape(_cell(value))}</td>" for value in row) + "</tr>")
    body = "\n".join(rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _header(results_dir: Path, meta: dict, title: str) -> str:
    command = meta.get("command")
    command_line = f"<p><code>{escape(str(command))}</code></p>\n" if command else ""
    written = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return (f"<header>\n<h1>{escape(title)}</h1>\n{command_line}"
            f'<p class="meta">written {escape(written)} from {escape(str(results_dir.resolve()))}</p>\n</header>')


def _answer_section(results_dir: Path, meta: dict) -> str:
    """What the run found, first: the dilation, each ratio's verdict per size (a comparison), and whether
    every mode was faithful; rows that are not valid, or modes that were emulator-limited, highlighted."""
    parts = []
    dilation = (meta.get("params") or {}).get("dilation")
    if dilation is not None:
        parts.append(f"<p>dilation {escape(_cell(float(dilation)))}: the fabric ran that many times slower than "
                     "declared; every figure here is in declared time.</p>")
    ratios = results_dir / "compare-ratios.csv"
    if ratios.exists():
        frame = pd.read_csv(ratios)
        for mode in [c[:-len("_verdict")] for c in frame.columns if c.endswith("_verdict")]:
            shown = frame[["size_bytes", f"{mode}_x", f"{mode}_x_ci_low", f"{mode}_x_ci_high", f"{mode}_verdict"]]
            shown.columns = ["size B", "ratio", "95% low", "95% high", "verdict"]
            parts.append(f"<h3>{escape(mode)} against the reference</h3>\n"
                         + _html_table(shown, [not _is_ok(v) for v in frame[f"{mode}_valid"]]))
    fidelity = results_dir / "fidelity.csv"
    if fidelity.exists():
        frame = pd.read_csv(fidelity)[["mode", "verdict", "needed_dilation"]]
        parts.append("<h3>fidelity</h3>\n" + _html_table(frame, [v != "faithful" for v in frame["verdict"]]))
    return _section("answer", "\n".join(parts)) if parts else ""


def _value_text(value) -> str:
    """A parameter's value as the run recorded it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _params_section(meta: dict) -> str:
    params = meta.get("params")
    if params is None:
        return _section("parameters", _missing("no params.json (or no params in it) in this results directory"))
    frame = pd.DataFrame({"parameter": list(params), "value": [_value_text(v) for v in params.values()]})
    return _section("parameters", _html_table(frame))


def _embedded_plot(results_dir: Path, path: Path) -> str:
    """The PNG inline as a data: URI, inside a link to its file so the page also names it."""
    href = escape(path.relative_to(results_dir).as_posix())
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><a href="{href}"><img src="data:image/png;base64,{data}" alt="{escape(path.name)}"></a>'
            f'<figcaption><a href="{href}">{escape(path.name)}</a></figcaption></figure>')


def _plots_section(results_dir: Path, plots: Sequence[Path]) -> str:
    if not plots:
        return _section("plots", _missing("nothing to plot: no results or telemetry in this results directory"))
    return _section("plots", "\n".join(_embedded_plot(results_dir, path) for path in plots))


def _tables_section(results_dir: Path, names: Sequence[str]) -> str:
    """The CSV tables params.json lists, in its order; omitted when it lists none."""
    parts = []
    for name in names:
        path = results_dir / name
        table = _html_table(pd.read_csv(path)) if path.exists() else _missing(f"{name} is listed but missing")
        parts.append(f"<h3>{escape(name)}</h3>\n{table}")
    return _section("tables", "\n".join(parts)) if parts else ""


def _nccl_tests_section(results_dir: Path) -> str:
    path = results_dir / "nccl-tests.txt"
    if not path.exists():
        return _section("nccl-tests output", _missing("no nccl-tests.txt in this results directory"))
    return _section("nccl-tests output", f"<pre>{escape(path.read_text())}</pre>")


def _sampler_table(sampler: dict) -> str:
    rows = [(meaning, f"{sampler[key]:g} {unit}".strip()) for key, meaning, unit in SAMPLER_FIELDS
            if sampler.get(key) is not None]
    return _html_table(pd.DataFrame(rows, columns=["sampler", "value"]))


def _telemetry_section(results_dir: Path) -> str:
    """What the sampler recorded and what sampling cost (a late or CPU-hungry sampler skews what it shows)."""
    telemetry = results_dir / "telemetry"
    if not telemetry.is_dir():
        return _section("telemetry", _missing("no telemetry in this results directory"))
    recorded = ", ".join(sorted(path.name for path in telemetry.glob("*.parquet"))) or "no tables"
    sampler_path = telemetry / "sampler.json"
    sampler = (_sampler_table(_read_json(sampler_path)) if sampler_path.exists()
               else _missing("no sampler.json: sampling interval and overhead unknown"))
    return _section("telemetry", f"<p>recorded: {escape(recorded)}</p>\n{sampler}")


def _is_ok(value) -> bool:
    """The crosscheck's ok column, whether pandas read it as a bool or as text."""
    return str(value).strip().lower() in ("true", "1")


def _crosscheck_section(results_dir: Path) -> str:
    """The capture against the run's own counters, rows that disagree highlighted; omitted before analysis."""
    path = results_dir / "analysis" / "crosscheck.csv"
    if not path.exists():
        return ""
    checks = pd.read_csv(path)
    bad_rows = [not _is_ok(value) for value in checks["ok"]]
    summary = f"<p>{sum(bad_rows)} of {len(bad_rows)} checks disagree (highlighted).</p>\n"
    return _section("capture cross-check", summary + _html_table(checks, bad_rows))


if __name__ == "__main__":
    import sys

    print(build_report(Path(sys.argv[1])))
