"""What the packet captures of a run say about its flows, and whether the run's own telemetry agrees.

``testbed.observe.capture`` leaves headers-only pcaps of every DCI link in ``RESULTS_DIR/capture`` (``capture.json``
describes them).  From those this module derives, per queue pair seen on each captured interface,
throughput over time, the CE-marked fraction, CNPs, ACKs and NAKs, retransmissions and one-way delay, and
then compares the counts with ``RESULTS_DIR/telemetry`` (what the senders, receivers and queues counted).
Two independent views of the same packets must agree; where they do not, one of them is wrong.

Reading
    scapy's ``RawPcapReader`` streams each pcap (nanosecond or microsecond, link type Ethernet, VLAN tags
    allowed).  The fixed
    headers (Ethernet, IPv4, UDP, BTH, AETH, our 20-byte transport header) are decoded with ``struct`` by
    offset: scapy's full dissection costs ~185 us a packet (~5,400 packets/s), too slow for a capture ring
    of millions of packets, so the unit tests check this decoder field by field against scapy's ``Ether`` /
    ``IP`` / ``UDP`` / ``BTH`` / ``AETH`` layers instead (as ``testbed.roce.rocev2`` does for its fast path).
    Decoding by offset is also what a truncated packet needs: scapy's BTH takes the last 4 bytes it is
    given as the ICRC, which after truncation are transport-header or payload bytes.  Measured on this
    project's 2-core machine (one core; 500,000 128-byte records of 4 flows, ACKs among them; ``analyze``
    end to end): ~115,000 packets/s, against ~5,400 with scapy's dissection alone.
    Only IPv4/UDP packets to port 4791 whose BTH opcode is one this testbed sends count (SEND FIRST /
    MIDDLE / LAST / ONLY, ACKNOWLEDGE with an ACK or NAK syndrome, CNP); ARP, ICMP, other UDP and any other
    opcode are ignored, as is an ACKNOWLEDGE cut before its AETH (only below a 58-byte snaplen).  Sizes are
    the IPv4 total length, never the captured length.  An interface's ring files (``<intf>.pcap``,
    ``<intf>.pcap0``, ``<intf>.pcap1``, ...) are read in the order of their first packet's time (the ring
    overwrites the oldest), and packets keep the order the tap saw them in.

Direction
    One tap per link end sees both directions.  A frame whose Ethernet source is the interface's own MAC is
    leaving ``node`` for ``peer`` (direction "out", egress queue ``node->peer``); any other is arriving from
    ``peer`` (direction "in", egress queue ``peer->node``).  The delay line and the bottleneck queue sit on
    the sender's egress before the tap: a packet is seen after it queued and crossed the fibre, CE marks of
    that queue are visible and packets it dropped are never seen.

Clocks
    pcap times are CLOCK_REALTIME; ``clock_offset_ns`` (REALTIME - MONOTONIC when the capture started)
    turns them into the monotonic clock the whole run shares.  ``t_s`` is that minus the telemetry's zero
    ``t0_monotonic_ns`` (the first packet's time when null), so it lines up with the telemetry's ``t_s``.
    A data packet's one-way delay is its capture time minus the ``send_timestamp_ns`` the sender wrote
    (``time.monotonic_ns()`` of the sending host, the same clock): sending host to tap, queueing and fibre
    included.  A packet cut before the end of that timestamp has none (NA).

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

Cross-check (``cross_check``)
    Per flow row, against the sum over modes of the last sample of every (mode, rank, peer, channel, side)
    whose src/dst/dqpn match: ``data_packets`` vs sender ``packets_sent``, ``ip_bytes`` vs
    ``ip_bytes_sent``, ``retransmitted`` vs ``retransmitted_packets`` and ``ce_packets`` vs receiver
    ``ce_marked`` when the row has data packets; ``cnps`` vs ``cnps_sent`` and ``naks`` vs ``naks_sent`` when
    it has ACK/NAK/CNP packets (the reverse path crosses this tap).  ``ok`` when |capture - run| <=
    ``tolerance`` * max(|run|, 1), for every quantity.  Packets dropped before the tap make the capture
    short (the note gives the egress queue's drops); a flow the telemetry does not know has run NA, not ok.
    Per captured (interface, direction) whose egress queue has samples during the capture: CE-marked RoCE
    packets seen leaving through it vs the increase of the queue's ``ecn_marks`` (last - first sample within
    the capture).  Informational lower bound: every mark the queue made is either seen at the tap or among
    its drops, while marks made upstream in the same site only add, so ``ok`` when capture >= marks - drops
    - ``tolerance`` * max(marks, 1).

Frames (the documented schema)
    packets     one row per captured RoCE packet, in capture order per interface: ``t_s``, ``intf``,
                ``direction``, ``src``, ``dst`` (IPv4 addresses), ``ip_bytes`` (IPv4 total length), ``ecn``
                (0..3, CE = 3), ``kind`` ("data", "ack", "nak", "cnp"), ``dqpn``, ``psn``, ``send_ts_ns``
                (Int64, data only), ``owd_ms`` (NaN without timestamp), ``msg_id``, ``msg_offset`` (Int64,
                data only, NA when cut), ``sequence`` ("first", "next", "ahead", "repeat", "fill"; data
                only), ``skipped`` (Int64: PSNs an "ahead" packet skipped).
    flows       one row per (``intf``, ``src``, ``dst``, ``dqpn``) data flow (``dqpn`` NA: unattributed
                ACK/NAK/CNPs): ``direction`` and ``egress`` ("node->peer") of its data, ``sqpn`` (Int64,
                NA when ``queue_pairs`` does not list it), ``data_packets``, ``ip_bytes``, ``first_t_s``,
                ``last_t_s``, ``mbps`` (ip_bytes over first..last), ``ce_packets``, ``ce_fraction``,
                ``cnps``, ``acks``, ``naks``, ``repeats``, ``gaps``, ``fills``, ``retransmitted``,
                ``restarts``, ``owd_p50_ms``, ``owd_p99_ms``.
    throughput  per flow and ``bin_s`` bin, zero bins included between its first and last:
                ``t_s`` (bin start), ``intf``, ``src``, ``dst``, ``dqpn``, ``data_packets``, ``mbps`` (IP
                bytes of data in the bin), ``ce_fraction`` (NaN in an empty bin).
    events      per (``intf``, ``direction``) and bin, zero bins included: ``t_s``, ``intf``,
                ``direction``, ``data_packets``, ``ce_packets`` (data), ``cnps``, ``retransmitted``.
    check       ``scope``, ``quantity``, ``capture``, ``run`` (NaN: no telemetry), ``difference``
                (capture - run), ``ok``, ``note``.
"""

import json
import re
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scapy.contrib.roce import CNP_OPCODE
from scapy.error import Scapy_Exception
from scapy.utils import RawPcapNgReader, RawPcapReader

from testbed.roce import psn
from testbed.roce.rocev2 import ACKNOWLEDGE, BTH_LEN, CE, DATA_OPCODES, ROCEV2_UDP_PORT

LINKTYPE_ETHERNET = 1
ETHER_LEN = 14
ETHERTYPE_IPV4 = b"\x08\x00"
VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")  # 802.1Q and 802.1ad tags: 4 bytes before the real EtherType
VLAN_TAG_LEN = 4
IPPROTO_UDP = 17
UDP_LEN = 8

_IPV4 = struct.Struct("!BBH2xHxB2x4s4s")  # version|IHL, TOS, total length, flags|fragment, protocol, src, dst
_UDP_DPORT = struct.Struct("!2xH")
_BTH = struct.Struct("!B3xII")  # opcode, FECN|BECN|resv6 << 24 | DestQP, AckReq << 31 | PSN
_SEND_TIMESTAMP = struct.Struct("!Q")
_MSG_PLACE = struct.Struct("!II")  # msg_id, offset (after the send timestamp)
_AETH_KINDS = {0: "ack", 3: "nak"}  # AETH syndrome bits 7..5

PACKET_COLUMNS = ("t_s", "intf", "direction", "src", "dst", "ip_bytes", "ecn", "kind", "dqpn", "psn", "send_ts_ns",
                  "owd_ms", "msg_id", "msg_offset", "sequence", "skipped")
FLOW_KEY = ["intf", "src", "dst", "dqpn"]
FLOW_COLUMNS = (*FLOW_KEY, "direction", "egress", "sqpn", "data_packets", "ip_bytes", "first_t_s", "last_t_s",
                "mbps", "ce_packets", "ce_fraction", "cnps", "acks", "naks", "repeats", "gaps", "fills",
                "retransmitted", "restarts", "owd_p50_ms", "owd_p99_ms")
THROUGHPUT_COLUMNS = ("t_s", *FLOW_KEY, "data_packets", "mbps", "ce_fraction")
EVENT_COLUMNS = ("t_s", "intf", "direction", "data_packets", "ce_packets", "cnps", "retransmitted")
CHECK_COLUMNS = ("scope", "quantity", "capture", "run", "difference", "ok", "note")
# what _read_pcap yields per packet; nullable integers built straight from Python ints (float64 would round ns)
_RAW_DTYPES = (("capture_ns", "int64"), ("intf", "str"), ("direction", "str"), ("src", "str"), ("dst", "str"),
               ("ip_bytes", "int64"), ("ecn", "int64"), ("kind", "str"), ("dqpn", "int64"), ("psn", "int64"),
               ("send_ts_ns", "Int64"), ("msg_id", "Int64"), ("msg_offset", "Int64"))
UNATTRIBUTED = -1  # dqpn of a control packet no data flow claims, while grouping (QPNs are >= 0)

# (flows column, telemetry side, telemetry counter); the first four need data on the row, the rest control
DATA_CHECKS = (("data_packets", "sender", "packets_sent"), ("ip_bytes", "sender", "ip_bytes_sent"),
               ("retransmitted", "sender", "retransmitted_packets"), ("ce_packets", "receiver", "ce_marked"))
CONTROL_CHECKS = (("cnps", "receiver", "cnps_sent"), ("naks", "receiver", "naks_sent"))
RUN_ENDS = ["mode", "rank", "peer", "channel", "side"]  # one queue-pair end's counters within a mode


class AnalysisError(ValueError):
    """The results directory cannot be analysed; the one-line message names the path."""


@dataclass
class CaptureAnalysis:
    """A run's captures as frames (columns in the module docstring) and the ``capture.json`` they came from."""

    packets: pd.DataFrame
    flows: pd.DataFrame
    throughput: pd.DataFrame
    events: pd.DataFrame
    meta: dict


def analyze(results_dir: Path, bin_s: float = 0.1) -> CaptureAnalysis:
    """Read ``results_dir/capture`` and derive every frame, time binned by ``bin_s`` seconds."""
    if bin_s <= 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    capture_dir = Path(results_dir) / "capture"
    meta = load_meta(capture_dir)
    packets = read_packets(capture_dir, meta)
    return CaptureAnalysis(packets, flow_table(packets, meta), throughput_table(packets, bin_s),
                           event_table(packets, bin_s), meta)


def load_meta(capture_dir: Path) -> dict:
    """``capture.json``, or AnalysisError when the capture or its description is missing or unreadable."""
    path = Path(capture_dir) / "capture.json"
    if not Path(capture_dir).is_dir():
        raise AnalysisError(f"no capture directory {capture_dir}")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnalysisError(f"no capture description {path}") from None
    except (OSError, ValueError) as error:
        raise AnalysisError(f"unreadable capture description {path}: {error}") from None
    for key in ("clock_offset_ns", "interfaces"):
        if meta.get(key) is None:
            raise AnalysisError(f"capture description {path} lacks {key}")
    return meta


def read_packets(capture_dir: Path, meta: dict) -> pd.DataFrame:
    """Every RoCE packet of every listed interface's pcaps, decoded, timed and sequenced (see module docstring)."""
    rows = []
    for interface in meta["interfaces"]:
        own_mac = bytes.fromhex(interface["mac"].replace(":", ""))
        for path in pcap_files(Path(capture_dir), interface["intf"]):
            rows.extend(_read_pcap(path, interface["intf"], own_mac))
    columns = zip(*rows) if rows else ([] for _ in _RAW_DTYPES)
    raw = pd.DataFrame({name: pd.array(values, dtype=dtype) for (name, dtype), values in zip(_RAW_DTYPES, columns)})
    return _sequenced(_timed(raw, meta))


def pcap_files(capture_dir: Path, intf: str) -> list[Path]:
    """``intf``'s ring files, oldest first (by first packet: a ring overwrites its oldest file); empty ones last."""
    pattern = re.compile(rf"{re.escape(intf)}\.pcap\d*")
    files = [path for path in capture_dir.iterdir() if pattern.fullmatch(path.name)]
    if not files:
        raise AnalysisError(f"no pcap for interface {intf} in {capture_dir}")
    starts = {path: _first_time_ns(path) for path in files}
    return sorted(files, key=lambda path: (starts[path] is None, starts[path] or 0, path.name))


def _first_time_ns(path: Path) -> int | None:
    with _open_pcap(path) as reader:
        for _, header in reader:
            return _time_ns(reader, header)
    return None


@contextmanager
def _open_pcap(path: Path) -> Iterator[RawPcapReader]:
    """A streaming reader of an Ethernet pcap, or AnalysisError naming ``path``.  The file is opened here so
    it is closed even when scapy rejects it."""
    try:
        stream = open(path, "rb")
    except OSError as error:
        raise AnalysisError(f"unreadable pcap {path}: {error.strerror}") from None
    with stream:
        try:
            reader = RawPcapReader(stream)
        except (Scapy_Exception, EOFError) as error:
            raise AnalysisError(f"unreadable pcap {path}: {error}") from None
        if isinstance(reader, RawPcapNgReader):
            raise AnalysisError(f"unreadable pcap {path}: pcapng is not supported (tcpdump -w writes pcap)")
        if reader.linktype != LINKTYPE_ETHERNET:
            raise AnalysisError(f"unreadable pcap {path}: link type {reader.linktype}, not Ethernet")
        yield reader


def _time_ns(reader: RawPcapReader, header) -> int:
    """A record's capture time in ns (the reader's ``usec`` field holds ns in a nanosecond pcap)."""
    return header.sec * 1_000_000_000 + (header.usec if reader.nano else header.usec * 1000)


def _read_pcap(path: Path, intf: str, own_mac: bytes) -> list[tuple]:
    rows = []
    with _open_pcap(path) as reader:
        for frame, header in reader:
            fields = decode(frame)
            if fields is not None:
                direction = "out" if frame[6:12] == own_mac else "in"
                rows.append((_time_ns(reader, header), intf, direction, *fields))
    return rows


_addresses: dict[bytes, str] = {}


def _address(packed: bytes) -> str:
    """Dotted IPv4 address, cached: a capture holds few addresses and millions of packets."""
    text = _addresses.get(packed)
    if text is None:
        text = _addresses[packed] = socket.inet_ntoa(packed)
    return text


def decode(frame: bytes) -> tuple | None:
    """(src, dst, ip_bytes, ecn, kind, dqpn, psn, send_ts_ns, msg_id, msg_offset) of a captured RoCEv2
    Ethernet frame, fields cut by the snaplen None; None for any other frame."""
    ip = ETHER_LEN
    while frame[ip - 2:ip] in VLAN_TPIDS:
        ip += VLAN_TAG_LEN
    if frame[ip - 2:ip] != ETHERTYPE_IPV4 or len(frame) < ip + _IPV4.size:
        return None
    version_ihl, tos, ip_bytes, fragment, protocol, src, dst = _IPV4.unpack_from(frame, ip)
    if version_ihl >> 4 != 4 or protocol != IPPROTO_UDP or fragment & 0x1FFF:
        return None
    udp = ip + (version_ihl & 0x0F) * 4
    bth = udp + UDP_LEN
    if len(frame) < bth + BTH_LEN or _UDP_DPORT.unpack_from(frame, udp)[0] != ROCEV2_UDP_PORT:
        return None
    opcode, qp_word, psn_word = _BTH.unpack_from(frame, bth)
    after = bth + BTH_LEN
    send_ts_ns = msg_id = msg_offset = None
    if opcode in DATA_OPCODES:
        kind = "data"
        if len(frame) >= after + _SEND_TIMESTAMP.size:
            (send_ts_ns,) = _SEND_TIMESTAMP.unpack_from(frame, after)
        if len(frame) >= after + _SEND_TIMESTAMP.size + _MSG_PLACE.size:
            msg_id, msg_offset = _MSG_PLACE.unpack_from(frame, after + _SEND_TIMESTAMP.size)
    elif opcode == ACKNOWLEDGE and len(frame) > after:
        kind = _AETH_KINDS.get(frame[after] >> 5)
    elif opcode == CNP_OPCODE:
        kind = "cnp"
    else:
        return None
    if kind is None:
        return None
    return (_address(src), _address(dst), ip_bytes, tos & 0b11, kind, qp_word & psn.PSN_MASK,
            psn_word & psn.PSN_MASK, send_ts_ns, msg_id, msg_offset)


def _timed(raw: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Capture times as the run's ``t_s`` and the data packets' one-way delay (integer ns: float64 cannot
    hold a ns wall-clock time)."""
    monotonic_ns = raw["capture_ns"] - int(meta["clock_offset_ns"])
    t0_ns = meta.get("t0_monotonic_ns")
    if t0_ns is None:
        t0_ns = int(monotonic_ns.min()) if len(raw) else 0
    return raw.drop(columns="capture_ns").assign(
        t_s=(monotonic_ns - int(t0_ns)) / 1e9,
        owd_ms=((monotonic_ns - raw["send_ts_ns"]) / 1e6).astype("float64"))


def _sequenced(packets: pd.DataFrame) -> pd.DataFrame:
    """Add ``sequence`` and ``skipped``: each data packet's place in its flow's PSN order (module docstring)."""
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
    flows["egress"] = [_egress(meta, intf, direction) for intf, direction in zip(flows["intf"], flows["direction"])]
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


def _egress(meta: dict, intf: str, direction: str) -> str:
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
    """Per (src, dst, dqpn): ``side``'s final counters summed over modes (and ends, were there several)."""
    ends = flows[flows["side"] == side].sort_values("t_s", kind="stable")
    finals = ends.groupby(RUN_ENDS, dropna=False).tail(1)
    totals = finals.groupby(["src", "dst", "dqpn"])[counters].sum()
    return {(src, dst, int(dqpn)): row for (src, dst, dqpn), row in totals.iterrows()}


def _flow_rows(analysis: CaptureAnalysis, flows: pd.DataFrame, drops: dict, tolerance: float) -> list[dict]:
    totals = {side: _run_totals(flows, side, [counter for _, s, counter in DATA_CHECKS + CONTROL_CHECKS if s == side])
              for side in ("sender", "receiver")}
    kernel_drops = analysis.meta.get("kernel_drops") or {}
    rows = []
    for flow in analysis.flows.itertuples(index=False):
        dqpn = None if pd.isna(flow.dqpn) else int(flow.dqpn)
        scope = f"{flow.intf} {flow.src}->{flow.dst} qp {'?' if dqpn is None else dqpn}"
        checks = (DATA_CHECKS if flow.data_packets else ()) + (CONTROL_CHECKS if flow.acks + flow.naks + flow.cnps
                                                              else ())
        for column, side, counter in checks:
            total = totals[side].get((flow.src, flow.dst, dqpn))
            captured = getattr(flow, column)
            if total is None:
                unknown = "no telemetry for this queue pair" if dqpn is not None else "no queue pair claims these"
                rows.append(_row(scope, column, captured, float("nan"), False, unknown))
                continue
            run = float(total[counter])
            # data leaves through the flow's egress; its ACKs, NAKs and CNPs come back through the opposite one
            egress = _reverse(flow.egress) if (column, side, counter) in CONTROL_CHECKS else flow.egress
            note = _shortfall_note(captured, run, column, drops.get(egress), kernel_drops.get(flow.intf))
            rows.append(_row(scope, column, captured, run, abs(captured - run) <= tolerance * max(abs(run), 1), note))
    return rows


def _shortfall_note(captured: float, run: float, column: str, egress_drops: float | None,
                    kernel_drops: int | None) -> str:
    """Why the capture may hold fewer packets than the run counted."""
    reasons = []
    if captured < run and egress_drops:
        reasons.append(f"the egress queue dropped {egress_drops:g} packets before the tap (RED drops "
                       "Not-ECT ACKs and NAKs where it marks data)")
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
        egress = _egress(analysis.meta, intf, direction)
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


def save(analysis: CaptureAnalysis, check: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The frames under ``out_dir`` (RESULTS_DIR/analysis): small ones as CSV, long ones as Parquet."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (("flows.csv", analysis.flows), ("crosscheck.csv", check)):
        frame.to_csv(out_dir / name, index=False)
        written.append(out_dir / name)
    for name, frame in (("throughput.parquet", analysis.throughput), ("events.parquet", analysis.events),
                        ("packets.parquet", analysis.packets)):
        frame.to_parquet(out_dir / name, index=False)
        written.append(out_dir / name)
    return written
