"""Whether a run's captures and its own telemetry (``RESULTS_DIR/telemetry``: what the senders, receivers and
queues counted) agree: two independent views of the same packets; where they do not, one of them is wrong.

Cross-check (``cross_check``)
    Per flow row, against the sum over modes of the last sample of every (mode, rank, peer, channel, side)
    whose src/dst/dqpn match: ``data_packets`` vs sender ``packets_sent``, ``ip_bytes`` vs
    ``ip_bytes_sent``, ``retransmitted`` vs ``retransmitted_packets`` and ``ce_packets`` vs receiver
    ``ce_marked`` when the row has data packets; ``cnps`` vs ``cnps_sent`` and ``naks`` vs ``naks_sent`` when
    it has ACK/NAK/CNP packets (the reverse path crosses this tap).  ``ok`` when |capture - run| <=
    ``tolerance`` * max(|run|, 1), for every quantity.  Packets dropped before the tap make the capture
    short (the note gives the egress queue's drops); a flow the telemetry does not know has run NA, not ok.
    The receiver's counters end at its last sample (a command's end), the capture runs on until the run
    stops: spurious go-back-N retransmissions still queued at the DCI when the collective completed arrive
    later, and the receiver marks and answers them unsampled (measured: 67 CE marks and CNPs, 4 % of a flow's,
    at 10 Mbit/s behind a 4 MB queue).  So CE is compared on the first data packets the tap saw, as many as
    the receiver had taken in (``TAKEN_IN``; by time, a CPU-starved receiver still held 49 marked ones in its
    socket when it sampled).  CNPs and NAKs are bounded instead: the receiver had sent at least what the
    tap saw up to that sample's time, and at most that plus what it saw later plus what the way back dropped
    before the tap, since they cross the reverse DCI queue, which can hold them for seconds (a 4 MB queue at
    10 Mbit/s: 100 of 2,572 CNPs sent before the sample reached the tap after it); the note says how many
    came after.  The sender's are complete (it sends nothing once every chunk is acknowledged).
    Per captured (interface, direction) whose egress queue has samples during the capture: CE-marked RoCE
    packets seen leaving through it vs the increase of the queue's ``ecn_marks`` (last - first sample within
    the capture).  Informational lower bound: every mark the queue made is either seen at the tap or among
    its drops, while marks made upstream in the same site only add, so ``ok`` when capture >= marks - drops
    - ``tolerance`` * max(marks, 1).
"""

import pandas as pd

from testbed.results.capture_flows import FLOW_KEY, CaptureAnalysis, egress_of, flow_table
from testbed.roce.rocev2 import CE

# The check frame (``cross_check``): ``scope``, ``quantity``, ``capture``, ``run`` (NaN: no telemetry),
# ``difference`` (capture - run), ``ok``, ``note``.
CHECK_COLUMNS = ("scope", "quantity", "capture", "run", "difference", "ok", "note")

# (flows column, telemetry side, telemetry counter); the first four need data on the row, the rest control
DATA_CHECKS = (("data_packets", "sender", "packets_sent"), ("ip_bytes", "sender", "ip_bytes_sent"),
               ("retransmitted", "sender", "retransmitted_packets"), ("ce_packets", "receiver", "ce_marked"))
CONTROL_CHECKS = (("cnps", "receiver", "cnps_sent"), ("naks", "receiver", "naks_sent"))
# what a receiver has taken in, whatever it did with each packet: its CE marks are on the first that many
TAKEN_IN = ("packets", "duplicates", "out_of_order")
RUN_ENDS = ["mode", "rank", "peer", "channel", "side"]  # one queue-pair end's counters within a mode


def cross_check(analysis: CaptureAnalysis, flows: pd.DataFrame | None, queues: pd.DataFrame | None,
                tolerance: float = 0.01) -> pd.DataFrame:
    """The capture's counts against the run's telemetry (``flows.parquet``, ``queues.parquet``), one row per
    quantity compared; rules in the module docstring."""
    drops = _queue_increases(analysis.packets, queues, "drops")
    rows = [] if flows is None else _flow_rows(analysis, flows, drops, tolerance)
    if queues is not None:
        rows += _queue_rows(analysis, _queue_increases(analysis.packets, queues, "ecn_marks"), drops, tolerance)
    return pd.DataFrame(rows, columns=list(CHECK_COLUMNS))


def _run_totals(flows: pd.DataFrame, side: str, counters: list[str]) -> dict[tuple, pd.Series]:
    """Per (src, dst, dqpn): ``side``'s final counters summed over modes (and ends, were there several), and
    ``t_s``, the time of the last of those samples."""
    ends = flows[flows["side"] == side].sort_values("t_s", kind="stable")
    finals = ends.groupby(RUN_ENDS, dropna=False).tail(1).groupby(["src", "dst", "dqpn"])
    totals = finals[counters].sum().join(finals["t_s"].max())
    return {(src, dst, int(dqpn)): row for (src, dst, dqpn), row in totals.iterrows()}


def _flow_rows(analysis: CaptureAnalysis, flows: pd.DataFrame, drops: dict, tolerance: float) -> list[dict]:
    wanted = {side: [counter for _, s, counter in DATA_CHECKS + CONTROL_CHECKS if s == side]
              + (list(TAKEN_IN) if side == "receiver" and set(TAKEN_IN) <= set(flows.columns) else [])
              for side in ("sender", "receiver")}
    totals = {side: _run_totals(flows, side, counters) for side, counters in wanted.items()}
    seen_until = _FlowsUntil(analysis)
    kernel_drops = analysis.meta.get("kernel_drops") or {}
    rows = []
    for flow in analysis.flows.itertuples(index=False):
        dqpn = None if pd.isna(flow.dqpn) else int(flow.dqpn)
        scope = f"{flow.intf} {flow.src}->{flow.dst} qp {'?' if dqpn is None else dqpn}"
        checks = (DATA_CHECKS if flow.data_packets else ()) + (CONTROL_CHECKS if flow.acks + flow.naks + flow.cnps
                                                              else ())
        for column, side, counter in checks:
            total = totals[side].get((flow.src, flow.dst, dqpn))
            if total is None:
                unknown = "no telemetry for this queue pair" if dqpn is not None else "no queue pair claims these"
                rows.append(_row(scope, column, getattr(flow, column), float("nan"), False, unknown))
                continue
            run, captured, later = float(total[counter]), getattr(flow, column), 0
            if side == "receiver" and column == "ce_packets" and set(TAKEN_IN) <= set(total.index):
                captured, later = _marks_taken_in(analysis.packets, flow, int(total[list(TAKEN_IN)].sum()))
            elif side == "receiver":
                captured, later = seen_until(flow, column, total["t_s"])
            # data leaves through the flow's egress; its ACKs, NAKs and CNPs come back through the opposite one
            egress = _reverse(flow.egress) if (column, side, counter) in CONTROL_CHECKS else flow.egress
            note = _shortfall_note(captured, run, column, drops.get(egress), kernel_drops.get(flow.intf), later)
            slack = tolerance * max(abs(run), 1)
            if (column, side, counter) in CONTROL_CHECKS:
                ok = captured - slack <= run <= captured + later + (drops.get(egress) or 0) + slack
            else:
                ok = abs(captured - run) <= slack
            rows.append(_row(scope, column, captured, run, ok, note))
    return rows


def _marks_taken_in(packets: pd.DataFrame, flow, taken: int) -> tuple[float, float]:
    """CE marks on the first ``taken`` data packets of ``flow`` the tap saw (the ones the receiver had taken in
    by its last sample: nothing is lost or reordered between the tap and it), and on the ones after."""
    data = packets[(packets["kind"] == "data") & (packets["intf"] == flow.intf) & (packets["src"] == flow.src)
                   & (packets["dst"] == flow.dst) & (packets["dqpn"] == flow.dqpn)]
    marked = (data["ecn"] == CE).to_numpy()
    return float(marked[:taken].sum()), float(marked[taken:].sum())


class _FlowsUntil:
    """A flow's captured count of a column up to a time (the flows table of the packets captured by then,
    one per distinct time), and how many more the whole capture holds."""

    def __init__(self, analysis: CaptureAnalysis) -> None:
        self.analysis = analysis
        self._tables: dict[float, pd.DataFrame] = {}

    def __call__(self, flow, column: str, t_s: float) -> tuple[float, float]:
        if t_s not in self._tables:
            packets = self.analysis.packets
            self._tables[t_s] = flow_table(packets[packets["t_s"] <= t_s], self.analysis.meta).set_index(FLOW_KEY)
        table, key = self._tables[t_s], tuple(getattr(flow, name) for name in FLOW_KEY)
        upto = float(table.loc[key, column]) if key in table.index else 0.0
        return upto, float(getattr(flow, column)) - upto


def _shortfall_note(captured: float, run: float, column: str, egress_drops: float | None,
                    kernel_drops: int | None, later: float = 0) -> str:
    """Why the capture may hold fewer packets than the run counted, and what it saw after the run's count."""
    reasons = [f"{later:g} more captured after the receiver's last sample, not compared"] if later else []
    if captured < run and egress_drops:
        reasons.append(f"the egress queue dropped {egress_drops:g} packets before the tap")
    if kernel_drops:
        reasons.append(f"tcpdump missed {kernel_drops} packets on this interface")
    return "; ".join(reasons)


def _reverse(egress: str) -> str:
    node, _, peer = egress.partition("->")
    return f"{peer}->{node}"


def _queue_increases(packets: pd.DataFrame, queues: pd.DataFrame | None, counter: str) -> dict[str, float]:
    """Per egress ``node->peer``: how much ``counter`` grew between the first and last sample within the
    capture's time span."""
    if queues is None or packets.empty:
        return {}
    during = queues[queues["t_s"].between(packets["t_s"].min(), packets["t_s"].max())].sort_values("t_s",
                                                                                                   kind="stable")
    grown = during.groupby(["node", "peer"])[counter].agg(lambda values: values.iloc[-1] - values.iloc[0])
    return {f"{node}->{peer}": float(value) for (node, peer), value in grown.items()}


def _queue_rows(analysis: CaptureAnalysis, marks: dict, drops: dict, tolerance: float) -> list[dict]:
    """CE-marked RoCE packets seen per (interface, direction) against the marks its egress queue made."""
    seen = analysis.packets.groupby(["intf", "direction"])["ecn"].agg(lambda ecn: int((ecn == CE).sum()))
    rows = []
    for (intf, direction), captured in seen.items():
        egress = egress_of(analysis.meta, intf, direction)
        if egress not in marks:
            continue
        made, dropped = marks[egress], drops.get(egress, 0.0)
        ok = captured >= made - dropped - tolerance * max(made, 1)
        rows.append(_row(f"{intf} {direction} queue {egress}", "ce_packets", captured, made, ok,
                         f"informational: upstream marks add, marked-then-dropped miss ({dropped:g} drops)"))
    return rows


def _row(scope: str, quantity: str, captured: float, run: float, ok: bool, note: str) -> dict:
    return {"scope": scope, "quantity": quantity, "capture": float(captured), "run": run,
            "difference": float(captured) - run, "ok": bool(ok), "note": note}


def disagreements(check: pd.DataFrame) -> list[str]:
    """One line per cross-check row that is not ok, for the terminal."""
    lines = []
    for row in check[~check["ok"]].itertuples(index=False):
        run = "n/a" if pd.isna(row.run) else f"{row.run:g}"
        difference = "" if pd.isna(row.difference) else f" ({row.difference:+g})"
        note = f": {row.note}" if row.note else ""
        lines.append(f"{row.scope} {row.quantity}: capture {row.capture:g}, run {run}{difference}{note}")
    return lines
