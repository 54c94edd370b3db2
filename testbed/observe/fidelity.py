"""Was the run faithful, or did the emulator's CPU limit what it measured?  One verdict per mode.

A dilated run (``testbed.model.dilation``) is faithful when the emulator kept every promise the model makes:
links dequeued at their set rates, processes got a CPU when their timers and packets asked, and what
observed them sampled at its interval.  After Handigol et al., "Reproducible Network Experiments Using
Container-Based Emulation" (CoNEXT 2012), which checked per-packet departure times at the bottleneck against
the expected transmission time and sampled link utilisation every 10 ms, each mode is held against five
measurements, all from the run's telemetry (``testbed.observe.telemetry``):

    dci_rate   while a DCI egress stayed backlogged from one sample to the next (at least two full frames
               queued at both), what it sent in between against its set rate, per stretch of at least 40
               frames' time: the median ratio >= 0.95.
               Below, the kernel's shaping or forwarding could not keep the link busy: the emulator's CPU.
    rank_cpu   each rank's CPU demand in each measurement, (time on a CPU + time waiting on a run queue for
               one) / wall time (``/proc/self/schedstat``): the largest <= 0.8.  A rank that wanted a CPU all
               the time could not keep up with its pacing, its timers or its packets.
    loop_late  how late each rank's event loop woke up beyond the timer it set (``testbed.roce.nic.Lateness``):
               the largest p99 <= 10 % of the fabric's shortest base RTT between sites, in wall time (the
               declared RTT times k).  Beyond, RTT samples and control loops see the emulator's delays.
    host_stall the longest any rank left its packets or timers waiting, in one measurement: the largest of its
               event loop's worst lateness and the longest a datagram waited in its socket before the loop read
               it (``testbed.roce.nic.Lateness``), declared (wall / k), <= half the transport's RTO floor.  The
               floor is the least margin a retransmission timeout keeps over the smoothed RTT
               (``testbed.roce.rto``), so a stall that long fires a timeout with nothing lost; the other half is
               for the path's own rise over its smoothed RTT.  A bound on the worst, not on p99 as loop_late:
               one stall is one spurious timeout and a go-back-N round (at 3000 km, k 15: loops stalled
               60-170 ms of wall time, 4-11 ms declared, while the event-loop lateness p99 read 0.4-0.8 ms).
    sampler    the telemetry's achieved sampling interval <= 2x the one asked: the observation kept up.
               Per mode, from the mode's own samples (its queues' timestamps).  The whole telemetry's
               running average, read when a run ended, misjudged single runs both ways (a comparison at
               k 3,300, 10 ms asked: 2.02 for a run whose own samples read 1.85; 1.79 at the end for one
               whose own read 2.07).

The verdict is ``faithful`` or ``emulator-limited: <measurement> <value> (bound <bound>)`` for the first
bound broken, and ``needed_dilation`` estimates the k that would have kept it: the CPU a run needs, and so
the demand and the lateness relative to a dilated RTT, scale about as 1 / k, the DCI's shortfall likewise.
A measurement with nothing to measure (no backlog, no ranks) is not held against the mode.
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from testbed.model.dilation import MAX_LATE_RTT
from testbed.roce.transport import TransportConfig

MIN_DCI_RATE = 0.95
MAX_RANK_CPU = 0.8
MAX_SAMPLER_LAG = 2.0
MAX_STALL_RTO = 0.5
RTO_FLOOR_S = TransportConfig.min_rto_ns / 1e9  # declared: the ranks run the transport's defaults
BACKLOG_FRAMES = 2
CHUNK_FRAMES = 40  # the shortest backlogged stretch whose rate is judged (``dci_rate``)
# (name, how the value reads, bound, True when the value must stay at or below the bound)
CHECKS = (("dci_rate", "DCI rate while backlogged, of its set rate", MIN_DCI_RATE, False),
          ("rank_cpu", "rank CPU demand", MAX_RANK_CPU, True),
          ("loop_late", "event-loop lateness p99, of the base RTT", MAX_LATE_RTT, True),
          ("host_stall", "longest host stall, of the RTO floor", MAX_STALL_RTO, True),
          ("sampler", "telemetry interval, of the one asked", MAX_SAMPLER_LAG, True))


@dataclass
class Verdict:
    """One mode's fidelity: each measurement's value (None: nothing to measure), and what they add up to.
    ``checks`` are ``CHECKS`` for a run; a probe holds itself against its own (``testbed.experiments.checks``),
    each a ratio that scales about as 1 / k, so ``needed_dilation`` reads the same way."""

    mode: str
    dilation: float
    values: dict[str, float | None] = field(default_factory=dict)
    checks: tuple[tuple[str, str, float, bool], ...] = CHECKS

    @property
    def broken(self) -> list[tuple[str, str, float, float, bool]]:
        """The checks whose bound the run broke, in ``checks`` order, with their values."""
        return [(name, label, self.values[name], bound, upper) for name, label, bound, upper in self.checks
                if self.values.get(name) is not None
                and (self.values[name] > bound if upper else self.values[name] < bound)]

    @property
    def faithful(self) -> bool:
        return not self.broken

    @property
    def text(self) -> str:
        if self.faithful:
            return "faithful"
        _, label, value, bound, upper = self.broken[0]
        return f"emulator-limited: {label} {value:.3g} ({'max' if upper else 'min'} {bound:g})"

    @property
    def needed_dilation(self) -> float:
        """The k that would have kept every bound (this k if none was broken)."""
        factors = [value / bound if upper else bound / value if value > 0 else float("inf")
                   for _, _, value, bound, upper in self.broken]
        return self.dilation * max([1.0, *factors])

    @property
    def line(self) -> str:
        """One line for the terminal: ``fidelity <mode>: <text>`` and, when limited, the k it asks for."""
        needed = "" if self.faithful else f"; k >= {self.needed_dilation:.3g} would be needed"
        return f"fidelity{' ' + self.mode if self.mode else ''}: {self.text}{needed}"

    def row(self) -> dict:
        return {"mode": self.mode, "dilation": self.dilation, **self.values, "verdict": self.text,
                "needed_dilation": self.needed_dilation}


def verdicts(queues: pd.DataFrame, ranks: pd.DataFrame, sampler: dict, base_rtt_s: float | None,
             dilation: float, frame_bytes: int) -> list[Verdict]:
    """One verdict per mode of the telemetry's ``queues`` and ``ranks`` tables (``testbed.observe.telemetry``),
    in the order the modes ran; ``sampler`` is its ``overhead()``, ``base_rtt_s`` the fabric's shortest
    declared RTT between sites (None: one site, no lateness bound)."""
    modes = list(dict.fromkeys([*ranks.get("mode", pd.Series(dtype=str)), *queues.get("mode", pd.Series(dtype=str))]))
    asked_ms = sampler.get("interval_ms", np.nan)
    overall = sampler.get("achieved_interval_ms", np.nan) / asked_ms
    result = []
    for mode in modes:
        mode_queues = queues[queues["mode"] == mode] if len(queues) else queues
        mode_ranks = ranks[ranks["mode"] == mode] if len(ranks) else ranks
        lag = sampled_interval_ms(mode_queues, dilation) / asked_ms
        lag = lag if np.isfinite(lag) else overall
        result.append(Verdict(mode, dilation, {
            "dci_rate": dci_rate(mode_queues, frame_bytes),
            "rank_cpu": _largest(mode_ranks, "cpu_demand"),
            "loop_late": None if base_rtt_s is None or mode_ranks.empty
            else float(mode_ranks["late_p99_us"].max()) / 1e6 / (base_rtt_s * dilation),
            "host_stall": host_stall(mode_ranks, dilation),
            "sampler": None if not np.isfinite(lag) else float(lag)}))
    return result


def host_stall(ranks: pd.DataFrame, dilation: float) -> float | None:
    """The longest stall of any rank in ``ranks`` (its loop's worst lateness or a datagram's longest wait in
    its socket, wall us), declared, as a share of the RTO floor; None without ranks."""
    stalls = [v for v in (_largest(ranks, "late_max_us"), _largest(ranks, "dwell_max_us")) if v is not None]
    return max(stalls) / 1e6 / dilation / RTO_FLOOR_S if stalls else None


def sampled_interval_ms(queues: pd.DataFrame, dilation: float) -> float:
    """The mean wall-time interval between consecutive samples of each queue in ``queues`` (their ``t_s`` are
    declared: times k); NaN with fewer than two samples of any queue."""
    gaps = [np.diff(np.sort(rows.to_numpy(dtype=float))) for _, rows in queues.groupby(["node", "intf"])["t_s"]] \
        if len(queues) else []
    gaps = np.concatenate(gaps) if gaps else np.array([])
    return float(gaps.mean()) * 1e3 * dilation if len(gaps) else float("nan")


def dci_rate(queues: pd.DataFrame, frame_bytes: int) -> float | None:
    """The median, over stretches a DCI egress stayed backlogged through, of what it sent against its set rate
    (``queues``' times and rates are declared, so the ratio is too).

    A stretch is consecutive backlogged sample intervals holding at least ``CHUNK_FRAMES`` frames at the set
    rate: the counter moves a whole frame at a time, so over one interval of 1.5 frame times a link at its
    rate shows 1 or 2 frames, and the median of such ratios read 0.67 for a link that kept its rate (k 150,
    a 250 Mbit/s DCI, 20 ms samples).  Over 40 frames the count is off by 2.5 % at most."""
    dci = queues[queues["dci"].notna()] if len(queues) else queues
    ratios = []
    for _, rows in dci.sort_values("t_s").groupby(["node", "peer"]):
        busy = (rows["backlog_bytes"] >= BACKLOG_FRAMES * frame_bytes).to_numpy()
        t, sent, rate = (rows[c].to_numpy(dtype=float) for c in ("t_s", "sent_bytes", "rate_bps"))
        through = busy[1:] & busy[:-1] & (np.diff(t) > 0)
        capacity = np.diff(t) * rate[1:] / 8
        ratios += _stretch_ratios(np.diff(sent), capacity, through, CHUNK_FRAMES * frame_bytes)
    return float(np.median(ratios)) if ratios else None


def _stretch_ratios(sent: np.ndarray, capacity: np.ndarray, through: np.ndarray, least: float) -> list[float]:
    """Sent over capacity per stretch of consecutive ``through`` intervals with at least ``least`` capacity;
    a run's remainder short of that joins its last stretch, a run shorter than that says nothing."""
    ratios, stretches, done, room = [], [], 0.0, 0.0
    for i in range(len(through) + 1):
        if i == len(through) or not through[i]:
            if room and stretches:  # the run's short remainder joins its last stretch
                stretches[-1] = (stretches[-1][0] + done, stretches[-1][1] + room)
            ratios += [d / r for d, r in stretches]
            stretches, done, room = [], 0.0, 0.0
            continue
        done, room = done + sent[i], room + capacity[i]
        if room >= least:
            stretches.append((done, room))
            done, room = 0.0, 0.0
    return ratios


def _largest(frame: pd.DataFrame, column: str) -> float | None:
    values = frame[column].dropna() if column in frame else pd.Series(dtype=float)
    return float(values.max()) if len(values) else None
