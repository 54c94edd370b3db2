"""A host's RoCE NIC in software: one UDP socket on port 4791 shared by all its queue pairs, and the event loop.

A RoCEv2 NIC receives every queue pair's traffic on UDP port 4791 and tells them apart by the destination
QP in the BTH; so does ``Nic``.  Data, ACKs, NAKs and CNPs all leave from and go to port 4791, so every
packet of a capture decodes as RoCE in Wireshark and tshark.  The IP TOS byte (DSCP and ECN) is set per
packet (data, ACK and NAK ECT(0), CNP ECT(1), see ``rocev2.ip_tos``) through ``sendmsg`` ancillary data.

A NIC can be created inside another network namespace (``netns``, e.g. a Mininet host's
``/proc/<pid>/ns/net``): only its socket is made there, by the calling thread entering the namespace
for that one call, so one process can drive queue pairs between any hosts of a running fabric.

The event loop (``run``) serves one or more NICs in one thread: it fires their queue pairs' clocks
(pacing, timers), reads their sockets and dispatches packets, until a predicate holds.  It records how late
it was for both (``Lateness``): its timers' wake-ups, and the first datagram of each wake-up's wait in the
socket, which only a stall while packets arrive makes long.  What it serves is
an ``Endpoint``: anything with a QP number that takes packets and clock ticks (the queue-pair ends of
``testbed.roce.transport`` are the ones the testbed has).

The loop is the hot path of every rank (see "Speed" in ``testbed.roce.transport``), and under TCG each Python
call in it costs ~1 us: ``_drain`` reads, checks, parses and hands over a datagram in one function, with
what it uses in locals; ``run`` waits on an epoll the NIC keeps rather than a ``selectors`` object made per
call (7 us natively, ~150 us under TCG, paid by every ``recv`` and blocked step of a rank); the NIC keeps
its ends in a tuple for the clock ticks; a sender whose packets go out unwrapped calls the socket's own
``sendto`` (``direct_sendto``).  Every datagram is still read with ``recvmsg`` for its TOS and stamped with
its own ``time.monotonic_ns()``.  The socket buffers are forced to 4 MB past the kernel's cap, which the
microVM keeps at its default (``_set_buffer``).
"""

import abc
import collections
import fcntl
import math
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Self

from testbed.roce.rocev2 import (
    ROCEV2_UDP_PORT,
    BadIcrc,
    Flow,
    Kind,
    MalformedPacket,
    RocePacket,
    configure_socket,
    ip_tos,
    parse,
)

RECV_BUFFER_BYTES = 4 << 20
MAX_WAIT_NS = 5_000_000  # the loop re-checks its predicate at least this often (another thread may set it)
RECV_BATCH = 64  # datagrams read per wake-up before timers and sends get their turn
MAX_DATAGRAM = 65_535
FIRST_QPN = 2  # QP0 and QP1 are InfiniBand's management queue pairs
_CMSG_SPACE = socket.CMSG_SPACE(4)
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # asm-generic/socket.h; Python leaves them out
_IPPROTO_IP, _IP_TOS = socket.IPPROTO_IP, socket.IP_TOS
SIOCGSTAMPNS = 0x8907  # linux/sockios.h: the last datagram read's receive time (CLOCK_REALTIME), a timespec
_TIMESPEC = struct.Struct("qq")
_NO_TIMESPEC = bytes(_TIMESPEC.size)
FAR_FUTURE_NS = 1 << 62


class Lateness:
    """How late the event loop was for what it had to do: what the emulator's CPU costs the timing of a flow
    (``testbed.observe.fidelity``).  Two of them per NIC: ``lateness``, how late the loop woke up after the
    wait it asked for, and ``dwell``, how long the first datagram of each wake-up had waited in the socket
    (the kernel's receive timestamp against the time it was read): a stall while packets arrive, which no
    wake-up measures.  A histogram in quarter octaves from 1 us, so recording costs a logarithm and a dict
    update, and a quantile is read to within 19 %.  ``name`` prefixes the summary's keys, ``count`` names
    its number of records."""

    STEPS_PER_OCTAVE = 4

    def __init__(self, name: str = "late", count: str = "wakeups") -> None:
        self.name, self.count = name, count
        self._reset()

    def _reset(self) -> None:
        self.counts: collections.Counter[int] = collections.Counter()
        self.wakeups = 0
        self.max_ns = 0

    def record(self, late_ns: int) -> None:
        self.wakeups += 1
        self.max_ns = max(self.max_ns, late_ns)
        self.counts[max(0, math.ceil(self.STEPS_PER_OCTAVE * math.log2(late_ns / 1000))) if late_ns > 1000 else 0] += 1

    def quantile(self, q: float) -> int:
        """The ``q`` quantile of the lateness, ns (rounded up to its bucket's end; 0 without wake-ups)."""
        seen, wanted = 0, q * self.wakeups
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= wanted:
                return min(self.max_ns, round(1000 * 2 ** (bucket / self.STEPS_PER_OCTAVE)))
        return 0

    def take(self) -> dict:
        """The summary since the last call (records, p50, p99 and max in us), then start afresh."""
        name = self.name
        summary = {self.count: self.wakeups, f"{name}_p50_us": self.quantile(0.5) / 1e3,
                   f"{name}_p99_us": self.quantile(0.99) / 1e3, f"{name}_max_us": self.max_ns / 1e3}
        self._reset()
        return summary


class Endpoint(abc.ABC):
    """What a NIC serves: queue pair ``qpn``'s packets and its clock."""

    qpn: int

    @abc.abstractmethod
    def on_packet(self, packet: RocePacket, tos: int, peer: tuple[str, int], now_ns: int) -> None:
        """Handle a packet for this QP that arrived with IP TOS ``tos`` from ``peer``."""

    @abc.abstractmethod
    def on_clock(self, now_ns: int) -> None:
        """Do whatever is due at ``now_ns`` (send paced packets, fire timers)."""

    @abc.abstractmethod
    def next_wakeup_ns(self, now_ns: int) -> int:
        """When ``on_clock`` next has something to do (``FAR_FUTURE_NS`` if nothing)."""


@contextmanager
def entered(netns: str | None):
    """Run the block in the network namespace at path ``netns`` (this thread only); None: stay."""
    if netns is None:
        yield
        return
    from pyroute2 import netns as pyroute2_netns  # here, not at the top: a rank in its own namespace never needs it

    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        pyroute2_netns.setns(target)
        try:
            yield
        finally:
            pyroute2_netns.setns(home)
    finally:
        os.close(target)
        os.close(home)


class Nic:
    """UDP port ``port`` (4791) at IPv4 ``address`` (in namespace ``netns``), shared by the queue pairs attached."""

    def __init__(self, address: str, port: int = ROCEV2_UDP_PORT, netns: str | None = None) -> None:
        if address == "0.0.0.0":
            raise ValueError("bind to a concrete IPv4 address: the ICRC covers the addresses")
        self._default_tos = ip_tos(Kind.DATA)
        with entered(netns):
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            _set_buffer(self._sock, socket.SO_RCVBUF, _SO_RCVBUFFORCE)
            _set_buffer(self._sock, socket.SO_SNDBUF, _SO_SNDBUFFORCE)
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
            configure_socket(self._sock, self._default_tos)
            self._sock.bind((address, port))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self.address: tuple[str, int] = self._sock.getsockname()
        self.netns = netns
        # every datagram leaves through here: tests wrap it to drop, duplicate, reorder or corrupt packets
        self.sendto: Callable[[bytes, int, tuple[str, int]], object] = self._sendto
        self._tos_ancillary: dict[int, list[tuple[int, int, bytes]]] = {}
        self._epoll = select.epoll()  # kept: making one per call of ``run`` cost 7 us natively, ~150 us under TCG
        self._epoll.register(self._sock.fileno(), select.EPOLLIN)
        self._ends: dict[int, Endpoint] = {}
        self._end_list: tuple[Endpoint, ...] = ()  # the values of _ends, remade when they change
        self._next_qpn = FIRST_QPN
        self._flows: dict[tuple[str, int], tuple[Flow, Flow]] = {}
        self.counters: dict[str, int] = {"bad_icrc": 0, "malformed": 0, "unknown_qpn": 0}
        self.lateness = Lateness()
        self.dwell = Lateness("dwell", "reads")
        _receive_time(self._sock)  # the first call turns the kernel's receive timestamps on for this socket

    def __repr__(self) -> str:
        return f"Nic({self.address[0]}:{self.address[1]}, {len(self._ends)} queue pairs)"

    def new_qpn(self) -> int:
        """A queue pair number not in use on this NIC."""
        while self._next_qpn in self._ends:
            self._next_qpn += 1
        qpn, self._next_qpn = self._next_qpn, self._next_qpn + 1
        return qpn

    def attach(self, end: Endpoint) -> None:
        if end.qpn in self._ends:
            raise ValueError(f"QP {end.qpn} is already in use on {self!r}")
        self._ends[end.qpn] = end
        self._end_list = tuple(self._ends.values())

    def detach(self, end: Endpoint) -> None:
        if self._ends.get(end.qpn) is end:
            del self._ends[end.qpn]
            self._end_list = tuple(self._ends.values())

    def flows(self, peer: tuple[str, int]) -> tuple[Flow, Flow]:
        """(incoming, outgoing) ``Flow`` with ``peer``: what the ICRC of each direction covers."""
        pair = self._flows.get(peer)
        if pair is None:
            (local_ip, local_port), (peer_ip, peer_port) = self.address, peer
            pair = Flow(peer_ip, local_ip, peer_port, local_port), Flow(local_ip, peer_ip, local_port, peer_port)
            self._flows[peer] = pair
        return pair

    def take_lateness(self) -> dict:
        """Both lateness summaries since the last call, timers' and packets' (``Lateness.take``)."""
        return {**self.lateness.take(), **self.dwell.take()}

    def run_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Run this NIC's loop until ``predicate()`` holds (True) or ``timeout_s`` passes (False)."""
        return run([self], predicate, timeout_s)

    def socket_drops(self) -> int:
        """Datagrams the kernel dropped at this NIC's socket since it opened (its receive buffer was full):
        losses inside the host that no queue of the fabric counts.  The ``drops`` column of the socket's
        row in ``/proc/net/udp`` of its namespace (read from this thread inside it), found by inode; once per
        command, not per packet (SO_RXQ_OVFL would add ancillary data to every ``recvmsg`` of the hot loop)."""
        inode = str(os.fstat(self._sock.fileno()).st_ino)
        with entered(self.netns), open("/proc/thread-self/net/udp") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 12 and fields[9] == inode:
                    return int(fields[12])
        raise OSError(f"{self!r}: socket inode {inode} not in /proc/net/udp")

    def close(self) -> None:
        """Release the socket (idempotent)."""
        self._epoll.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def direct_sendto(self, tos: int) -> Callable[[bytes, tuple[str, int]], object] | None:
        """The socket's own ``sendto``, if packets sent with ``tos`` would go straight to it (nothing wraps
        ``sendto``, ``tos`` is the socket's default); else None.  A sender calling it skips ``_sendto``: one
        Python call less per packet (~1.5 us under TCG)."""
        if tos == self._default_tos and self.sendto == self._sendto:
            return self._sock.sendto
        return None

    def _sendto(self, packet: bytes, tos: int, peer: tuple[str, int]) -> None:
        if tos == self._default_tos:
            self._sock.sendto(packet, peer)
        else:
            ancillary = self._tos_ancillary.get(tos)
            if ancillary is None:
                ancillary = self._tos_ancillary[tos] = [(socket.IPPROTO_IP, socket.IP_TOS, bytes([tos]))]
            self._sock.sendmsg([packet], ancillary, 0, peer)

    def _on_clock(self, now_ns: int) -> None:
        for end in self._end_list:
            end.on_clock(now_ns)

    def _next_wakeup_ns(self, now_ns: int) -> int:
        wake = FAR_FUTURE_NS
        for end in self._end_list:
            due = end.next_wakeup_ns(now_ns)
            if due < wake:
                wake = due
        return wake

    def _drain(self) -> None:
        """Read, check and hand over up to ``RECV_BATCH`` datagrams, each with the time it was read."""
        recvmsg, flows, ends, counters, clock = self._sock.recvmsg, self._flows, self._ends, self.counters, \
            time.monotonic_ns
        first = True
        for _ in range(RECV_BATCH):
            try:
                data, ancillary, _, peer = recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            if first:  # the oldest datagram waiting: how long the loop left the socket unread
                first, received = False, _receive_time(self._sock)
                if received:
                    self.dwell.record(time.time_ns() - received)
            pair = flows.get(peer) or self.flows(peer)
            try:
                packet = parse(data, pair[0])
            except BadIcrc:
                counters["bad_icrc"] += 1
                continue
            except MalformedPacket:
                counters["malformed"] += 1
                continue
            end = ends.get(packet.dqpn)
            if end is None:
                counters["unknown_qpn"] += 1
                continue
            if len(ancillary) == 1:  # what _tos does, inline for the one IP_TOS message IP_RECVTOS brings
                level, kind, value = ancillary[0]
                tos = value[0] if level == _IPPROTO_IP and kind == _IP_TOS and value else 0
            else:
                tos = _tos(ancillary)
            end.on_packet(packet, tos, peer, clock())


def run(nics: Iterable[Nic], predicate: Callable[[], bool], timeout_s: float, max_wait_ns: int = MAX_WAIT_NS) -> bool:
    """Serve ``nics`` in this thread until ``predicate()`` holds (True) or ``timeout_s`` passes (False),
    checking the predicate at least every ``max_wait_ns`` even when no packet or timer wakes the loop.

    Each wake-up the loop asked for and got late (nothing arrived meanwhile) is recorded in every NIC's
    ``lateness``: how long the process waited for a CPU beyond its timer, the emulator's own delay."""
    nics = list(nics)
    deadline = time.monotonic_ns() + round(timeout_s * 1e9)
    wait_s, wake = 0.0, 0
    clock = time.monotonic_ns
    if len(nics) == 1:  # the common case (a rank's one NIC): its own epoll, no set-up per call
        epoll, owned, by_fd = nics[0]._epoll, False, None
    else:
        epoll, owned, by_fd = select.epoll(), True, {nic._sock.fileno(): nic for nic in nics}
        for fd in by_fd:
            epoll.register(fd, select.EPOLLIN)
    try:
        while True:
            # read what arrived before firing timers: after a pause (GC, a busy core) the ACKs that would
            # have stopped a retransmission timeout are usually already waiting in the socket
            events = epoll.poll(wait_s)
            if wait_s and not events:
                late_ns = clock() - wake
                for nic in nics:
                    nic.lateness.record(late_ns)
            for fd, _ in events:
                (nics[0] if by_fd is None else by_fd[fd])._drain()
            now = clock()
            for nic in nics:
                nic._on_clock(now)
            if predicate():
                return True
            now = clock()
            if now >= deadline:
                return False
            wake = min(deadline, now + max_wait_ns)
            for nic in nics:
                due = nic._next_wakeup_ns(now)
                if due < wake:
                    wake = due
            wait_s = max(0, wake - now) / 1e9
    finally:
        if owned:
            epoll.close()


def _set_buffer(sock: socket.socket, option: int, force: int) -> None:
    """Give the socket's receive or send buffer ``RECV_BUFFER_BYTES``, above ``net.core.rmem_max`` /
    ``wmem_max`` where the process may (CAP_NET_ADMIN, as the testbed has): plain SO_RCVBUF is capped there
    without a word.  The microVM's kernel keeps the default cap (212992, so 416 KB of buffer, ~48 packets of
    4 KB): a queue pair's 64-packet window overflowed it and the packet budget measured under TCG was mostly
    go-back-N recovery (3449 of 8000 datagrams dropped, 54 % of the packets sent retransmissions)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, RECV_BUFFER_BYTES)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, option, RECV_BUFFER_BYTES)


def _receive_time(sock: socket.socket) -> int | None:
    """When the kernel received the datagram read last from ``sock`` (ns, CLOCK_REALTIME), None before any.
    One ``ioctl`` per wake-up (0.9 us natively), where a receive-timestamp message with every datagram would
    cost every ``recvmsg`` of the hot loop a second ancillary item to allocate and look through."""
    try:
        seconds, nanoseconds = _TIMESPEC.unpack(fcntl.ioctl(sock.fileno(), SIOCGSTAMPNS, _NO_TIMESPEC))
    except OSError:  # ENOENT: nothing read yet (the first call also turns the timestamps on)
        return None
    return seconds * 1_000_000_000 + nanoseconds


def _tos(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The IP TOS byte from ``IP_RECVTOS`` ancillary data (0 if absent)."""
    for level, kind, data in ancillary:
        if level == _IPPROTO_IP and kind == _IP_TOS and data:
            return data[0]
    return 0
