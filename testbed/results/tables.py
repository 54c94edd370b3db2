"""The tables a run prints: the checks, the bound beside the measurement, the controller's discovery, any frame."""

import pandas as pd
from rich.table import Table

from testbed.results.console import compact_table


def _verdict(ok: bool | None) -> str:
    """ok, OFF, or (None) not measurable here: the probe could not drive what it checks on this host."""
    return "[yellow]not measurable[/]" if ok is None else "[green]ok[/]" if ok else "[red]OFF[/]"


def _mbps(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.2f}"


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
    """The rate checks; under the table, why each one not measurable here was not (``RateCheck.verdict``)."""
    table = compact_table("DCI rate, Mbit/s (iperf3 UDP goodput at 1.2x offered load)",
                          ("dci", "path", "link", "expected", "measured", "error", "reordered", ""))
    for r in rows:
        error = "-" if pd.isna(r["error_pct"]) else f"{r['error_pct']:+.1f} %"
        table.add_row(r["dci"], f"{r['src']}->{r['dst']}", f"{r['configured_mbps']:g}",
                      _mbps(r["expected_mbps"]), _mbps(r["measured_mbps"]), error,
                      str(r["out_of_order"]), _verdict(r["ok"]))
    table.caption = "\n".join(f"{r['dci']}: {r['verdict']}" for r in rows if r["ok"] is None) or None
    table.caption_justify = "left"
    return table


def frame_table(title: str, frame: pd.DataFrame) -> Table:
    """Any DataFrame as a compact table (benchmarks print theirs this way)."""
    table = compact_table(title, tuple(str(c) for c in frame.columns))
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:g}" if isinstance(v, float) else str(v) for v in row))
    return table


def bound_table(collective: str, rows: list[dict]) -> Table:
    """Measured (out of place) against the analytic bound of ``testbed.collective.bounds``, per size."""
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
