"""What the packet captures of a run say about its flows, and whether the run's own telemetry agrees.

``testbed.observe.capture`` leaves headers-only pcaps of every DCI link in ``RESULTS_DIR/capture`` (``capture.json``
describes them).  From those this module derives, per queue pair seen on each captured interface,
throughput over time, the CE-marked fraction, CNPs, ACKs and NAKs, retransmissions and one-way delay, and
then compares the counts with ``RESULTS_DIR/telemetry`` (what the senders, receivers and queues counted).
Two independent views of the same packets must agree; where they do not, one of them is wrong.

The work is split by concern: ``testbed.results.pcap`` reads and decodes the captures,
``testbed.results.capture_flows`` places each packet in its flow and derives the per-flow tables, and
``testbed.results.crosscheck`` compares them with the telemetry.  This module ties the first two together
(``analyze``) and writes the frames (``save``).
"""

import os
import tempfile
from pathlib import Path

import pandas as pd

from testbed.results.capture_flows import CaptureAnalysis, event_table, flow_table, sequenced, throughput_table
from testbed.results.pcap import AnalysisError, load_meta, read_packets

MAX_BINS = 1_000_000  # per flow, before the zero bins between its packets are filled in: memory stays bounded


def analyze(results_dir: Path, bin_s: float = 0.1) -> CaptureAnalysis:
    """Read ``results_dir/capture`` and derive every frame, time binned by ``bin_s`` seconds."""
    if not bin_s > 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    capture_dir = Path(results_dir) / "capture"
    meta = load_meta(capture_dir)
    decoded, reading = read_packets(capture_dir, meta)
    span_s = float(decoded["t_s"].max() - decoded["t_s"].min()) if len(decoded) else 0.0
    if span_s / bin_s > MAX_BINS:
        raise AnalysisError(f"a bin of {bin_s * 1e3:g} ms makes {span_s / bin_s:,.0f} bins over the capture's "
                            f"{span_s:g} s: at most {MAX_BINS:,} (a bin of {span_s / MAX_BINS * 1e3:.3g} ms or more)")
    packets = sequenced(decoded)
    return CaptureAnalysis(packets, flow_table(packets, meta), throughput_table(packets, bin_s),
                           event_table(packets, bin_s), meta, reading)


def save(analysis: CaptureAnalysis, check: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The frames under ``out_dir`` (RESULTS_DIR/analysis): small ones as CSV, long ones as Parquet.

    A results directory is often copied around and may hold what someone else put there: ``out_dir`` must
    not be a symlink (AnalysisError), and each file is written to a fresh temporary name (created
    exclusively, never through a link) and renamed over its name, which replaces a planted link instead of
    writing where it points."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise AnalysisError(f"refusing to write through the symlink {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = (("flows.csv", analysis.flows), ("crosscheck.csv", check), ("throughput.parquet", analysis.throughput),
              ("events.parquet", analysis.events), ("packets.parquet", analysis.packets))
    written = []
    for name, frame in frames:
        fd, temporary = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as stream:
                if name.endswith(".csv"):
                    frame.to_csv(stream, index=False)
                else:
                    frame.to_parquet(stream, index=False)
            os.chmod(temporary, 0o644)
            os.replace(temporary, out_dir / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        written.append(out_dir / name)
    return written
