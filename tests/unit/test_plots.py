"""Plots and the HTML report of a results directory, on synthetic telemetry with known counters (native)."""

import base64
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from testbed.results import plots
from testbed.results.html_report import build_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODES = ("baseline", "adaptive")
MODES_SORTED = sorted(MODES)
INTERVAL_S = 0.05
SAMPLES_PER_MODE = 20
MODE_START_S = {"baseline": 0.0, "adaptive": 1.5}  # the modes run one after another on one time axis
DCI_EGRESSES = (("border-a", "border-b", "eth9"), ("border-b", "border-a", "eth9"))
FLOWS = ((0, 4, 0, "10.1.0.10", "10.2.0.10"), (4, 0, 0, "10.2.0.10", "10.1.0.10"),
         (0, 1, 0, "10.1.0.10", "10.1.0.11"))  # rank, peer, channel, src, dst: two cross-site, one local
ACKED_BYTES_PER_SAMPLE = 125_000  # 20 Mbit/s at 50 ms samples
NCCL_TEXT = "# mode: baseline\n#  Rank  0 Group  0 Pid 1 on <h1> device  0 [10.1.0.10] a & b\n"


def sample_times(mode):
    return [MODE_START_S[mode] + INTERVAL_S * i for i in range(SAMPLES_PER_MODE)]


def queues_frame():
    rows = []
    for mode in MODES:
        for i, t in enumerate(sample_times(mode)):
            for node, peer, intf in DCI_EGRESSES:
                rows.append(dict(t_s=t, mode=mode, node=node, peer=peer, intf=intf, dci="dci-ab", rate_bps=1e8,
                                 backlog_bytes=1000 * i, backlog_packets=i, queue_delay_ms=0.1 * i,
                                 sent_bytes=1e4 * i, sent_packets=10 * i, drops=0, ecn_marks=3 * i))
            rows.append(dict(t_s=t, mode=mode, node="leaf-a", peer="host-a0", intf="eth1", dci=None, rate_bps=1e9,
                             backlog_bytes=0, backlog_packets=0, queue_delay_ms=0.0, sent_bytes=1e3 * i,
                             sent_packets=i, drops=0, ecn_marks=0))
    return pd.DataFrame(rows)


def flows_frame():
    """Sender and receiver rows per flow; counters start from 0 again in each mode, as the ranks restart."""
    rows = []
    for mode in MODES:
        for i, t in enumerate(sample_times(mode)):
            for qpn, (rank, peer, channel, src, dst) in enumerate(FLOWS):
                common = dict(t_s=t, mode=mode, rank=rank, peer=peer, channel=channel, src=src, dst=dst,
                              sqpn=100 + qpn, dqpn=200 + qpn)
                rows.append(dict(common, side="sender", packets_sent=10 * i, ip_bytes_sent=130_000 * i,
                                 bytes_sent=ACKED_BYTES_PER_SAMPLE * i + 5000,
                                 bytes_acked=ACKED_BYTES_PER_SAMPLE * i,
                                 retransmitted_packets=0, cnps_received=2 * i, timeouts=0, naks_received=0,
                                 rate_bps=2e7 - 1e5 * i, srtt_us=10_000.0))
                rows.append(dict(common, side="receiver", packets=10 * i, bytes=ACKED_BYTES_PER_SAMPLE * i,
                                 ce_marked=2 * i, cnps_sent=2 * i, naks_sent=0, duplicates=0, out_of_order=0))
    return pd.DataFrame(rows)


def results_frame():
    rows = []
    for factor, mode in ((1.0, "baseline"), (1.4, "adaptive")):
        for size in (64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024):
            busbw = factor * 0.001 * math.log2(size)
            rows.append(dict(size_bytes=size, count=size // 4, dtype="float", redop="sum", root=-1, mode=mode,
                             oop_time_us=1e3, oop_algbw_gbps=busbw / 1.5, oop_busbw_gbps=busbw, oop_wrong=0,
                             ip_time_us=1e3, ip_algbw_gbps=busbw / 1.6, ip_busbw_gbps=busbw * 0.95, ip_wrong=0))
    return pd.DataFrame(rows)


def throughput_frame():
    """The capture's view of the two cross-site flows, 0.1 s bins."""
    cross_site = enumerate(FLOWS[:2])
    return pd.DataFrame([dict(t_s=t, intf="border-a-eth9", src=src, dst=dst, dqpn=200 + qpn, mbps=15 + qpn,
                              ce_fraction=0.1)
                         for qpn, (_, _, _, src, dst) in cross_site for t in np.arange(0, 1, 0.1)])


def write_params(results_dir, tables=()):
    results_dir.mkdir(parents=True, exist_ok=True)
    params = {"title": "all_reduce <1000 km> & friends", "command": "testbed compare all_reduce -b 64K -e 4M",
              "params": {"distance_km": 1000, "modes": ["baseline", "adaptive"], "topology": "two_sites"},
              "tables": list(tables)}
    (results_dir / "params.json").write_text(json.dumps(params))


def write_full_results(results_dir):
    """A results directory as a two-mode ``testbed compare`` followed by ``testbed analyze`` leaves it."""
    write_params(results_dir, tables=["compare-ratios.csv"])
    pd.DataFrame({"size_bytes": [65536, 4194304], "adaptive_x": [1.25, 1.5]}).to_csv(
        results_dir / "compare-ratios.csv", index=False)
    (results_dir / "nccl-tests.txt").write_text(NCCL_TEXT)
    results_frame().to_parquet(results_dir / "results.parquet")
    telemetry = results_dir / "telemetry"
    telemetry.mkdir()
    queues_frame().to_parquet(telemetry / "queues.parquet")
    flows_frame().to_parquet(telemetry / "flows.parquet")
    (telemetry / "sampler.json").write_text(json.dumps(
        {"interval_ms": 10, "samples": 40, "tick_ms_p50": 0.8, "tick_ms_p99": 2.5, "cpu_pct": 3.5,
         "late_pct": 0.25}))
    analysis = results_dir / "analysis"
    analysis.mkdir()
    throughput_frame().to_parquet(analysis / "throughput.parquet")
    pd.DataFrame([dict(scope="flow 0->4", quantity="bytes", capture=100, run=100, difference=0, ok=True, note=""),
                  dict(scope="dci-ab", quantity="ce marks", capture=57, run=60, difference=-3, ok=False,
                       note="capture lost 3")]).to_csv(analysis / "crosscheck.csv", index=False)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("compare")
    write_full_results(results_dir)
    page = build_report(results_dir)
    return results_dir, page.read_text()


# --- the numbers behind the plots ----------------------------------------------------------------------

def test_interval_deltas_never_span_a_mode_change():
    # one flow's bytes_acked: 0, 100, 300 in the first mode; the ranks restart and have acked 400 bytes by the
    # second mode's first sample, which is no growth from 300 but a new count
    frame = pd.DataFrame({"t_s": [0.0, 1.0, 2.0, 3.0, 4.0], "mode": ["a", "a", "a", "b", "b"],
                          "rank": 0, "bytes_acked": [0, 100, 300, 400, 450]})
    deltas = plots.interval_deltas(frame, ["rank"], "bytes_acked")
    assert deltas.isna().tolist() == [True, False, False, True, False]
    assert deltas.dropna().tolist() == [100, 200, 50]


def test_interval_deltas_follow_time_and_series_not_row_order():
    frame = pd.DataFrame({"t_s": [2.0, 1.0, 1.0, 2.0, 3.0], "mode": "m", "rank": [0, 1, 0, 1, 0],
                          "bytes_acked": [30, 5, 10, 9, 70]})
    deltas = plots.interval_deltas(frame, ["rank"], "bytes_acked")
    expected = [30 - 10, math.nan, math.nan, 9 - 5, 70 - 30]  # aligned to the rows as given
    assert deltas.tolist() == pytest.approx(expected, nan_ok=True)


def test_a_counter_that_went_down_gives_no_difference():
    frame = pd.DataFrame({"t_s": [0.0, 1.0, 2.0], "mode": "m", "rank": 0, "bytes_acked": [500, 20, 60]})
    assert plots.interval_deltas(frame, ["rank"], "bytes_acked").tolist() == pytest.approx(
        [math.nan, math.nan, 40], nan_ok=True)


def test_goodput_is_acked_bits_per_bin_second_per_flow_and_mode():
    senders = flows_frame().query("side == 'sender'")
    goodput = plots.goodput_mbps(senders, bin_s=5 * INTERVAL_S)  # both modes start on a bin boundary
    per_flow = goodput.groupby(["mode", "rank", "peer", "channel", "sqpn"])
    assert per_flow.ngroups == len(MODES) * len(FLOWS)
    # every bin after a mode's first holds 5 samples' worth; the first lacks the one nothing precedes
    full = goodput[~goodput["t_s"].isin([MODE_START_S[mode] for mode in MODES])]
    assert full["goodput_mbps"].to_numpy() == pytest.approx(ACKED_BYTES_PER_SAMPLE * 8 / INTERVAL_S / 1e6)
    first = goodput[goodput["t_s"].isin([MODE_START_S[mode] for mode in MODES])]
    assert first["goodput_mbps"].to_numpy() == pytest.approx(4 / 5 * ACKED_BYTES_PER_SAMPLE * 8 / INTERVAL_S / 1e6)


def test_human_sizes_are_nccl_tests_suffixes():
    sizes = (512, 65536, 1 << 20, 3 << 19, 8 << 30)
    assert [plots.human_size(size) for size in sizes] == ["512", "64K", "1M", "1.5M", "8G"]


def test_mode_spans_in_run_order_without_unnamed_samples():
    frame = pd.DataFrame({"t_s": [2.0, 0.0, 1.0, 3.0, -1.0],
                          "mode": ["adaptive", "baseline", "baseline", "adaptive", ""]})  # "": probing first
    assert plots.mode_spans(frame) == [("baseline", 0.0, 1.0), ("adaptive", 2.0, 3.0)]
    assert plots.mode_spans(frame.assign(mode="")) == []


def test_many_flows_are_cut_to_cross_site_ones():
    few = pd.DataFrame({"rank": range(4), "src": "10.1.0.1", "dst": ["10.1.0.2", "10.2.0.1"] * 2})
    assert plots.legible_flows(few, ["rank"]) == (few, "")
    many = pd.DataFrame({"rank": range(12), "src": "10.1.0.1", "dst": ["10.1.0.2", "10.2.0.1", "10.2.0.3"] * 4})
    kept, note = plots.legible_flows(many, ["rank"])
    assert kept["dst"].str.startswith("10.2.").all() and len(kept) == 8
    assert "cross-site flows only: 8 of 12" in note


# --- plot files -----------------------------------------------------------------------------------------

def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, path
    height, width, _ = imread(path).shape
    assert height > 200 and width > 400, path


def test_every_plot_is_written_as_a_real_png(full_report):
    results_dir, _ = full_report
    expected = {"dci-queue-delay.png", "flow-rate.png", "busbw.png", "ce-cnp.png", "capture-throughput.png"}
    assert {path.name for path in (results_dir / "plots").iterdir()} == expected
    for path in (results_dir / "plots").iterdir():
        assert_png(path)


@pytest.mark.parametrize("plot, frames", [
    (plots.plot_dci_queue_delay, (None,)),
    (plots.plot_dci_queue_delay, (queues_frame().query("dci.isna()"),)),  # intra-site queues only
    (plots.plot_flow_rate, (pd.DataFrame(),)),
    (plots.plot_busbw, (None,)),
    (plots.plot_ce_cnp, (None, None)),
    (plots.plot_capture_throughput, (None,)),
    (plots.plot_bottleneck, (None,)),
    (plots.plot_ablation, (None,)),
    (plots.plot_ablation, (pd.DataFrame({"mode": ["baseline"], "verdict": ["reference"]}),)),  # nothing to hold
])
def test_a_plot_without_its_data_is_skipped(tmp_path, plot, frames):
    path = tmp_path / "plot.png"
    assert plot(*frames, path) is None
    assert not path.exists()


def test_the_flows_bottleneck_and_the_ablation_are_drawn_from_their_tables(tmp_path):
    t = np.arange(0.0, 1.0, 0.01)
    utilisation = pd.DataFrame({"t_s": np.concatenate([t, t + 2]), "mode": ["baseline"] * 100 + ["adaptive"] * 100,
                                "egress": "westb->eastb", "util_pct": 95.0, "queue_delay_ms": 3.0})
    assert_png(plots.plot_bottleneck(utilisation, tmp_path / "flows-bottleneck.png"))
    rows = [dict(mode=mode, distance_km=km, ratio=ratio, ci_low=ratio - 0.2, ci_high=ratio + 0.2,
                 verdict="reference" if mode == "baseline" else "faster", valid=km != 100)
            for km in (10, 100, 1000)
            for mode, ratio in (("baseline", 1.0), ("adaptive:delay", 1.3), ("adaptive", 1.8))]
    assert_png(plots.plot_ablation(pd.DataFrame(rows), tmp_path / "ablation.png"))


def test_ce_cnp_plots_with_only_one_of_its_inputs(tmp_path):
    assert_png(plots.plot_ce_cnp(None, flows_frame(), tmp_path / "ce-cnp.png"))


def test_a_single_unnamed_mode_plots_without_mode_marks(tmp_path, monkeypatch):
    """Unnamed samples (``testbed perf``, one mode) get no shaded spans and no names; named modes get one
    span and one name each, on every axes of the figure."""
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or save(figure, path))

    def marks(figure) -> list[tuple[int, list[str]]]:
        return [(len(axes.patches), sorted(text.get_text().strip() for text in axes.texts)) for axes in figure.axes]

    assert_png(plots.plot_dci_queue_delay(queues_frame().assign(mode=""), tmp_path / "queues.png"))
    assert_png(plots.plot_flow_rate(flows_frame().assign(mode=""), tmp_path / "flows.png"))
    assert [marks(figure) for figure in figures] == [[(0, [])], [(0, []), (0, [])]]
    figures.clear()
    plots.plot_dci_queue_delay(queues_frame(), tmp_path / "queues.png")
    plots.plot_flow_rate(flows_frame(), tmp_path / "flows.png")
    assert [marks(figure) for figure in figures] == [[(2, MODES_SORTED)], [(2, MODES_SORTED), (2, [])]]


def test_missing_inputs_are_skipped_and_stale_plots_removed(tmp_path):
    write_params(tmp_path)
    results_frame().to_parquet(tmp_path / "results.parquet")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "flow-rate.png").write_bytes(b"from an earlier build")
    page = build_report(tmp_path).read_text()
    assert [path.name for path in (tmp_path / "plots").iterdir()] == ["busbw.png"]
    assert "plots/busbw.png" in page
    assert "flow-rate" not in page and "dci-queue-delay" not in page and "capture-throughput" not in page


# --- the page -------------------------------------------------------------------------------------------

def test_page_links_and_embeds_every_plot_file(full_report):
    results_dir, page = full_report
    embedded = dict(re.findall(r'<a href="plots/([^"]+)"><img src="data:image/png;base64,([^"]+)"', page))
    on_disk = {path.name: path.read_bytes() for path in (results_dir / "plots").glob("*.png")}
    assert set(embedded) == set(on_disk)
    for name, data in embedded.items():
        assert base64.b64decode(data) == on_disk[name], name


def test_page_is_self_contained(full_report):
    _, page = full_report
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert not re.search(r'src="(?!data:)', page)


def test_page_shows_params_tables_and_escaped_text(full_report):
    _, page = full_report
    assert "<title>all_reduce &lt;1000 km&gt; &amp; friends</title>" in page
    assert "testbed compare all_reduce -b 64K -e 4M" in page
    assert "<td>distance_km</td><td>1000</td>" in page
    assert "<td>modes</td><td>[&quot;baseline&quot;, &quot;adaptive&quot;]</td>" in page
    assert "compare-ratios.csv" in page and "<td>4194304</td><td>1.5</td>" in page
    assert "on &lt;h1&gt; device  0 [10.1.0.10] a &amp; b" in page and "<h1> device" not in page
    assert "# mode: baseline" in page


def test_page_shows_sampler_overhead_and_flags_crosscheck_rows_not_ok(full_report):
    _, page = full_report
    assert "<td>sampling interval</td><td>10 ms</td>" in page
    assert "<td>CPU the sampler used</td><td>3.5 %</td>" in page
    bad_rows = re.findall(r'<tr class="bad">(.*?)</tr>', page)
    assert len(bad_rows) == 1 and "capture lost 3" in bad_rows[0]
    assert "1 of 2 checks disagree" in page


def test_params_alone_still_give_a_page(tmp_path):
    write_params(tmp_path, tables=["missing.csv"])
    page = build_report(tmp_path)
    assert page == tmp_path / "report.html"
    text = page.read_text()
    assert "<td>topology</td><td>two_sites</td>" in text
    assert "no telemetry in this results directory" in text
    assert "no nccl-tests.txt" in text and "missing.csv is listed but missing" in text
    assert "data:image/png" not in text


def test_a_missing_results_directory_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        build_report(missing)
    assert not missing.exists()
