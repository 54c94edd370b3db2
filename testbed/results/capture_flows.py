"""What a run's captured packets say per flow: each data packet's place in its flow's PSN order, the
ACKs, NAKs and CNPs sent back for it, and the flows' totals and time series.

Retransmissions
    Per flow and interface, in capture order, the "front" is the highest PSN seen (24-bit, wrap-safe via
    ``testbed.roce.psn``).  A data packet one past the front advances it ("next"); one further ahead advances it
    too but skips the PSNs between ("ahead"; ``gaps`` counts the skipped PSNs: lost before the tap, or
    reordered).  A packet that does not advance the front is a "repeat" when its PSN was already seen and a
    "fill" when it was not (skipped earlier, or before the first packet seen); ``retransmitted`` = repeats
    + fills.  Reordering (netem jitter) therefore shows as gaps and fills.  A comparison's next mode
    starts new queue pairs with the same addresses, QPNs and start PSN, so a packet behind the front that
    carries message 0 at offset 0 while the front is in a later message starts a new incarnation ("first"
    again, counted in ``restarts``) rather than being a repeat.

Attribution
    ACKs, NAKs and CNPs go from the data receiver to the data sender addressed to the sender's QP.  They
    are counted on the data flow ``queue_pairs`` names for (receiver, sender, sender's QP); failing that,
    on the one data flow of that host pair on that interface if there is exactly one; otherwise on a flow
    row with ``dqpn`` NA, so nothing is lost silently.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from testbed.results.pcap import DECODED_COLUMNS, Reading
from testbed.roce import psn
from testbed.roce.rocev2 import CE

FLOW_KEY = ["intf", "src", "dst", "dqpn"]
# The packets frame (``sequenced``): the decoded packets (``testbed.results.pcap.DECODED_COLUMNS``) and each data
# packet's ``sequence`` ("first", "next", "ahead", "repeat", "fill"; data only) and ``skipped`` (Int64: PSNs an
# "ahead" packet skipped).
PACKET_COLUMNS = (*DECODED_COLUMNS, "sequence", "skipped")
# The flows frame (``flow_table``): one row per (``intf``, ``src``, ``dst``, ``dqpn``) data flow (``dqpn`` NA:
# unattributed ACK/NAK/CNPs): ``direction`` and ``egress`` ("node->peer") of its data, ``sqpn`` (Int64, NA when
# ``queue_pairs`` does not list it), ``data_packets``, ``ip_bytes``, ``first_t_s``, ``last_t_s``, ``mbps``
# (ip_bytes over first..last), ``ce_packets``, ``ce_fraction``, ``cnps``, ``acks``, ``naks``, ``repeats``,
# ``gaps``, ``fills``, ``retransmitted``, ``restarts``, ``owd_p50_ms``, ``owd_p99_ms``.
FLOW_COLUMNS = (*FLOW_KEY, "direction", "egress", "sqpn", "data_packets", "ip_bytes", "first_t_s", "last_t_s",
                "mbps", "ce_packets", "ce_fraction", "cnps", "acks", "naks", "repeats", "gaps", "fills",
                "retransmitted", "restarts", "owd_p50_ms", "owd_p99_ms")
# The throughput frame (``throughput_table``): per flow and ``bin_s`` bin, zero bins included between its first
# and last: ``t_s`` (bin start), ``intf``, ``src``, ``dst``, ``dqpn``, ``data_packets``, ``mbps`` (IP bytes of
# data in the bin), ``ce_fraction`` (NaN in an empty bin).
THROUGHPUT_COLUMNS = ("t_s", *FLOW_KEY, "data_packets", "mbps", "ce_fraction")
# The events frame (``event_table``): per (``intf``, ``direction``) and bin, zero bins included: ``t_s``,
# ``intf``, ``direction``, ``data_packets``, ``ce_packets`` (data), ``cnps``, ``retransmitted``.
EVENT_COLUMNS = ("t_s", "intf", "direction", "data_packets", "ce_packets", "cnps", "retransmitted")
UNATTRIBUTED = -1  # dqpn of a control packet no data flow claims, while grouping (QPNs are >= 0)


@dataclass
class CaptureAnalysis:
    """A run's captures as frames and the ``capture.json`` they came from: ``packets`` as ``PACKET_COLUMNS``,
    ``flows``, ``throughput`` and ``events`` as ``FLOW_COLUMNS``, ``THROUGHPUT_COLUMNS`` and ``EVENT_COLUMNS``;
    ``reading``: what reading the pcaps met (records ignored or cut off)."""

    packets: pd.DataFrame
    flows: pd.DataFrame
    throughput: pd.DataFrame
    events: pd.DataFrame
    meta: dict
    reading: Reading


def sequenced(packets: pd.DataFrame) -> pd.DataFrame:
    """The decoded ``packets`` with ``sequence`` and ``skipped``: each data packet's place in its flow's PSN order
    (module docstring), as ``PACKET_COLUMNS``."""
    sequence = pd.Series(pd.NA, index=packets.index, dtype="string")
    skipped = pd.Series(pd.NA, index=packets.index, dtype="Int64")
    data = packets[packets["kind"] == "data"]
    for _, flow in data.groupby(FLOW_KEY, sort=False):
        labels, jumps = classify_psns(flow["psn"].tolist(), _ints(flow["msg_id"]), _ints(flow["msg_offset"]))
        sequence[flow.index] = labels
        skipped[flow.index] = jumps
    return packets.assign(sequence=sequence, skipped=skipped)[list(PACKET_COLUMNS)]


def _ints(values: pd.Series) -> list[int | None]:
    return [None if value is pd.NA else int(value) for value in values.tolist()]


def classify_psns(psns: list[int], msg_ids: list[int | None], msg_offsets: list[int | None]
                  ) -> tuple[list[str], list[int]]:
    """Each packet's place in one flow's PSN order and how many PSNs it skipped (module docstring).

    Only the PSNs skipped and not yet filled are remembered: every other PSN from the first to the front
    has been seen, so a flow of millions of packets costs no more than its holes.
    """
    labels, jumps = [], []
    front = first = front_msg = None
    holes: set[int] = set()
    for packet_psn, msg_id, msg_offset in zip(psns, msg_ids, msg_offsets):
        ahead = None if front is None else psn.diff(packet_psn, front)
        jump = 0
        if ahead is None or (ahead <= 0 and msg_id == 0 and msg_offset == 0 and front_msg not in (None, 0)):
            label, first, holes = "first", packet_psn, set()
        elif ahead == 1:
            label = "next"
        elif ahead > 1:
            label, jump = "ahead", ahead - 1
            holes.update(psn.add(front, step) for step in range(1, ahead))
        elif packet_psn in holes:
            label = "fill"
            holes.discard(packet_psn)
        elif psn.before(packet_psn, first):
            label = "fill"
            holes.update(psn.add(packet_psn, step) for step in range(1, -psn.diff(packet_psn, first)))
            first = packet_psn
        else:
            label = "repeat"
        if label in ("first", "next", "ahead"):
            front, front_msg = packet_psn, msg_id
        labels.append(label)
        jumps.append(jump)
    return labels, jumps


def flow_table(packets: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """One row per (interface, data flow): its data, the control packets sent back for it, its PSN order."""
    data = packets[packets["kind"] == "data"]
    rows = pd.concat([data.assign(ip_data=data["ip_bytes"], t_data=data["t_s"]),
                      _attributed_control(packets[packets["kind"] != "data"], data, meta.get("queue_pairs") or [])])
    rows = rows.assign(is_data=rows["kind"] == "data", is_ce=(rows["kind"] == "data") & (rows["ecn"] == CE),
                       is_cnp=rows["kind"] == "cnp", is_ack=rows["kind"] == "ack", is_nak=rows["kind"] == "nak",
                       is_repeat=rows["sequence"] == "repeat", is_fill=rows["sequence"] == "fill",
                       is_first=rows["sequence"] == "first", gap=rows["skipped"].fillna(0).astype("int64"))
    flows = rows.groupby(FLOW_KEY, sort=True).agg(
        direction=("direction", "first"), data_packets=("is_data", "sum"), ip_bytes=("ip_data", "sum"),
        first_t_s=("t_data", "min"), last_t_s=("t_data", "max"), ce_packets=("is_ce", "sum"),
        cnps=("is_cnp", "sum"), acks=("is_ack", "sum"), naks=("is_nak", "sum"), repeats=("is_repeat", "sum"),
        gaps=("gap", "sum"), fills=("is_fill", "sum"), firsts=("is_first", "sum"),
        owd_p50_ms=("owd_ms", lambda owd: owd.quantile(0.5)),
        owd_p99_ms=("owd_ms", lambda owd: owd.quantile(0.99))).reset_index()
    duration_s = flows["last_t_s"] - flows["first_t_s"]
    data_packets = flows["data_packets"].where(flows["data_packets"] > 0)
    flows = flows.assign(
        dqpn=flows["dqpn"].astype("Int64").mask(flows["dqpn"] == UNATTRIBUTED),
        ip_bytes=flows["ip_bytes"].astype("int64"),
        mbps=flows["ip_bytes"] * 8 / 1e6 / duration_s.where(duration_s > 0),
        ce_fraction=flows["ce_packets"] / data_packets, retransmitted=flows["repeats"] + flows["fills"],
        restarts=(flows["firsts"] - 1).clip(lower=0))
    flows["egress"] = [egress_of(meta, intf, direction) for intf, direction in zip(flows["intf"], flows["direction"])]
    sqpns = {(qp["src"], qp["dst"], qp["dqpn"]): qp["sqpn"] for qp in meta.get("queue_pairs") or []}
    flows["sqpn"] = pd.array([sqpns.get((src, dst, None if pd.isna(dqpn) else int(dqpn)))
                              for src, dst, dqpn in zip(flows["src"], flows["dst"], flows["dqpn"])], dtype="Int64")
    return flows[list(FLOW_COLUMNS)]


def _attributed_control(control: pd.DataFrame, data: pd.DataFrame, queue_pairs: list[dict]) -> pd.DataFrame:
    """ACK/NAK/CNP rows re-keyed to the data flow they answer, with that data's direction (see module docstring)."""
    by_queue_pair = {(qp["src"], qp["dst"], qp["sqpn"]): qp["dqpn"] for qp in queue_pairs}
    host_pair_qps = data.groupby(["intf", "src", "dst"])["dqpn"].unique()
    only_qp = {key: int(qps[0]) for key, qps in host_pair_qps.items() if len(qps) == 1}
    dqpns = []
    for intf, sender, receiver, sender_qp in zip(control["intf"], control["dst"], control["src"], control["dqpn"]):
        dqpn = by_queue_pair.get((sender, receiver, sender_qp))
        if dqpn is None:
            dqpn = only_qp.get((intf, sender, receiver), UNATTRIBUTED)
        dqpns.append(dqpn)
    return control.assign(src=control["dst"], dst=control["src"], dqpn=pd.array(dqpns, dtype="int64"),
                          direction=control["direction"].map({"in": "out", "out": "in"}))


def egress_of(meta: dict, intf: str, direction: str) -> str:
    """The queue (``node->peer``) a packet seen on ``intf`` going ``direction`` left through."""
    interface = next(i for i in meta["interfaces"] if i["intf"] == intf)
    node, peer = interface["node"], interface["peer"]
    return f"{node}->{peer}" if direction == "out" else f"{peer}->{node}"


def throughput_table(packets: pd.DataFrame, bin_s: float) -> pd.DataFrame:
    """Per data flow and time bin: IP bytes as Mbit/s and the CE-marked fraction."""
    data = packets[packets["kind"] == "data"]
    binned = data.assign(bin=_bins(data["t_s"], bin_s), is_ce=data["ecn"] == CE)
    counts = binned.groupby([*FLOW_KEY, "bin"]).agg(data_packets=("kind", "size"), ip_bytes=("ip_bytes", "sum"),
                                                   ce_packets=("is_ce", "sum")).reset_index()
    counts = _with_empty_bins(counts, FLOW_KEY)
    data_packets = counts["data_packets"].where(counts["data_packets"] > 0)
    throughput = counts.assign(t_s=_bin_starts(counts["bin"], bin_s), mbps=counts["ip_bytes"] * 8 / 1e6 / bin_s,
                               ce_fraction=counts["ce_packets"] / data_packets)
    return throughput[list(THROUGHPUT_COLUMNS)]


def event_table(packets: pd.DataFrame, bin_s: float) -> pd.DataFrame:
    """Per interface, direction and time bin: data, CE-marked data, CNPs and retransmissions seen."""
    is_data = packets["kind"] == "data"
    marked = packets.assign(bin=_bins(packets["t_s"], bin_s), is_data=is_data,
                            is_ce=is_data & (packets["ecn"] == CE), is_cnp=packets["kind"] == "cnp",
                            is_retransmitted=packets["sequence"].isin(["repeat", "fill"]))
    counts = marked.groupby(["intf", "direction", "bin"]).agg(
        data_packets=("is_data", "sum"), ce_packets=("is_ce", "sum"), cnps=("is_cnp", "sum"),
        retransmitted=("is_retransmitted", "sum")).reset_index()
    counts = _with_empty_bins(counts, ["intf", "direction"])
    return counts.assign(t_s=_bin_starts(counts["bin"], bin_s))[list(EVENT_COLUMNS)]


def _bins(t_s: pd.Series, bin_s: float) -> pd.Series:
    return np.floor(t_s / bin_s).astype("int64")


def _bin_starts(bins: pd.Series, bin_s: float) -> pd.Series:
    """Bin starts rounded to the ns, so 3 * 0.1 reads 0.3 in a CSV and compares equal to it."""
    return (bins * bin_s).round(9)


def _with_empty_bins(counts: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Zero rows for the bins without packets between a group's first and last: a stall plots as zero."""
    if counts.empty:
        return counts
    spans = counts.groupby(keys, sort=True)["bin"].agg(["min", "max"])
    index = pd.MultiIndex.from_tuples(
        [(*key, b) for key, low, high in spans.itertuples() for b in range(low, high + 1)], names=[*keys, "bin"])
    return counts.set_index([*keys, "bin"]).reindex(index, fill_value=0).reset_index()
