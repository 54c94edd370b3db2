"""Near-source feedback's agent on frames built as the transport builds them: which flow a CE-marked packet
belongs to, the CNP its sender gets (parsed back by the sender's own parser), pacing, and the BPF filter
against tcpdump's compilation of the same expression."""

import contextlib
import socket
import struct
import subprocess
import time

from testbed.collective.near_source import CE_FILTER, SNAPLEN, NearSourceAgent, ipv4_udp, marked_socket
from testbed.collective.qp_numbers import receiver_qpn, sender_qpn
from testbed.roce.rocev2 import (
    CE,
    ROCEV2_UDP_PORT,
    Flow,
    Kind,
    build_ack,
    build_cnp,
    build_data,
    build_nak,
    ip_tos,
    parse,
)

ADDRESSES = ["10.1.0.1", "10.1.0.5", "10.2.0.1", "10.2.0.5"]  # ranks 0, 1 west; 2, 3 east
NCHANNELS = 2
US = 1_000


def frame(src_rank: int, dst_rank: int, channel: int, tos: int) -> bytes:
    """What the tap on the west border's DCI interface captures of a data packet (first SNAPLEN bytes)."""
    src, dst = ADDRESSES[src_rank], ADDRESSES[dst_rank]
    payload = build_data(Flow(src, dst, ROCEV2_UDP_PORT), dqpn=receiver_qpn(src_rank, channel, len(ADDRESSES)),
                         psn=7, msg_id=1, offset=0, msg_len=100, payload=bytes(100), timestamp_ns=0)
    ethernet = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", 0x0800)
    return (ethernet + ipv4_udp(src, dst, ROCEV2_UDP_PORT, ROCEV2_UDP_PORT, tos, payload))[:SNAPLEN]


CE_DATA = ip_tos(Kind.DATA) | CE


def test_a_marked_packet_draws_the_cnp_its_receiver_would_send_addressed_to_the_senders_qp():
    agent = NearSourceAgent(ADDRESSES, NCHANNELS, interval_ns=50 * US)
    packet, to = agent.on_marked(frame(1, 2, channel=1, tos=CE_DATA), now_ns=1_000)
    assert to == ADDRESSES[1]
    version_ihl, tos, length, ip_id, flags, _, protocol, _, src, dst = struct.unpack_from("!BBHHHBBH4s4s", packet)
    assert (version_ihl, ip_id, flags, protocol, length) == (0x45, 0, 0x4000, socket.IPPROTO_UDP, len(packet))
    assert (socket.inet_ntoa(src), socket.inet_ntoa(dst), tos) == (ADDRESSES[2], ADDRESSES[1], ip_tos(Kind.CNP))
    sport, dport, udp_len, _ = struct.unpack_from("!HHHH", packet, 20)
    assert (sport, dport, udp_len) == (ROCEV2_UDP_PORT, ROCEV2_UDP_PORT, len(packet) - 20)
    # the sender's NIC parses it with the flow its peer's datagrams arrive on, ICRC included
    cnp = parse(packet[28:], Flow(ADDRESSES[2], ADDRESSES[1], ROCEV2_UDP_PORT))
    assert cnp.kind is Kind.CNP and cnp.dqpn == sender_qpn(2, 1, len(ADDRESSES))
    assert packet[28:] == build_cnp(Flow(ADDRESSES[2], ADDRESSES[1], ROCEV2_UDP_PORT), dqpn=cnp.dqpn)
    assert agent.counters == {"marked": 1, "cnps": 1, "unknown": 0, "first_mark_ns": 1_000, "first_cnp_ns": 1_000}


def test_cnps_are_paced_per_flow_like_the_notification_point():
    agent = NearSourceAgent(ADDRESSES, NCHANNELS, interval_ns=50 * US)
    marked = frame(0, 3, channel=0, tos=CE_DATA)
    sent = [now for now in range(0, 200 * US, 10 * US) if agent.on_marked(marked, now)]
    assert sent == [0, 50 * US, 100 * US, 150 * US]
    assert agent.on_marked(frame(0, 3, channel=1, tos=CE_DATA), 151 * US)  # another channel: another flow
    assert agent.counters["marked"] == 21 and agent.counters["cnps"] == 5


def test_packets_of_other_jobs_and_marked_acks_naks_and_cnps_draw_nothing():
    agent = NearSourceAgent(ADDRESSES[:2] + ["10.2.0.9", ADDRESSES[3]], NCHANNELS, interval_ns=0)
    assert agent.on_marked(frame(1, 2, channel=0, tos=CE_DATA), 0) is None  # 10.2.0.1 is not one of its ranks
    other_channels = NearSourceAgent(ADDRESSES, 1, interval_ns=0)
    assert other_channels.on_marked(frame(0, 2, channel=1, tos=CE_DATA), 0) is None  # QP beyond its channels
    cnp = ipv4_udp(ADDRESSES[2], ADDRESSES[0], ROCEV2_UDP_PORT, ROCEV2_UDP_PORT, ip_tos(Kind.CNP) | CE,
                   build_cnp(Flow(ADDRESSES[2], ADDRESSES[0], ROCEV2_UDP_PORT), dqpn=2))
    assert agent.on_marked((b"\x00" * 12 + b"\x08\x00" + cnp)[:SNAPLEN], 0) is None
    # east's receivers acknowledge west's senders across this egress too; their ACKs and NAKs are ECT(0)
    reply = Flow(ADDRESSES[0], ADDRESSES[2], ROCEV2_UDP_PORT)
    for payload in (build_ack(reply, dqpn=sender_qpn(2, 0, 4), psn=7, msn=1),
                    build_nak(reply, dqpn=sender_qpn(2, 0, 4), psn=7, msn=1)):
        packet = ipv4_udp(ADDRESSES[0], ADDRESSES[2], ROCEV2_UDP_PORT, ROCEV2_UDP_PORT, ip_tos(Kind.ACK) | CE, payload)
        assert agent.on_marked((b"\x00" * 12 + b"\x08\x00" + packet)[:SNAPLEN], 0) is None
    assert (agent.counters["marked"], agent.counters["unknown"], other_channels.counters["unknown"]) == (1, 1, 1)


def test_the_filter_is_tcpdumps_compilation_of_its_expression():
    """tcpdump (provisioned) compiles the expression the docstring gives; only the snap length differs."""
    out = subprocess.run(["tcpdump", "-y", "EN10MB", "-dd", "-i", "lo",
                          "ip and udp dst port 4791 and ip[1] & 3 == 3 and outbound"],
                         capture_output=True, text=True, check=True).stdout
    compiled = [tuple(int(v, 0) for v in line.strip("{}, ").split(",")) for line in out.splitlines()
                if line.startswith("{")]
    expected = [(code, jt, jf, 262144 if (code, k) == (0x06, SNAPLEN) else k) for code, jt, jf, k in CE_FILTER]
    assert compiled == expected


def test_the_socket_takes_only_outgoing_ce_marked_rocev2_packets_and_only_their_headers():
    """On this machine's own loopback (BPF and AF_PACKET need no microVM): of UDP to 4791 sent Not-ECT, ECT(0)
    and CE, and CE to another port, the tap takes the one CE packet to 4791, once (lo's incoming copy is
    not outbound), cut to SNAPLEN.  A socket bound to ETH_P_IP alone would see none: outgoing packets reach
    only taps of every protocol."""
    tap = marked_socket("lo")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for tos, port in ((0, ROCEV2_UDP_PORT), (ip_tos(Kind.DATA), ROCEV2_UDP_PORT), (CE, ROCEV2_UDP_PORT),
                          (CE, ROCEV2_UDP_PORT + 1)):
            udp.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
            udp.sendto(bytes(100), ("127.0.0.1", port))
    time.sleep(0.2)
    taken = []
    with contextlib.suppress(BlockingIOError), tap:
        while True:
            taken.append(tap.recv(4096))
    assert [(len(f), f[15] & 3, struct.unpack_from("!H", f, 36)[0]) for f in taken] == [(SNAPLEN, CE, ROCEV2_UDP_PORT)]
