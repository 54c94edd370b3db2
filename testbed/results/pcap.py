"""Reading a run's packet captures: ``capture.json``, each interface's ring files, and their RoCE packets
decoded by offset, directed and timed on the run's clock.

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
    included.  A packet cut before the end of that timestamp has none (NA).  Both are declared times: divided
    by the run's ``dilation`` (``capture.json``; ``testbed.model.dilation``), so every rate and bin derived
    from them is declared too.
"""

import json
import os
import re
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from scapy.contrib.roce import CNP_OPCODE
from scapy.data import MTU
from scapy.error import Scapy_Exception
from scapy.utils import RawPcapNgReader, RawPcapReader

from testbed.roce import psn
from testbed.roce.rocev2 import ACKNOWLEDGE, BTH_LEN, DATA_OPCODES, ROCEV2_UDP_PORT

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

# The decoded packets (``read_packets``): one row per captured RoCE packet, in capture order per interface:
# ``t_s``, ``intf``, ``direction``, ``src``, ``dst`` (IPv4 addresses), ``ip_bytes`` (IPv4 total length), ``ecn``
# (0..3, CE = 3), ``kind`` ("data", "ack", "nak", "cnp", "delay": a CNP carrying a queueing delay, see
# ``testbed.roce.rocev2``), ``dqpn``, ``psn``, ``send_ts_ns`` (Int64, data only), ``owd_ms`` (NaN without
# timestamp), ``msg_id``, ``msg_offset`` (Int64, data only, NA when cut); the packets frame adds each data
# packet's place in its flow (``testbed.results.capture_flows.PACKET_COLUMNS``).
DECODED_COLUMNS = ("t_s", "intf", "direction", "src", "dst", "ip_bytes", "ecn", "kind", "dqpn", "psn", "send_ts_ns",
                   "owd_ms", "msg_id", "msg_offset")
# what _read_pcap yields per packet; nullable integers built straight from Python ints (float64 would round ns)
_RAW_DTYPES = (("capture_ns", "int64"), ("intf", "str"), ("direction", "str"), ("src", "str"), ("dst", "str"),
               ("ip_bytes", "int64"), ("ecn", "int64"), ("kind", "str"), ("dqpn", "int64"), ("psn", "int64"),
               ("send_ts_ns", "Int64"), ("msg_id", "Int64"), ("msg_offset", "Int64"))


class AnalysisError(ValueError):
    """The results directory cannot be analysed; the one-line message names the path."""


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
    problem = _meta_problem(meta)
    if problem:
        raise AnalysisError(f"capture description {path}: {problem}")
    return meta


_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def _meta_problem(meta) -> str | None:
    """What makes ``capture.json`` unusable (one phrase), or None: every field the analysis reads, checked
    before it reads any pcap, so a hand-edited or foreign file gets a line, not a traceback."""
    if not isinstance(meta, dict):
        return f"a JSON object expected, got {type(meta).__name__}"
    for key in ("clock_offset_ns", "interfaces"):
        if meta.get(key) is None:
            return f"lacks {key}"
    for key in ("clock_offset_ns", "t0_monotonic_ns"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{key} {value!r} is not a whole number of ns"
    dilation = meta.get("dilation", 1.0)
    if isinstance(dilation, bool) or not isinstance(dilation, int | float) or not 1 <= dilation < float("inf"):
        return f"dilation {dilation!r} is not a number >= 1"
    interfaces = meta["interfaces"]
    if not isinstance(interfaces, list) or not interfaces:
        return "interfaces must be a non-empty list"
    problem = next(filter(None, map(_interface_problem, interfaces)), None)
    if problem:
        return problem
    queue_pairs = meta.get("queue_pairs") or []
    if not isinstance(queue_pairs, list) or not all(
            isinstance(qp, dict) and all(isinstance(qp.get(k), str) for k in ("src", "dst"))
            and all(isinstance(qp.get(k), int) for k in ("sqpn", "dqpn")) for qp in queue_pairs):
        return "queue_pairs must be a list of {src, dst, sqpn, dqpn}"
    drops = meta.get("kernel_drops") or {}
    if not isinstance(drops, dict) or not all(isinstance(v, int) for v in drops.values()):
        return "kernel_drops must map interfaces to packet counts"
    return None


def _interface_problem(interface) -> str | None:
    if not isinstance(interface, dict) or not isinstance(interface.get("intf"), str):
        return f"interface {interface!r} has no name (intf)"
    if not isinstance(interface.get("mac"), str) or not _MAC.fullmatch(interface["mac"]):
        return f"interface {interface['intf']}: mac {interface.get('mac')!r} is not aa:bb:cc:dd:ee:ff"
    if not (isinstance(interface.get("node"), str) and isinstance(interface.get("peer"), str)):
        return f"interface {interface['intf']}: node and peer must be names"
    return None


@dataclass
class Reading:
    """What reading the pcaps met: ``records`` in all, ``roce`` of them decoded, ``other`` ignored (not a
    packet this testbed sends), and ``truncated``: pcap files whose last record was cut (``cut_files``,
    a capture stopped mid-write), so the analysis may lack their last packets."""

    records: int = 0
    roce: int = 0
    other: int = 0
    truncated: int = 0
    cut_files: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the terminal."""
        cut = f"; {self.truncated} cut off at the end of {', '.join(self.cut_files)}" if self.truncated else ""
        return f"read {self.records} records: {self.roce} RoCE, {self.other} other (ignored){cut}"


def read_packets(capture_dir: Path, meta: dict) -> tuple[pd.DataFrame, Reading]:
    """Every RoCE packet of every listed interface's pcaps, decoded and timed (see module docstring), as
    ``DECODED_COLUMNS``, and what reading them met."""
    rows, reading = [], Reading()
    for interface in meta["interfaces"]:
        own_mac = bytes.fromhex(interface["mac"].replace(":", ""))
        for path in pcap_files(Path(capture_dir), interface["intf"]):
            rows.extend(_read_pcap(path, interface["intf"], own_mac, reading))
    columns = zip(*rows) if rows else ([] for _ in _RAW_DTYPES)
    raw = pd.DataFrame({name: pd.array(values, dtype=dtype) for (name, dtype), values in zip(_RAW_DTYPES, columns)})
    return _timed(raw, meta)[list(DECODED_COLUMNS)], reading


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


def _read_pcap(path: Path, intf: str, own_mac: bytes, reading: Reading) -> list[tuple]:
    """The decoded RoCE rows of one pcap; counts every record in ``reading``.  A record cut short (fewer
    bytes than its header's captured length) or a partial record header after the last one means the file
    was cut mid-write: scapy reads the first as a short frame and stops silently at the second."""
    rows = []
    with _open_pcap(path) as reader:
        end = reader.f.tell()  # where the last whole record ended
        for frame, header in reader:
            end = reader.f.tell()
            reading.records += 1
            if len(frame) < min(header.caplen, MTU):
                reading.truncated += 1
                reading.cut_files.append(path.name)
                continue
            fields = decode(frame)
            if fields is None:
                reading.other += 1
                continue
            reading.roce += 1
            direction = "out" if frame[6:12] == own_mac else "in"
            rows.append((_time_ns(reader, header), intf, direction, *fields))
        if end < os.fstat(reader.f.fileno()).st_size:
            reading.truncated += 1
            reading.cut_files.append(path.name)
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
        kind = "delay" if any(frame[after:after + 8]) else "cnp"  # a delay report's queueing delay, u64
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
    dilation = float(meta.get("dilation", 1.0))
    return raw.drop(columns="capture_ns").assign(
        t_s=(monotonic_ns - int(t0_ns)) / 1e9 / dilation,
        owd_ms=((monotonic_ns - raw["send_ts_ns"]) / 1e6 / dilation).astype("float64"))
