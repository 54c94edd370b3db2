"""Dilation invariance: one declared scenario measured at several k, its declared-unit results side by side.

This is the proof that dilation is right (``testbed.model.dilation``).  If every rate, delay and timer is
scaled as it must be, and the emulator's CPU is never the limit, the same declared fabric gives the same
declared results at any k: busbw, completion time and the DCI's queueing delay agree within the run-to-run
spread.  Where they drift with k, either a knob escaped the scaling or the smaller k was emulator-limited
(the fidelity verdict says which).

``measure_at`` runs a collective sweep on a built fabric at one k (``Testbed.set_dilation``: the same fabric,
its links changed in place), observed by its own telemetry, and returns the figures to compare.
"""

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from testbed.collective import nccl_tests
from testbed.collective.runner import perf
from testbed.collective.schedules.model import Algorithm
from testbed.observe.fidelity import Verdict
from testbed.observe.telemetry import Telemetry


@dataclass
class AtDilation:
    """One k's results, declared: per size busbw (GB/s) and time (us) out of place, the DCI queueing delay
    while busy, the fidelity verdict, and what it cost in wall time."""

    dilation: float
    busbw_gbps: dict[int, float]
    time_us: dict[int, float]
    queue_p50_ms: float
    verdict: Verdict
    wall_s: float
    wrong: int

    def row(self, size: int) -> dict:
        return {"dilation": self.dilation, "size_bytes": size, "busbw_gbps": self.busbw_gbps[size],
                "time_us": self.time_us[size], "queue_p50_ms": self.queue_p50_ms, "verdict": self.verdict.text,
                "wall_s": self.wall_s, "wrong": self.wrong}


def measure_at(tb, dilation: float, options: nccl_tests.Options, algorithm: Algorithm = Algorithm(),
               interval_s: float = 0.01) -> AtDilation:
    """Run ``options``' sweep on ``tb`` at ``dilation`` (DCQCN at the hosts' line rate, declared)."""
    tb.set_dilation(dilation)
    started = time.monotonic()
    with Telemetry(tb, interval_s) as telemetry:
        results = perf(tb, options, algorithm, print_line=lambda line: None, telemetry_s=interval_s,
                       on_answers=telemetry.on_answers)
    wall_s = time.monotonic() - started
    (verdict,) = telemetry.verdicts()
    return AtDilation(dilation, {r.size_bytes: r.out_of_place.busbw_gbps for r in results},
                      {r.size_bytes: r.out_of_place.time_us for r in results},
                      busy_queue_delay_ms(telemetry.frames()["queues"], 50), verdict, wall_s,
                      sum(r.wrong_elements for r in results))


def busy_queue_delay_ms(queues: pd.DataFrame, percentile: float) -> float:
    """The ``percentile`` of the DCI egresses' queueing delay over the samples in which they sent (busy)."""
    dci = queues[queues["dci"].notna()].sort_values("t_s")
    delays = []
    for _, rows in dci.groupby(["node", "peer"]):
        busy = np.diff(rows["sent_bytes"].to_numpy()) > 0
        delays += list(rows["queue_delay_ms"].to_numpy()[1:][busy])
    return float(np.percentile(delays, percentile)) if delays else float("nan")


def deviations(runs: list[AtDilation]) -> pd.DataFrame:
    """Per size and k: each figure and its deviation from the largest k's (the most faithful), in percent."""
    reference = max(runs, key=lambda run: run.dilation)
    rows = []
    for run in runs:
        for size in run.busbw_gbps:
            row = run.row(size)
            for name in ("busbw_gbps", "time_us", "queue_p50_ms"):
                ref = reference.row(size)[name]
                row[f"{name}_dev_pct"] = 100 * (row[name] - ref) / ref if ref else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)
