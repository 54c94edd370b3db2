"""RoCEv2 wire format: the fast path is byte-identical to scapy's RoCE layers, parses back, rejects what it
must, and is what tshark decodes as InfiniBand."""

import random
import re
import shutil
import socket
import struct
import subprocess

import pytest
from scapy.all import IP, UDP, Ether, Raw, raw, wrpcap
from scapy.contrib.roce import AETH, BTH, CNPPadding, cnp

from testbed.roce.rocev2 import (
    IB_MTUS,
    Flow,
    Kind,
    MalformedPacket,
    RocePacket,
    build_ack,
    build_cnp,
    build_data,
    build_nak,
    check_mtu,
    configure_socket,
    data_capacity,
    ip_tos,
    largest_mtu_for,
    parse,
    to_scapy,
)

FLOW = Flow("10.0.1.2", "10.0.2.3", 49152)
# IB spec opcode table (RC): written out here rather than taken from the module under test
OPCODE = {"first": 0x00, "middle": 0x01, "last": 0x02, "only": 0x04}
ACK, CNP = 0x11, 0x81


def random_flow(rng: random.Random) -> Flow:
    def address() -> str:
        return ".".join(str(rng.randrange(256)) for _ in range(4))
    return Flow(address(), address(), rng.randrange(65536), rng.choice([4791, rng.randrange(65536)]),
                ip_id=rng.randrange(65536), dont_fragment=rng.random() < 0.5)


def scapy_udp_payload(flow: Flow, layers, rng: random.Random | None = None) -> bytes:
    """What scapy puts after the IP and UDP headers; TTL and TOS vary to show the ICRC masks them."""
    rng = rng or random.Random(0)
    ip = IP(src=flow.src_ip, dst=flow.dst_ip, id=flow.ip_id, flags="DF" if flow.dont_fragment else 0,
            ttl=rng.randrange(1, 256), tos=rng.randrange(256))
    return raw(ip / UDP(sport=flow.src_port, dport=flow.dst_port) / layers)[28:]


def random_data(rng: random.Random) -> tuple[dict, RocePacket]:
    """Fields for build_data at a random place of a random message, and the packet parse must return."""
    mtu = rng.choice(IB_MTUS)
    capacity = mtu - 20
    place = rng.choice(list(OPCODE))
    size = capacity if place in ("first", "middle") else rng.randint(place == "last", capacity)
    offset = 0 if place in ("first", "only") else capacity * rng.randint(1, 5)
    msg_len = offset + size + (rng.randint(1, 3 * capacity) if place in ("first", "middle") else 0)
    fields = dict(dqpn=rng.randrange(2**24), psn=rng.randrange(2**24), msg_id=rng.randrange(2**32), offset=offset,
                  msg_len=msg_len, payload=rng.randbytes(size), timestamp_ns=rng.randrange(2**64),
                  ackreq=rng.random() < 0.5)
    packet = RocePacket(Kind.DATA, OPCODE[place], fields["dqpn"], fields["psn"], fields["ackreq"],
                        timestamp_ns=fields["timestamp_ns"], msg_id=fields["msg_id"], offset=offset, msg_len=msg_len,
                        payload=fields["payload"])
    return fields | {"mtu": mtu}, packet


def scapy_data(packet: RocePacket):
    pad = -len(packet.payload) % 4
    header = struct.pack("!QIII", packet.timestamp_ns, packet.msg_id, packet.offset, packet.msg_len)
    return (BTH(opcode=packet.opcode, dqpn=packet.dqpn, psn=packet.psn, ackreq=int(packet.ackreq), padcount=pad)
            / Raw(header + packet.payload + bytes(pad)))


def test_fast_data_packets_are_byte_identical_to_scapy_and_parse_back():
    rng = random.Random(1)
    for _ in range(150):
        flow = random_flow(rng)
        fields, packet = random_data(rng)
        fast = build_data(flow, **fields)
        assert fast == scapy_udp_payload(flow, scapy_data(packet), rng)
        assert fast == raw(to_scapy(packet, flow))[28:]
        assert parse(fast, flow) == packet


@pytest.mark.parametrize(("build", "kind", "syndrome"), [(build_ack, Kind.ACK, 0x1F), (build_nak, Kind.NAK, 0x60)])
def test_fast_acks_and_naks_are_byte_identical_to_scapy_and_parse_back(build, kind, syndrome):
    rng = random.Random(2)
    for _ in range(150):
        flow = random_flow(rng)
        dqpn, psn, msn = (rng.randrange(2**24) for _ in range(3))
        fast = build(flow, dqpn=dqpn, psn=psn, msn=msn)
        assert len(fast) == 12 + 4 + 4
        assert fast == scapy_udp_payload(flow, BTH(opcode=ACK, dqpn=dqpn, psn=psn) / AETH(syndrome=syndrome, msn=msn),
                                         rng)
        packet = RocePacket(kind, ACK, dqpn, psn, msn=msn, syndrome=syndrome)
        assert parse(fast, flow) == packet
        assert raw(to_scapy(packet, flow))[28:] == fast


def test_fast_cnps_are_byte_identical_to_scapy_and_parse_back():
    rng = random.Random(3)
    for _ in range(150):
        flow = random_flow(rng)
        dqpn = rng.randrange(2**24)
        fast = build_cnp(flow, dqpn=dqpn)
        assert len(fast) == 12 + 16 + 4
        assert fast[4] == 0x40  # BECN set, FECN clear
        assert fast == scapy_udp_payload(flow, cnp(dqpn), rng)
        assert parse(fast, flow) == RocePacket(Kind.CNP, CNP, dqpn, 0)


def test_delay_reports_are_cnps_carrying_the_delay_in_the_reserved_bytes_as_scapy_builds_them():
    rng = random.Random(5)
    for _ in range(50):
        flow = random_flow(rng)
        dqpn, delay = rng.randrange(2**24), rng.randrange(1, 2**64)
        fast = build_cnp(flow, dqpn=dqpn, queue_delay_ns=delay)
        assert fast[:12] == build_cnp(flow, dqpn=dqpn)[:12] and int.from_bytes(fast[12:20], "big") == delay
        reference = BTH(opcode=CNP, becn=1, dqpn=dqpn) / CNPPadding(reserved1=delay)
        assert fast == scapy_udp_payload(flow, reference, rng)
        packet = parse(fast, flow)
        assert (packet.kind, packet.dqpn, packet.queue_delay_ns) == (Kind.CNP, dqpn, delay)
        assert raw(to_scapy(packet, flow))[28:] == fast
    with pytest.raises(ValueError, match=r"^queue_delay_ns must be in \[0, 18446744073709551615\], got -1$"):
        build_cnp(FLOW, dqpn=1, queue_delay_ns=-1)


def test_cnp_matches_the_published_reference_example():
    # Built on the RoCEv2 CNP example Mellanox published (IPv4 22.22.22.8 -> 22.22.22.7, ID 0x98c6, DF, UDP
    # 56238 -> 4791, destination QP 0xd2); the hex is libconntrack-cm's test vector for it.
    expected = bytes.fromhex("8100ffff400000d2" "00000000" + "00" * 16 + "dafc1bef")
    flow = Flow("22.22.22.8", "22.22.22.7", 56238, ip_id=0x98C6)
    assert build_cnp(flow, dqpn=0xD2) == expected


def small_packets() -> list[bytes]:
    data = build_data(FLOW, dqpn=0xABCDE, psn=77, msg_id=9, offset=0, msg_len=5, payload=b"hello", timestamp_ns=123)
    return [data, build_ack(FLOW, dqpn=5, psn=6, msn=7), build_nak(FLOW, dqpn=5, psn=6, msn=7),
            build_cnp(FLOW, dqpn=5)]


@pytest.mark.parametrize("packet", small_packets(), ids=["data", "ack", "nak", "cnp"])
def test_every_flipped_bit_breaks_the_icrc_except_the_variant_becn_byte(packet):
    original = parse(packet, FLOW)
    for bit in range(len(packet) * 8):
        corrupted = bytearray(packet)
        corrupted[bit // 8] ^= 1 << bit % 8
        if bit // 8 == 4:  # FECN, BECN and reserved bits: masked out of the ICRC by the spec
            assert parse(bytes(corrupted), FLOW) == original
        else:
            with pytest.raises(MalformedPacket, match="bad ICRC"):
                parse(bytes(corrupted), FLOW)


@pytest.mark.parametrize("other", [Flow("10.0.1.9", "10.0.2.3", 49152), Flow("10.0.1.2", "10.0.2.3", 49153),
                                   Flow("10.0.1.2", "10.0.2.3", 49152, ip_id=1),
                                   Flow("10.0.1.2", "10.0.2.3", 49152, dont_fragment=False)])
def test_icrc_covers_addresses_ports_id_and_df(other):
    with pytest.raises(MalformedPacket, match=r"bad ICRC 0x[0-9a-f]{8}, expected 0x[0-9a-f]{8}"):
        parse(build_ack(FLOW, dqpn=1, psn=2, msn=3), other)


def header(offset: int, msg_len: int) -> bytes:
    return struct.pack("!QIII", 1, 2, offset, msg_len)


MALFORMED = [
    ("0 bytes is too short for a BTH and ICRC", b""),
    ("15 bytes is too short", bytes(15)),
    ("unsupported BTH opcode 0x0a", scapy_udp_payload(FLOW, BTH(opcode=0x0A) / Raw(bytes(16)))),
    ("transport header version 1 is not 0", scapy_udp_payload(FLOW, BTH(opcode=ACK, version=1) / AETH())),
    ("ACK/NAK must be 20 bytes, got 24", scapy_udp_payload(FLOW, BTH(opcode=ACK) / AETH() / Raw(b"abcd"))),
    ("unsupported AETH syndrome 0x20", scapy_udp_payload(FLOW, BTH(opcode=ACK) / AETH(syndrome=0x20))),
    ("CNP must be 32 bytes, got 24", scapy_udp_payload(FLOW, BTH(opcode=CNP) / Raw(bytes(8)))),
    ("no room for the 20-byte transport header", scapy_udp_payload(FLOW, BTH(opcode=4) / Raw(bytes(8)))),
    ("with pad count 3 has no room", scapy_udp_payload(FLOW, BTH(opcode=4, padcount=3) / Raw(header(0, 1) + b"\0"))),
    ("8 bytes at offset 10 overrun", scapy_udp_payload(FLOW, BTH(opcode=2) / Raw(header(10, 12) + bytes(8)))),
    ("opcode 0x01 contradicts offset 0", scapy_udp_payload(FLOW, BTH(opcode=1) / Raw(header(0, 100) + bytes(8)))),
    ("opcode 0x04 contradicts offset 8", scapy_udp_payload(FLOW, BTH(opcode=4) / Raw(header(8, 16) + bytes(8)))),
]


@pytest.mark.parametrize(("message", "udp_payload"), MALFORMED, ids=[message for message, _ in MALFORMED])
def test_malformed_packets_raise_a_one_line_error(message, udp_payload):
    with pytest.raises(MalformedPacket, match=re.escape(message)) as error:
        parse(udp_payload, FLOW)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


def test_mtu_must_be_an_ib_mtu():
    assert [check_mtu(mtu) for mtu in IB_MTUS] == [256, 512, 1024, 2048, 4096]
    assert data_capacity() == 4076 and data_capacity(256) == 236
    for bad in (0, 1500, 9000, 4097):
        with pytest.raises(ValueError, match=f"IB MTU must be one of 256, 512, 1024, 2048, 4096; got {bad}"):
            build_data(FLOW, dqpn=1, psn=1, msg_id=1, offset=0, msg_len=4, payload=b"abcd", timestamp_ns=1, mtu=bad)


def test_largest_mtu_for_a_link_leaves_room_for_the_headers():
    # IPv4 20 + UDP 8 + BTH 12 + ICRC 4 on top of the IB payload
    assert largest_mtu_for(1500) == 1024
    assert largest_mtu_for(9000) == 4096
    assert largest_mtu_for(4140) == 4096 and largest_mtu_for(4139) == 2048
    with pytest.raises(ValueError, match="link MTU 299 is below 300"):
        largest_mtu_for(299)


@pytest.mark.parametrize(("fields", "message"), [
    (dict(payload=bytes(1005), msg_len=2000, mtu=1024), "1005 payload bytes exceed the 1004 a packet carries"),
    (dict(payload=bytes(100), msg_len=2000, mtu=1024), "must be full (1004 bytes), got 100"),
    (dict(payload=bytes(10), msg_len=20, offset=15), "payload of 10 bytes at offset 15 does not fit"),
    (dict(dqpn=2**24), "dqpn must be in [0, 16777215]"),
    (dict(psn=-1), "psn must be in"),
    (dict(msg_id=2**32), "msg_id must be in"),
])
def test_build_rejects_bad_fields(fields, message):
    arguments = dict(dqpn=1, psn=1, msg_id=1, offset=0, msg_len=4, payload=b"abcd", timestamp_ns=1) | fields
    with pytest.raises(ValueError, match=re.escape(message)):
        build_data(FLOW, **arguments)


@pytest.mark.parametrize(("arguments", "message"), [
    (("10.0.0.300", "10.0.0.1", 1), "src_ip must be an IPv4 address, got '10.0.0.300'"),
    (("10.0.0.1", "fe80::1", 1), "dst_ip must be an IPv4 address"),
    (("10.0.0.1", "10.0.0.2", 70000), "src_port must be in [0, 65535], got 70000"),
])
def test_flow_rejects_bad_addresses(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Flow(*arguments)


def test_data_acks_and_naks_are_sent_ect0_and_cnps_ect1():
    assert ip_tos(Kind.DATA) & 0b11 == 0b10  # ECT(0)
    assert ip_tos(Kind.DATA, dscp=26) == 26 << 2 | 0b10
    assert ip_tos(Kind.ACK) & 0b11 == ip_tos(Kind.NAK) & 0b11 == 0b10  # ECT(0), as the QP sends all it sends
    assert ip_tos(Kind.CNP) & 0b11 == 0b01
    data = parse(small_packets()[0], FLOW)
    assert to_scapy(data, FLOW)[IP].tos == 0b10
    with pytest.raises(ValueError, match="dscp must be in"):
        ip_tos(Kind.DATA, dscp=64)


def frames(pcap) -> list[str]:
    """tshark's verbose decode of each frame of ``pcap``."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-V"], capture_output=True, text=True, check=True).stdout
    return re.split(r"^Frame \d+:", out, flags=re.M)[1:]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_decodes_the_fast_path_as_infiniband(tmp_path):
    flow = Flow("10.0.1.2", "10.0.2.3", 49152, ip_id=0)
    data = build_data(flow, dqpn=0xABCDE, psn=0xFFFFFE, msg_id=1, offset=0, msg_len=3000, payload=bytes(1004),
                      timestamp_ns=5, ackreq=True, mtu=1024)
    packets = [data, build_ack(flow, dqpn=0x12, psn=4242, msn=17), build_nak(flow, dqpn=0x12, psn=4243, msn=17),
               build_cnp(flow, dqpn=0xD2)]
    kinds = [Kind.DATA, Kind.ACK, Kind.NAK, Kind.CNP]
    pcap = tmp_path / "rocev2.pcap"
    wrpcap(str(pcap), [Ether() / IP(src=flow.src_ip, dst=flow.dst_ip, flags="DF", tos=ip_tos(kind))
                       / UDP(sport=flow.src_port, dport=flow.dst_port) / Raw(packet)
                       for kind, packet in zip(kinds, packets)])
    decoded = frames(pcap)
    assert len(decoded) == 4 and all("\nInfiniBand\n" in frame for frame in decoded)
    data_frame, ack_frame, nak_frame, cnp_frame = decoded
    for snippet in ("Opcode: Reliable Connection (RC) - SEND First (0)", "Destination Queue Pair: 0x0abcde",
                    "Acknowledge Request: True", "Packet Sequence Number: 16777214",
                    f"Invariant CRC: 0x{data[-4:].hex()}", "ECN: ECT(0)"):
        assert snippet in data_frame
    for snippet in ("Acknowledge (17)", "Packet Sequence Number: 4242", "Message Sequence Number: 17", "Ack"):
        assert snippet in ack_frame
    assert "Packet Sequence Number: 4243" in nak_frame and "PSN Sequence Error" in nak_frame
    assert "Destination Queue Pair: 0x0000d2" in cnp_frame and "(129)" in cnp_frame


def test_icrc_covers_the_ip_header_the_kernel_writes():
    """Send over loopback from a socket set up by configure_socket, capture the IPv4 header Linux wrote, and
    let scapy compute the ICRC over it: it must be the one the fast path put in the packet."""
    try:
        sniffer = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except PermissionError:
        pytest.skip("needs CAP_NET_RAW to read the IP header the kernel writes")
    with sniffer, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        sniffer.settimeout(2)
        receiver.settimeout(2)
        receiver.bind(("127.0.0.1", 0))
        sender.bind(("127.0.0.1", 0))
        configure_socket(sender, ip_tos(Kind.DATA))
        flow = Flow("127.0.0.1", "127.0.0.1", sender.getsockname()[1], receiver.getsockname()[1])
        packet = build_data(flow, dqpn=3, psn=9, msg_id=1, offset=0, msg_len=7, payload=b"abcdefg", timestamp_ns=5)
        sender.sendto(packet, ("127.0.0.1", flow.dst_port))
        assert receiver.recv(65536) == packet
        captured = sniffer.recv(65536)
        while captured[22:24] != flow.dst_port.to_bytes(2, "big"):
            captured = sniffer.recv(65536)
    ip = IP(captured)
    assert (ip.tos, ip.id, str(ip.flags)) == (ip_tos(Kind.DATA), 0, "DF")
    bth = BTH(captured[28:])
    bth.icrc = None  # scapy recomputes it over the captured IPv4 and UDP headers
    assert raw(IP(captured[:28]) / bth) == captured
    assert parse(captured[28:], flow).payload == b"abcdefg"
