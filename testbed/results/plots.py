"""PNG plots of a results directory: what the DCI queues, the flows and the collective did during a run.

Each plot function takes the frames it needs and the PNG path to write, and returns that path, or None when
its data is absent or empty (nothing is written then), so a run that recorded less still gets the plots it can.
``write_plots`` loads whatever a results directory holds and writes into its ``plots/`` folder.

Figures are ``matplotlib.figure.Figure`` objects rather than pyplot's: a library should not pick the process's
backend, and pyplot's registry would keep every figure alive until closed; these are freed once written.

Time is ``t_s``, declared seconds since the run's t0.  In a comparison the modes run one after another on
that one axis, and the ranks (with their queue-pair counters) restart with each mode, so every series here is
one mode's: lines never join across a mode change and counters are never differenced across one.

On a dilated run (``testbed.model.dilation``, the run's ``dilation`` k in params.json) a declared second is k
seconds of the emulator's: a 400 Gbit/s sweep lasts milliseconds, declared.  So each axis shows time in the
unit that reads best (s, ms or us), and the bins that goodput and CNPs are counted in are ``EVENT_BIN_S`` of
wall time (what the samplers resolve), i.e. ``EVENT_BIN_S / k`` declared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

PLOTS_DIR = "plots"
MAX_LEGIBLE_FLOWS = 8  # above this many flows, only the cross-site ones are drawn
MAX_SIZE_TICKS = 12
LEGEND_ROWS = 16  # entries per legend column: more would run off the bottom of a two-axes figure
DPI = 110
FLOW_KEYS = ["rank", "peer", "channel", "sqpn"]  # one queue-pair end within a mode
FLOW_LABEL_KEYS = ["rank", "peer", "channel"]  # the same flow in every mode (its QP number changes)
QUEUE_KEYS = ["node", "peer", "intf"]  # one egress queue
CAPTURE_FLOW_KEYS = ["src", "dst", "dqpn", "intf"]  # one queue pair as seen on one captured interface
TIME_UNITS = ((1.0, "s"), (1e3, "ms"), (1e6, "us"))  # the first whose numbers reach 1 shows a span
LEAD_S = 1.0  # queue plots start this long (wall time) before the ranks' first sample
DODGE = 1.06  # the ablation's modes sit this factor apart along its log distance axis
EVENT_BIN_S = 0.1  # CNPs (summed over the senders) and goodput per bin of this width (wall time)


# --- numbers --------------------------------------------------------------------------------------------

def human_size(size_bytes: float) -> str:
    """``size_bytes`` as nccl-tests' -b and -e take it (64K, 1M, 1.5G: powers of 1024), plain bytes below 1K."""
    for suffix, scale in (("G", 1024 ** 3), ("M", 1024 ** 2), ("K", 1024)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:g}{suffix}"
    return f"{size_bytes:g}"


def interval_deltas(frame: pd.DataFrame, keys: Sequence[str], column: str) -> pd.Series:
    """How much cumulative ``column`` grew since the previous sample of the same series, aligned to ``frame``.

    A series is one ``keys`` value within one mode: counters restart with the ranks when the mode changes, so
    a difference across the change would be meaningless (usually hugely negative).  The first sample of every
    series has no predecessor, and a counter that went down was restarted: both give NaN, not a number.
    """
    ordered = frame.sort_values("t_s", kind="stable")
    deltas = ordered.groupby(["mode", *keys], sort=False, dropna=False)[column].diff()
    return deltas.where(deltas >= 0).reindex(frame.index)


def time_unit(t_s: pd.Series) -> tuple[float, str]:
    """(scale, name) of the unit that shows the times ``t_s`` span with numbers of at least 1: s, ms or us."""
    span = float(t_s.max() - t_s.min()) if len(t_s) else 0.0
    return next(((scale, name) for scale, name in TIME_UNITS if span * scale >= 1), TIME_UNITS[-1])


def _in_unit(frame: pd.DataFrame, scale: float) -> pd.DataFrame:
    """``frame`` with ``t_s`` in the display unit (the column keeps its name: spans and lines use it)."""
    return frame.assign(t_s=frame["t_s"] * scale)


def _time_label(name: str) -> str:
    return f"time since run start ({name}, declared)"


def _per(bin_s: float, name: str, scale: float) -> str:
    """A bin's width in the axis's unit, e.g. "per 0.05 ms"."""
    return f"per {bin_s * scale:.3g} {name}"


def bin_start(t_s: pd.Series, bin_s: float) -> pd.Series:
    """The start of the ``bin_s``-wide bin each time falls in (1e-9 absorbs float error: 0.3 / 0.1 < 3)."""
    return np.floor(t_s / bin_s + 1e-9) * bin_s


def goodput_mbps(senders: pd.DataFrame, bin_s: float = EVENT_BIN_S) -> pd.DataFrame:
    """Acknowledged payload per flow and time bin, in Mbit/s (columns ``mode``, the flow keys, ``t_s`` = bin
    start, ``goodput_mbps``).  Binned, not per sample: after a loss recovery one cumulative ACK covers many
    packets, so a 10 ms difference would spike far above the line rate."""
    acked = senders.assign(acked=interval_deltas(senders, FLOW_KEYS, "bytes_acked"),
                           t_s=bin_start(senders["t_s"], bin_s))
    binned = acked.groupby(["mode", *FLOW_KEYS, "t_s"], sort=True, as_index=False, dropna=False)["acked"].sum()
    return binned.assign(goodput_mbps=binned.pop("acked") * 8 / bin_s / 1e6)


def mode_spans(frame: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(mode, first t_s, last t_s) of each named mode in the order they ran.

    Samples outside any mode (mode "": a single run, or a comparison's probing before its first mode) have no
    span to mark.
    """
    named = frame[frame["mode"] != ""]
    spans = named.groupby("mode", sort=False)["t_s"].agg(["min", "max"]).sort_values("min")
    return [(str(mode), float(start), float(end)) for mode, start, end in spans.itertuples()]


def cross_site(src: str, dst: str) -> bool:
    """Whether two testbed addresses (10.<site>.x.y) are in different sites."""
    return src.split(".")[1] != dst.split(".")[1]


def legible_flows(frame: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """``frame`` cut to its cross-site flows when it has more than MAX_LEGIBLE_FLOWS, and a title note saying so.

    Forty overlapping lines show nothing; the flows that cross a DCI are the ones a long-haul study is about.
    """
    total = frame.groupby(list(keys)).ngroups
    if total <= MAX_LEGIBLE_FLOWS:
        return frame, ""
    crossing = frame[[cross_site(src, dst) for src, dst in zip(frame["src"], frame["dst"])]]
    return crossing, f" (cross-site flows only: {crossing.groupby(list(keys)).ngroups} of {total})"


# --- drawing --------------------------------------------------------------------------------------------

def _absent(frame: pd.DataFrame | None) -> bool:
    return frame is None or frame.empty


def _dci_queues(queues: pd.DataFrame | None) -> pd.DataFrame:
    """The DCI egress queues' rows (intra-site queues have no dci), in time order."""
    if _absent(queues):
        return pd.DataFrame()
    return queues[queues["dci"].notna()].sort_values("t_s", kind="stable")


def _senders(flows: pd.DataFrame | None) -> pd.DataFrame:
    """The sender ends' rows of the flow telemetry, in time order."""
    if _absent(flows):
        return pd.DataFrame()
    return flows[flows["side"] == "sender"].sort_values("t_s", kind="stable")


def _figure(rows: int) -> tuple[Figure, list[Axes]]:
    """A figure of ``rows`` stacked axes sharing x; constrained layout leaves room for outside legends.

    Y ticks get no offset: a steady rate would otherwise read "1e-11+2e1" from floating-point noise.
    """
    figure = Figure(figsize=(10, 1.6 + 2.6 * rows), layout="constrained")
    axes_column = list(figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0])
    for axes in axes_column:
        axes.yaxis.get_major_formatter().set_useOffset(False)
    return figure, axes_column


def _colors(count: int) -> list:
    """Distinct colours for ``count`` lines: tab10 while it lasts, tab20 beyond."""
    palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


def _plot_series(axes: Axes, rows: pd.DataFrame, column: str, label: str, color) -> None:
    """One line per mode of a time series, in one colour and labelled once, so no line joins two modes."""
    segments = rows.groupby("mode", sort=False) if "mode" in rows else [(None, rows)]
    for index, (_, segment) in enumerate(segments):
        axes.plot(segment["t_s"], segment[column], color=color, linewidth=1.2, label=label if index == 0 else None)


def _plot_lines(axes: Axes, frame: pd.DataFrame, keys: Sequence[str], column: str,
                label_of: Callable[[tuple], str]) -> None:
    """One coloured series of ``column`` over time per ``keys`` value (same keys, same colour on every axes)."""
    groups = list(frame.groupby(list(keys)))
    for color, (key, rows) in zip(_colors(len(groups)), groups):
        _plot_series(axes, rows, column, label_of(key), color)


def _mark_modes(axes_column: Sequence[Axes], spans: list[tuple[str, float, float]]) -> None:
    """Shade each mode's time span (alternately darker) and name it at the top, so the modes read apart."""
    top = axes_column[0]
    for index, (mode, start, end) in enumerate(spans):
        for axes in axes_column:
            axes.axvspan(start, end, color="0.5", alpha=0.15 if index % 2 == 0 else 0.06, linewidth=0)
        top.text(start, 0.98, f" {mode}", transform=top.get_xaxis_transform(), va="top", fontsize="small",
                 fontweight="bold")


def _legend(axes: Axes) -> None:
    """The legend beside the axes, where it hides no data, in columns of at most LEGEND_ROWS entries."""
    entries = len(axes.get_legend_handles_labels()[1])
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False,
                ncols=max(1, math.ceil(entries / LEGEND_ROWS)))


def _say_missing(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center", color="0.4")


def _save(figure: Figure, path: Path) -> Path:
    """Write the PNG with every y axis from zero: all quantities here are non-negative, and read honestly so.

    The headroom keeps a steady line (a flow paced at a constant rate) off the top frame, where it would hide.
    """
    for axes in figure.axes:
        top = axes.get_ylim()[1]
        axes.set_ylim(0, top * 1.08 if top > 0 else 1)
    figure.savefig(path, dpi=DPI)
    return Path(path)


def _queue_label(key: tuple) -> str:
    node, peer, intf = key
    return f"{node}->{peer} ({intf})"


def _flow_label(key: tuple) -> str:
    rank, peer, channel = key
    return f"rank {rank:g} -> peer {peer:g} (ch {channel:g})"


def _capture_label(key: tuple) -> str:
    src, dst, dqpn, intf = key
    return f"{src} -> {dst} qp {dqpn} @ {intf}"


# --- plots ----------------------------------------------------------------------------------------------

def plot_dci_queue_delay(queues: pd.DataFrame | None, path: Path) -> Path | None:
    """Queueing delay of every DCI egress over time: where a long-haul collective waits."""
    dci = _dci_queues(queues)
    if dci.empty:
        return None
    scale, unit = time_unit(dci["t_s"])
    dci = _in_unit(dci, scale).assign(queue_delay=dci["queue_delay_ms"] / 1e3 * scale)
    figure, (axes,) = _figure(1)
    _plot_lines(axes, dci, QUEUE_KEYS, "queue_delay", _queue_label)
    _mark_modes([axes], mode_spans(dci))
    axes.set(xlabel=_time_label(unit), ylabel=f"queueing delay ({unit}, declared)", title="DCI egress queueing delay")
    _legend(axes)
    return _save(figure, path)


def plot_flow_rate(flows: pd.DataFrame | None, path: Path, dilation: float = 1.0) -> Path | None:
    """Each sender's pacing rate (what congestion control allowed) above its goodput (what got acknowledged)."""
    senders = _senders(flows)
    if senders.empty:
        return None
    senders, note = legible_flows(senders, FLOW_LABEL_KEYS)
    bin_s, (scale, unit) = EVENT_BIN_S / dilation, time_unit(senders["t_s"])
    goodput = _in_unit(goodput_mbps(senders, bin_s), scale)
    senders = _in_unit(senders.assign(pacing_mbps=senders["rate_bps"] / 1e6), scale)
    figure, (rate_axes, goodput_axes) = _figure(2)
    _plot_lines(rate_axes, senders, FLOW_LABEL_KEYS, "pacing_mbps", _flow_label)
    _plot_lines(goodput_axes, goodput, FLOW_LABEL_KEYS, "goodput_mbps", _flow_label)
    _mark_modes([rate_axes, goodput_axes], mode_spans(senders))
    rate_axes.set(ylabel="pacing rate (Mbit/s)")
    goodput_axes.set(xlabel=_time_label(unit), ylabel=f"goodput {_per(bin_s, unit, scale)} (Mbit/s)")
    figure.suptitle(f"Sender pacing rate (per sample) and acknowledged goodput{note}")
    _legend(rate_axes)
    return _save(figure, path)


def plot_bottleneck(utilisation: pd.DataFrame | None, path: Path) -> Path | None:
    """``testbed flows``: each crossed DCI egress's utilisation of its rate and its queueing delay while the flows
    ran, per mode (``testbed.experiments.flows.utilisation_table``)."""
    if _absent(utilisation):
        return None
    scale, unit = time_unit(utilisation["t_s"])
    frame = _in_unit(utilisation, scale)
    figure, (util_axes, queue_axes) = _figure(2)
    _plot_lines(util_axes, frame, ["egress"], "util_pct", lambda key: key[0])
    _plot_lines(queue_axes, frame, ["egress"], "queue_delay_ms", lambda key: key[0])
    _mark_modes([util_axes, queue_axes], mode_spans(frame))
    util_axes.set(ylabel="utilisation (% of rate)")
    queue_axes.set(xlabel=_time_label(unit), ylabel="queueing delay (ms, declared)")
    figure.suptitle("Bottleneck DCI egresses while the flows ran")
    _legend(util_axes)
    return _save(figure, path)


def plot_ablation(ablation: pd.DataFrame | None, path: Path) -> Path | None:
    """``testbed compare --ablation``: each mode's busbw ratio to the baseline against distance, with its 95 %
    interval as bars (``testbed.experiments.comparison.Comparison.by_mode``), the modes side by side around each
    distance; invalid points hollow."""
    if _absent(ablation):
        return None
    others = ablation[ablation["verdict"] != "reference"]
    if others.empty:
        return None
    figure, (axes,) = _figure(1)
    groups = list(others.groupby("mode", sort=False))
    for index, (color, (mode, rows)) in enumerate(zip(_colors(len(groups)), groups)):
        rows = rows.sort_values("distance_km")
        x = rows["distance_km"] * DODGE ** (index - (len(groups) - 1) / 2)  # side by side, not on top
        errors = [rows["ratio"] - rows["ci_low"], rows["ci_high"] - rows["ratio"]]
        axes.errorbar(x, rows["ratio"], yerr=errors, color=color, marker="o", capsize=3, label=mode)
        invalid = ~rows["valid"].astype(bool)
        axes.scatter(x[invalid], rows["ratio"][invalid], facecolors="white", edgecolors=[color], zorder=3)
    axes.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
    axes.set_xscale("log")
    axes.set(xlabel="DCI distance (km)", ylabel="busbw / baseline (largest size)",
             title="Ablation: each mechanism alone and all together, against the baseline")
    _legend(axes)
    return _save(figure, path)


def _series_columns(results: pd.DataFrame) -> list[str]:
    """The mode, plus whichever of dtype, redop and root vary (-d all, -o all, -r -1 give several per size)."""
    return ["mode", *(column for column in ("dtype", "redop", "root") if results[column].nunique() > 1)]


def _series_label(columns: Sequence[str], key: tuple) -> str:
    parts = [f"root {value}" if column == "root" else str(value) for column, value in zip(columns, key)]
    return " ".join(part for part in parts if part)


def _size_axis(axes: Axes, sizes: pd.Series) -> None:
    """A log2 size axis ticked at the measured sizes (thinned to MAX_SIZE_TICKS) in nccl-tests' K/M/G."""
    measured = sorted(sizes.unique())
    ticks = measured[::math.ceil(len(measured) / MAX_SIZE_TICKS)]
    axes.set_xscale("log", base=2)
    axes.set_xticks(ticks, [human_size(size) for size in ticks])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel("message size")


def plot_busbw(results: pd.DataFrame | None, path: Path) -> Path | None:
    """busbw against message size per mode, out of place solid and in place dashed.

    In Mbit/s (GB/s x 8000), the unit DCI links are rated in.  Size 0 (a -b 0 sweep) has no place on a log
    axis and is left out.
    """
    if _absent(results):
        return None
    results = results[results["size_bytes"] > 0].sort_values("size_bytes", kind="stable")
    columns = _series_columns(results)
    groups = list(results.groupby(columns, sort=False))
    figure, (axes,) = _figure(1)
    for color, (key, rows) in zip(_colors(len(groups)), groups):
        name = _series_label(columns, key)
        for prefix, style, placement in (("oop", "-", "out-of-place"), ("ip", "--", "in-place")):
            axes.plot(rows["size_bytes"], rows[f"{prefix}_busbw_gbps"] * 8e3, linestyle=style, marker="o",
                      color=color, label=f"{name} {placement}".strip())
    _size_axis(axes, results["size_bytes"])
    axes.set(ylabel="busbw (Mbit/s)", title="Bus bandwidth against message size (dashed: in place)")
    axes.grid(True, alpha=0.3)
    _legend(axes)
    return _save(figure, path)


def plot_ce_cnp(queues: pd.DataFrame | None, flows: pd.DataFrame | None, path: Path,
                dilation: float = 1.0) -> Path | None:
    """CE marks the DCI egresses set per sample interval above the CNPs the senders received for them."""
    dci, senders = _dci_queues(queues), _senders(flows)
    if dci.empty and senders.empty:
        return None
    bin_s, (scale, unit) = EVENT_BIN_S / dilation, time_unit(pd.concat([dci.get("t_s"), senders.get("t_s")]))
    figure, (ce_axes, cnp_axes) = _figure(2)
    if dci.empty:
        _say_missing(ce_axes, "no DCI queue telemetry")
    else:
        dci = _in_unit(dci.assign(ce_marks=interval_deltas(dci, QUEUE_KEYS, "ecn_marks")), scale)
        _plot_lines(ce_axes, dci, QUEUE_KEYS, "ce_marks", _queue_label)
        _legend(ce_axes)
    if senders.empty:
        _say_missing(cnp_axes, "no sender telemetry")
    else:
        # every rank samples on its own clock ticks: sum the senders' increments per time bin, not per t_s
        senders = _in_unit(senders.assign(cnps=interval_deltas(senders, FLOW_KEYS, "cnps_received"),
                                          t_s=bin_start(senders.t_s, bin_s)), scale)
        cnps = senders.groupby(["mode", "t_s"], sort=True, as_index=False)["cnps"].sum(min_count=1)
        _plot_series(cnp_axes, cnps, "cnps", "all senders", "tab:red")
        _legend(cnp_axes)
    recorded = [frame[["mode", "t_s"]] for frame in (dci, senders) if not frame.empty]
    _mark_modes([ce_axes, cnp_axes], mode_spans(pd.concat(recorded)))
    ce_axes.set(ylabel="CE marks per interval")
    cnp_axes.set(xlabel=_time_label(unit), ylabel=f"CNPs received {_per(bin_s, unit, scale)}")
    figure.suptitle("ECN: CE marks at the DCI egresses (per sample) and CNPs back at the senders")
    return _save(figure, path)


def plot_capture_throughput(throughput: pd.DataFrame | None, path: Path) -> Path | None:
    """Per-flow throughput as the packet capture saw it: an account independent of the ranks' own counters."""
    if _absent(throughput):
        return None
    throughput, note = legible_flows(throughput.sort_values("t_s", kind="stable"), CAPTURE_FLOW_KEYS)
    scale, unit = time_unit(throughput["t_s"])
    figure, (axes,) = _figure(1)
    _plot_lines(axes, _in_unit(throughput, scale), CAPTURE_FLOW_KEYS, "mbps", _capture_label)
    axes.set(xlabel=_time_label(unit), ylabel="throughput (Mbit/s)", title=f"Per-flow throughput in the capture{note}")
    _legend(axes)
    return _save(figure, path)


# --- a results directory --------------------------------------------------------------------------------

def _load(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _load_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def _params(results_dir: Path) -> dict:
    """The run's parameters (``params.json``), empty when it has none."""
    path = results_dir / "params.json"
    return (json.loads(path.read_text()).get("params") or {}) if path.exists() else {}


def write_plots(results_dir: Path) -> list[Path]:
    """Every plot ``results_dir`` has the data for, written to ``results_dir/plots/``; returns their paths.

    A plot whose data is absent is not written, and an earlier build's file of that name is removed, so the
    folder never shows data the directory no longer holds.
    """
    results_dir = Path(results_dir)
    telemetry = results_dir / "telemetry"
    queues, flows = _load(telemetry / "queues.parquet"), _load(telemetry / "flows.parquet")
    dilation = float(_params(results_dir).get("dilation", 1.0))
    if queues is not None and not _absent(flows):  # from just before the ranks' first sample: rank start-up is idle
        queues = queues[queues["t_s"] >= flows["t_s"].min() - LEAD_S / dilation]
    planned = (("dci-queue-delay.png", plot_dci_queue_delay, (queues,)),
               ("flow-rate.png", plot_flow_rate, (flows,), dilation),
               ("busbw.png", plot_busbw, (_load(results_dir / "results.parquet"),)),
               ("flows-bottleneck.png", plot_bottleneck, (_load(results_dir / "flows-utilisation.parquet"),)),
               ("ablation.png", plot_ablation, (_load_csv(results_dir / "ablation.csv"),)),
               ("ce-cnp.png", plot_ce_cnp, (queues, flows), dilation),
               ("capture-throughput.png", plot_capture_throughput,
                (_load(results_dir / "analysis" / "throughput.parquet"),)))
    out_dir = results_dir / PLOTS_DIR
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, plot, frames, *dilated in planned:
        path = plot(*frames, out_dir / name, *dilated)
        if path is None:
            (out_dir / name).unlink(missing_ok=True)
        else:
            written.append(path)
    return written
