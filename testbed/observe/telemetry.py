"""The run's telemetry on one clock: queues and links sampled every 10 ms, flows and collective steps from the ranks.

    with Telemetry(tb) as telemetry:                    # a thread samples the queues and links
        sweep(tb, ranks, options, on_answers=telemetry.on_answers)   # the ranks' rows arrive with answers
    telemetry.save(out)                                 # out/telemetry/*.parquet + sampler.json

Every row's ``t_s`` is declared seconds since the telemetry started: ``time.monotonic_ns`` (one clock for the
sampler thread, the rank processes on every host and, through ``capture.json``'s offset, the pcaps) divided
by the run's dilation (``testbed.model.dilation``), like every time and rate in the rows.  The sampler's
interval and its cost (``overhead``) are wall time: they are the emulator's, not the fabric's.
``mode`` labels rows with the comparison mode running at the time ("" outside comparisons).

Tables (tidy: one row per sample and object; counters are cumulative, so rates are differences):

``queues``  t_s, mode, node, peer, intf, dci (DCI name, None inside a site), rate_bps (the link's declared
            rate), backlog_bytes, backlog_packets, queue_delay_ms (backlog at that rate), sent_bytes,
            sent_packets, drops, ecn_marks -- each egress queue (RED under HTB under netem, ``testbed.net.tc.qdisc``)
``links``   t_s, mode, node, peer, intf, dci, tx_bytes, tx_packets, rx_bytes, rx_packets -- the interface's
            own counters
``flows``   t_s, mode, rank, peer, channel, side ("sender"/"receiver"), src, dst (IPs), sqpn, dqpn; sender:
            packets_sent, ip_bytes_sent, bytes_sent, bytes_acked, retransmitted_packets, cnps_received,
            timeouts, naks_received, rate_bps (pacing), srtt_us; receiver: packets, bytes, ce_marked,
            cnps_sent, naks_sent, duplicates, out_of_order (``testbed.collective.flow_samples``; counters restart with
            the ranks, i.e. per mode); the other side's columns are empty
``steps``   t_s, mode, size_bytes, in_place, rank, step, phase, channel, send_peer, recv_peer, bytes, wait_ms
``ranks``   t_s, mode, size_bytes, in_place, rank, wall_ms, cpu_ms, wait_ms, cpu_demand, wakeups, late_p50_us,
            late_p99_us, late_max_us, reads, dwell_p50_us, dwell_p99_us, dwell_max_us -- what each measurement
            cost each rank process in wall time: its time on a CPU and waiting for one, how late its event loop
            woke, and how long the first datagram of each wake-up that read some had waited in the socket
            (``testbed.roce.nic.Lateness``, ``testbed.observe.fidelity``)

Which queues: ``scope="dci"`` (default) samples every interface of the border routers -- both directions of
every DCI and the borders' links into their sites -- with one qdisc and one link dump per border per
sample (``testbed.net.netlink_counters``: pyroute2 decoding every attribute was too slow for 10 ms under TCG);
``scope="all"`` every node of the fabric.  The sampler opens its own netlink sockets, so it never
interleaves with the fabric controller's.  Its cost is measured while it runs (``overhead``): the thread's
CPU time against the wall clock, the time one sample takes, how many samples started late and the interval
actually achieved.  Where a sample takes longer than the interval the sampler backs off (see ``_loop``).
"""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from testbed.net.netlink_counters import NamespaceCounters
from testbed.net.routing import path_delay_ms
from testbed.observe import fidelity
from testbed.roce.rocev2 import data_frame_bytes

DEFAULT_INTERVAL_S = 0.01
QUEUE_COLUMNS = ("t_s", "mode", "node", "peer", "intf", "dci", "rate_bps", "backlog_bytes", "backlog_packets",
                 "queue_delay_ms", "sent_bytes", "sent_packets", "drops", "ecn_marks")
LINK_COLUMNS = ("t_s", "mode", "node", "peer", "intf", "dci", "tx_bytes", "tx_packets", "rx_bytes", "rx_packets")
LOOP_COLUMNS = ("wakeups", "late_p50_us", "late_p99_us", "late_max_us", "reads", "dwell_p50_us", "dwell_p99_us",
                "dwell_max_us")
RANK_COLUMNS = ("t_s", "mode", "size_bytes", "in_place", "rank", "wall_ms", "cpu_ms", "wait_ms", "cpu_demand",
                *LOOP_COLUMNS)
SCOPES = ("dci", "all")


class Telemetry:
    """Samples ``tb``'s queues and links every ``interval_s`` in a thread while the block runs, and gathers
    the ranks' flow and step rows from their answers (``on_answers``)."""

    def __init__(self, tb, interval_s: float = DEFAULT_INTERVAL_S, scope: str = "dci") -> None:
        if scope not in SCOPES:
            raise ValueError(f"telemetry scope {scope!r} is not one of {', '.join(SCOPES)}")
        self.tb, self.interval_s, self.scope, self.dilation = tb, interval_s, scope, tb.dilation
        self.mode = ""
        self.t0_ns = time.monotonic_ns()
        self.queues: list[list] = []
        self.links: list[list] = []
        self.flows: list[pd.DataFrame] = []
        self.steps: list[pd.DataFrame] = []
        self.ranks: list[list] = []
        self._ticks_ms: list[float] = []
        self._late = 0
        self._cpu_ns = 0
        self._wall_ns = 0
        self._previous: dict[tuple[str, str], tuple] = {}
        self._live: dict[tuple[str, str], dict] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nodes = self._sampled_nodes()

    # -- the sampler thread ------------------------------------------------------------------------------

    def __enter__(self) -> "Telemetry":
        self._counters = {node.name: NamespaceCounters.of(node) for node, _ in self._nodes}
        self.t0_ns = time.monotonic_ns()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the final counters
        for counters in self._counters.values():
            counters.close()

    def _sampled_nodes(self) -> list[tuple[object, list]]:
        """(node, its shaped interfaces) for the scope, with each interface's peer and DCI name."""
        dcis = {id(link): name for name, link in self.tb.dci_links()}
        borders = {intf.node.name for _, link in self.tb.dci_links() for intf in (link.intf1, link.intf2)}
        nodes = [n for n in self.tb.net.hosts if self.scope == "all" or n.name in borders]
        chosen = []
        for node in nodes:
            intfs = [intf for intf in node.intfList() if getattr(intf, "shape", None) is not None]
            chosen.append((node, [(intf, _peer(intf), dcis.get(id(intf.link))) for intf in intfs]))
        return chosen

    def _loop(self) -> None:
        """Sample every interval; where one sample takes longer than that (a slow emulated CPU, a large
        ``scope="all"`` fabric), wait twice its time, so the sampler never takes more than a third of a core
        from the ranks."""
        interval_ns = round(self.interval_s * 1e9)
        due = time.monotonic_ns()
        while not self._stop.is_set():
            started = time.monotonic_ns()
            if started - due > interval_ns:
                self._late += 1
                due = started
            self.sample()
            took = time.monotonic_ns() - started
            due = max(due + interval_ns, started + (3 * took if took > interval_ns else 0))
            self._stop.wait(max(0, due - time.monotonic_ns()) / 1e9)

    def sample(self) -> None:
        """One row per sampled queue and interface, from a qdisc dump and a link dump per node."""
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        for node, intfs in self._nodes:
            reader = self._counters[node.name]
            queues, counters = reader.read_queues(), reader.read_links()
            t_s = self.declared_s(time.monotonic_ns())
            for intf, peer, dci in intfs:
                q = queues[intf.index]
                rate_bps = intf.shape.bw_mbps * 1e6
                delay_ms = q["backlog_bytes"] * 8e3 / rate_bps
                self.queues.append([t_s, self.mode, node.name, peer, intf.name, dci, rate_bps, q["backlog_bytes"],
                                    q["backlog_packets"], delay_ms, q["sent_bytes"], q["sent_packets"], q["drops"],
                                    q["ecn_marks"]])
                if dci is not None:
                    self._update_live((node.name, peer), t_s, rate_bps, delay_ms, q)
                c = counters[intf.index]
                self.links.append([t_s, self.mode, node.name, peer, intf.name, dci, c["tx_bytes"], c["tx_packets"],
                                   c["rx_bytes"], c["rx_packets"]])
        self._ticks_ms.append((time.perf_counter_ns() - wall) / 1e6)
        self._cpu_ns += time.thread_time_ns() - cpu
        self._wall_ns = time.monotonic_ns() - self.t0_ns

    def declared_s(self, monotonic_ns):
        """Declared seconds since the telemetry started, for a time (or a Series of times) on the run's clock."""
        return (monotonic_ns - self.t0_ns) / 1e9 / self.dilation

    # -- the ranks' rows ---------------------------------------------------------------------------------

    def on_answers(self, call: dict, answers: list[dict]) -> None:
        """Keep the flow and step rows every rank sent with its answer to ``call``, and what the measurement
        cost each rank (its CPU demand and its event loop's lateness, for ``testbed.observe.fidelity``)."""
        t_s = self.declared_s(time.monotonic_ns())
        for rank, answer in enumerate(answers):
            if answer.get("cpu"):
                self.ranks.append([t_s, self.mode, call["size_bytes"], call["in_place"], rank,
                                   *_cpu_row(answer["cpu"]), *(answer["loop"][c] for c in LOOP_COLUMNS)])
            if answer.get("flows"):
                self.flows.append(self._frame(answer["flows"], answer["flow_columns"]))
            if answer.get("steps"):
                steps = self._frame(answer["steps"], answer["step_columns"])
                self.steps.append(steps.assign(size_bytes=call["size_bytes"], in_place=call["in_place"]))

    def _frame(self, rows: list[list], columns: list[str]) -> pd.DataFrame:
        frame = pd.DataFrame(rows, columns=columns)
        frame.insert(0, "mode", self.mode)
        frame.insert(0, "t_s", self.declared_s(frame.pop("t_ns")))
        return frame

    # -- results -----------------------------------------------------------------------------------------

    def frames(self) -> dict[str, pd.DataFrame]:
        flows = pd.concat(self.flows, ignore_index=True) if self.flows else pd.DataFrame()
        steps = pd.concat(self.steps, ignore_index=True) if self.steps else pd.DataFrame()
        # the sampler thread may append while this runs: a slice is copied whole under the GIL
        return {"queues": pd.DataFrame(self.queues[:], columns=QUEUE_COLUMNS),
                "links": pd.DataFrame(self.links[:], columns=LINK_COLUMNS), "flows": flows, "steps": steps,
                "ranks": pd.DataFrame(self.ranks[:], columns=RANK_COLUMNS)}

    def overhead(self) -> dict:
        """What sampling cost: CPU share of the sampler thread, time per sample, late samples."""
        ticks = np.array(self._ticks_ms) if self._ticks_ms else np.array([np.nan])
        achieved = self._wall_ns / 1e6 / max(1, len(self._ticks_ms) - 1)
        return {"interval_ms": self.interval_s * 1e3, "achieved_interval_ms": achieved, "scope": self.scope,
                "samples": len(self._ticks_ms),
                "queues_per_sample": sum(len(intfs) for _, intfs in self._nodes),
                "tick_ms_p50": float(np.median(ticks)), "tick_ms_p99": float(np.percentile(ticks, 99)),
                "cpu_pct": 100 * self._cpu_ns / self._wall_ns if self._wall_ns else float("nan"),
                "late_pct": 100 * self._late / max(1, len(self._ticks_ms)), "t0_monotonic_ns": self.t0_ns}

    def save(self, out: Path) -> list[Path]:
        """``out/telemetry/{queues,links,flows,steps,ranks}.parquet``, ``sampler.json`` (interval, overhead) and
        ``out/fidelity.csv`` (the verdict per mode)."""
        directory = Path(out) / "telemetry"
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, frame in self.frames().items():
            frame.to_parquet(directory / f"{name}.parquet", index=False)
            written.append(directory / f"{name}.parquet")
        (directory / "sampler.json").write_text(json.dumps(self.overhead(), indent=2))
        pd.DataFrame([v.row() for v in self.verdicts()]).to_csv(Path(out) / "fidelity.csv", index=False)
        return [*written, directory / "sampler.json", Path(out) / "fidelity.csv"]

    def verdicts(self) -> list[fidelity.Verdict]:
        """Was each mode so far faithful (``testbed.observe.fidelity``)?"""
        frames = self.frames()
        return fidelity.verdicts(frames["queues"], frames["ranks"], self.overhead(), shortest_rtt_s(self.tb),
                                 self.dilation, data_frame_bytes())

    def latest(self) -> list[dict]:
        """Per DCI egress, over the last sample interval: utilisation, queue delay, marks and drops per second."""
        return [dict(self._live[key], egress=f"{key[0]}->{key[1]}") for key in sorted(self._live)]

    def _update_live(self, egress: tuple[str, str], t_s: float, rate_bps: float, delay_ms: float,
                     queue: dict) -> None:
        """The live view's row for ``egress``, from this sample of its queue and the one before."""
        before = self._previous.get(egress)
        self._previous[egress] = (t_s, queue)
        if before is None or t_s <= before[0]:
            return
        dt, earlier = t_s - before[0], before[1]
        self._live[egress] = {"util_pct": 100 * (queue["sent_bytes"] - earlier["sent_bytes"]) * 8 / dt / rate_bps,
                              "queue_ms": delay_ms,
                              "drops_per_s": (queue["drops"] - earlier["drops"]) / dt,
                              "marks_per_s": (queue["ecn_marks"] - earlier["ecn_marks"]) / dt}


def shortest_rtt_s(tb) -> float | None:
    """The fabric's shortest declared propagation RTT between two sites' hosts (None: a single site, or 0 km)."""
    firsts = [tb.hosts(site.name)[0].name for site in tb.topo.fabric.sites]
    rtts = [2 * path_delay_ms(tb.graph, a, b) / 1e3 for i, a in enumerate(firsts) for b in firsts[i + 1:]]
    return min(rtts) if rtts and min(rtts) > 0 else None


def _cpu_row(cpu: dict) -> tuple:
    """wall_ms, cpu_ms, wait_ms (NaN where the kernel keeps no run-queue time) and the CPU demand: the share of
    the wall time the rank was on a CPU or waiting for one (wall time: what the emulator's host spent)."""
    wait = np.nan if cpu["wait_ns"] is None else cpu["wait_ns"]
    wall = max(cpu["wall_ns"], 1)
    return cpu["wall_ns"] / 1e6, cpu["run_ns"] / 1e6, wait / 1e6, (cpu["run_ns"] + np.nan_to_num(wait)) / wall


def _peer(intf) -> str:
    link = intf.link
    return (link.intf2 if link.intf1 is intf else link.intf1).node.name
