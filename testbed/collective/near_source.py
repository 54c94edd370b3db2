"""Near-source feedback: a border router answers the CE marks of its own DCI egress with CNPs to the local
senders, so the control loop is sender-to-border (an intra-site RTT), not sender-to-receiver (a DCI RTT).

Why: with the bottleneck at the sender's own border, DCQCN's usual loop carries every mark across the DCI to
the receiver and its CNP back again: a 1000 km DCI reacts 10 ms after its queue grew, whatever the senders do.
Annulus (Saeed et al., SIGCOMM 2020) has the switches near the source send feedback straight to the senders
and reports WAN-induced datacenter tail latency cut by its loop; LRCC and THEMIS report 45-60 % lower tail
latency from near-source feedback at long distance; the IETF draft "Fast Congestion Notification Packet
(CNP) with Proxy" (draft-xiao-rtgwg-proxy-congestion-notification) specifies a switch sending the CNP on the
receiver's behalf, as here.  Here the border plays the role, with the one signal it already computes: RED's
CE mark at its DCI egress.

How (``NearSourceAgent``):
- An AF_PACKET socket on the border's DCI interface sees each packet as it leaves the egress queue, after RED
  marked it (packet taps run at transmit, after the qdisc dequeued).  A classic BPF filter passes only
  outgoing CE-marked RoCEv2 packets, their first ``SNAPLEN`` bytes, so Python wakes only for marks; it is
  tcpdump's ``ip and udp dst port 4791 and ip[1] & 3 == 3 and outbound`` as ``tcpdump -y EN10MB -dd``
  compiles it (``CE_FILTER``), kept here so the agent needs no tcpdump at run time.
- The marked packet's destination QP names its sending rank and channel (``qp_numbers``: every QP number is
  derived from the job), its addresses name both ranks; the agent sends the sender the CNP its receiver
  would: from the receiver's address and RoCE port to the sender's QP, ICRC over those headers
  (``rocev2.build_cnp``), paced per flow like DCQCN's notification point (``CnpPacer``).
- It leaves through a raw IP socket (IP_HDRINCL) of the border's namespace, so it takes the site's route
  back to the sender, never the DCI.  DF set and ID 0: with DF the kernel keeps a raw packet's ID 0, the
  value the ICRC of every testbed packet covers (``rocev2.Flow``).

The receivers stop answering CE for flows across a DCI in this mode (their CNP interval is set to None by
the fabric controller), so a mark draws one CNP, the near one.

Run as ``python -m testbed.collective.near_source`` in the border's namespace with one JSON line on stdin
(``interface``, ``addresses``, ``nchannels``, ``interval_ns`` in wall time); it serves until stdin closes,
then prints one JSON line: CE-marked packets seen, CNPs sent, unknown flows, and the monotonic times (the
clock every process of the machine shares) of the first mark seen and the first CNP sent.
"""

import ctypes
import json
import select
import socket
import struct
import subprocess
import sys
import time

from controllers.dcqcn import CnpPacer
from testbed.collective.qp_numbers import sender_qpn
from testbed.net.processes import python_module
from testbed.roce.rocev2 import DATA_OPCODES, ROCEV2_UDP_PORT, Flow, Kind, build_cnp, ip_tos

ETH_P_ALL = 0x0003  # outgoing packets reach only the taps of every protocol (dev_queue_xmit_nit)
SO_ATTACH_FILTER = 26
SNAPLEN = 64  # Ethernet, IPv4 (20), UDP (8) and the BTH's destination QP (bytes 5-7 of 12)
CE_FILTER = (  # (code, jt, jf, k); the last but one returns SNAPLEN bytes where tcpdump's returns 262144
    (0x28, 0, 0, 0x0000000C), (0x15, 0, 13, 0x00000800), (0x30, 0, 0, 0x00000017), (0x15, 0, 11, 0x00000011),
    (0x28, 0, 0, 0x00000014), (0x45, 9, 0, 0x00001FFF), (0xB1, 0, 0, 0x0000000E), (0x48, 0, 0, 0x00000010),
    (0x15, 0, 6, ROCEV2_UDP_PORT), (0x30, 0, 0, 0x0000000F), (0x54, 0, 0, 0x00000003), (0x15, 0, 3, 0x00000003),
    (0x28, 0, 0, 0xFFFFF004), (0x15, 0, 1, 0x00000004), (0x06, 0, 0, SNAPLEN), (0x06, 0, 0, 0x00000000),
)
IP_DF = 0x4000
TTL = 64
_DATA_OPCODES = frozenset(DATA_OPCODES)


class NearSourceAgent:
    """The CNPs one DCI egress's marks call for: ``on_marked`` takes a captured frame, returns the CNP to send
    (a whole IPv4 packet) and its destination, or None (paced, or not a flow of the job)."""

    def __init__(self, addresses: list[str], nchannels: int, interval_ns: int | None) -> None:
        self.rank_of = {address: rank for rank, address in enumerate(addresses)}
        self.addresses, self.nchannels, self.interval_ns = addresses, nchannels, interval_ns
        self.pacers: dict[tuple[str, int], CnpPacer] = {}
        self.counters = {"marked": 0, "cnps": 0, "unknown": 0, "first_mark_ns": None, "first_cnp_ns": None}

    def on_marked(self, frame: bytes, now_ns: int) -> tuple[bytes, str] | None:
        counters = self.counters
        udp = 14 + (frame[14] & 0x0F) * 4
        if len(frame) < udp + 8 + 8 or frame[udp + 8] not in _DATA_OPCODES:
            return None  # not data: ACKs and NAKs (ECT(0)) and CNPs (ECT(1)) crossing back are marked too
        counters["marked"] += 1
        if counters["first_mark_ns"] is None:
            counters["first_mark_ns"] = now_ns
        flow = self._flow_of(frame, udp)
        if flow is None:
            counters["unknown"] += 1
            return None
        sender, receiver, sport, dport, sqpn = flow
        pacer = self.pacers.get((sender, sqpn))
        if pacer is None:
            pacer = self.pacers[(sender, sqpn)] = CnpPacer(self.interval_ns)
        if not pacer.on_ce(now_ns):
            return None
        counters["cnps"] += 1
        if counters["first_cnp_ns"] is None:
            counters["first_cnp_ns"] = now_ns
        payload = build_cnp(Flow(src_ip=receiver, dst_ip=sender, src_port=dport, dst_port=sport), dqpn=sqpn)
        return ipv4_udp(receiver, sender, dport, sport, ip_tos(Kind.CNP), payload), sender

    def _flow_of(self, frame: bytes, udp: int) -> tuple[str, str, int, int, int] | None:
        """(sender, receiver, sender's port, receiver's port, sender's QP) of a captured data packet whose UDP
        header starts at ``udp``, or None if its addresses or QP are not the job's."""
        sender, receiver = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
        sport, dport = struct.unpack_from("!HH", frame, udp)
        dqpn = int.from_bytes(frame[udp + 8 + 5:udp + 8 + 8], "big")
        src_rank, dst_rank = self.rank_of.get(sender), self.rank_of.get(receiver)
        index, odd = divmod(dqpn - 3, 2)  # receiver_qpn(peer, channel, n) = 3 + 2 * (channel * n + peer)
        n = len(self.addresses)
        if src_rank is None or dst_rank is None or odd or index < 0 or index >= n * self.nchannels \
                or index % n != src_rank:
            return None
        return sender, receiver, sport, dport, sender_qpn(dst_rank, index // n, n)


def ipv4_udp(src: str, dst: str, sport: int, dport: int, tos: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet for a raw socket with IP_HDRINCL: the kernel fills the IP checksum; DF set, ID 0
    (kept by the kernel for DF packets), UDP checksum 0 (none, as IPv4 allows)."""
    udp_len = 8 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + udp_len, 0, IP_DF, TTL, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + struct.pack("!HHHH", sport, dport, udp_len, 0) + payload


def marked_socket(interface: str) -> socket.socket:
    """An AF_PACKET socket on ``interface`` that receives only outgoing CE-marked RoCEv2 packets."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in CE_FILTER))
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}: the kernel copies the program
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(CE_FILTER), ctypes.addressof(program)))
    sock.bind((interface, 0))
    # what queued before the filter was attached passed unfiltered: drop it
    sock.setblocking(False)
    try:
        while sock.recv(SNAPLEN):
            pass
    except BlockingIOError:
        pass
    return sock


def serve(job: dict, stdin=sys.stdin, stdout=sys.stdout) -> None:
    """Answer marks until ``stdin`` closes; then print the counters."""
    agent = NearSourceAgent(job["addresses"], job["nchannels"], job["interval_ns"])
    listen = marked_socket(job["interface"])
    send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IPPROTO_RAW implies IP_HDRINCL
    poller = select.poll()
    poller.register(listen, select.POLLIN)
    poller.register(stdin, select.POLLIN)
    print(json.dumps({"ready": True}), file=stdout, flush=True)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if stdin.fileno() in ready:
            break
        while True:
            try:
                frame = listen.recv(SNAPLEN)
            except BlockingIOError:
                break
            answer = agent.on_marked(frame, time.monotonic_ns())
            if answer:
                send.sendto(answer[0], (answer[1], 0))
    print(json.dumps(agent.counters), file=stdout, flush=True)


if __name__ == "__main__":
    serve(json.loads(sys.stdin.readline()))


class NearSourceAgents:
    """A ``near_source`` process per DCI egress of ``tb`` (``egresses``: (border, peer)), each in its border's
    namespace; ``counters`` holds what each reported once closed, by egress."""

    def __init__(self, tb, egresses: list[tuple[str, str]], addresses: list[str], nchannels: int,
                 interval_ns: dict[str, int]) -> None:
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}
        self.counters: dict[tuple[str, str], dict] = {}
        try:
            for border, peer in egresses:
                job = {"interface": tb.egress(border, peer).name, "addresses": addresses, "nchannels": nchannels,
                       "interval_ns": round(interval_ns[border] * tb.dilation)}
                proc = tb.node(border).popen(python_module("testbed.collective.near_source"), stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                self.procs[(border, peer)] = proc
                proc.stdin.write(json.dumps(job) + "\n")
                proc.stdin.flush()
                if not proc.stdout.readline():
                    raise RuntimeError(f"near-source agent on {border}->{peer} failed: {proc.stderr.read().strip()}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every agent (stdin closed) and keep its counters."""
        for egress, proc in self.procs.items():
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
            try:
                line = proc.stdout.readline() if proc.stdout else ""
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                continue
            if line:
                self.counters[egress] = json.loads(line)
        self.procs = {}
