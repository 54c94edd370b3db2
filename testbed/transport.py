"""A reliable, paced, RoCE-like transport over ordinary UDP sockets: what both ends of a queue pair share.

One queue pair carries messages one way: a ``Sender`` (``testbed.transport_sender``) segments them into
RoCEv2 SEND packets (``testbed.rocev2``) and a ``Receiver`` (``testbed.transport_receiver``) reassembles
them and answers with ACKs, NAKs and CNPs, as a RoCE NIC's requester and responder do:

- the receiver accepts only the PSN it expects, delivers messages in order and exactly once, ACKs
  cumulatively (coalesced), sends one NAK per gap and a paced CNP when data arrives CE-marked;
- the sender recovers by go-back-N (from a NAK's PSN, or from the oldest unacknowledged PSN after a
  retransmission timeout), paces at its congestion control's rate and caps unacknowledged bytes at its
  window.  Selective repeat is an option (``TransportConfig.selective_repeat``): a NAK or a timeout
  then resends only the missing packet and the receiver buffers out-of-order packets within a window.

Threading model: each endpoint is a single-threaded event loop (``selectors`` plus timers) that runs only
inside its blocking calls (``Sender.flush``, ``Receiver.recv``, ``Endpoint.run_until``).  An endpoint
belongs to one thread at a time; the two ends may live in two threads of a process or in two processes.
A receiver must keep running its loop (``run_until`` with a stop predicate) until its sender has flushed,
so late retransmissions are still acknowledged.

Both ends are built from the same ``TransportConfig`` (like the PSNs and QPNs a RoCE connection exchanges
at setup).  Bind to a concrete IPv4 address, not 0.0.0.0: the ICRC covers the addresses.
"""

import abc
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from controllers.dcqcn import DcqcnParams
from testbed.psn import PSN_MASK
from testbed.rocev2 import (DEFAULT_MTU, QPN_MAX, BadIcrc, Flow, MalformedPacket, RocePacket, check_mtu,
                            configure_socket, parse)

RECV_BUFFER_BYTES = 4 << 20
MAX_WAIT_NS = 5_000_000  # the loop re-checks its predicate at least this often (another thread may set it)
RECV_BATCH = 64  # datagrams read per wake-up before timers and sends get their turn
MAX_DATAGRAM = 65_535
FAR_FUTURE_NS = 1 << 62
_CMSG_SPACE = socket.CMSG_SPACE(4)


@dataclass(frozen=True)
class TransportConfig:
    """Settings both ends of a queue pair agree on; times in ns."""

    mtu: int = DEFAULT_MTU
    start_psn: int = 0
    ackreq_every: int = 16  # the sender asks for an ACK every this many packets (and at each message's end)
    ack_every: int = 8  # the receiver ACKs after this many packets without an ACK request
    ack_delay_ns: int = 100_000  # ... or this long after the first unacknowledged one
    initial_rto_ns: int = 200_000_000
    min_rto_ns: int = 10_000_000
    max_rto_ns: int = 2_000_000_000
    cnp_interval_ns: int = DcqcnParams.np_min_time_between_cnps_ns
    dscp: int = 0
    selective_repeat: bool = False  # resend only the missing packet; the receiver buffers out-of-order ones
    reorder_window: int = 1024  # packets past the expected PSN the receiver buffers with selective repeat

    def __post_init__(self) -> None:
        check_mtu(self.mtu)
        if not 0 <= self.start_psn <= PSN_MASK:
            raise ValueError(f"start_psn must be in [0, 2**24), got {self.start_psn}")
        for name in ("ackreq_every", "ack_every", "reorder_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ack_delay_ns", "cnp_interval_ns"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def check_qpns(qpn: int, peer_qpn: int) -> None:
    """Raise unless both queue pair numbers fit the BTH's 24 bits (before any packet is built)."""
    for name, value in (("qpn", qpn), ("peer_qpn", peer_qpn)):
        if not 0 <= value <= QPN_MAX:
            raise ValueError(f"{name} must be in [0, {QPN_MAX}], got {value}")


class Endpoint(abc.ABC):
    """One UDP socket and the event loop around it; subclasses say what a datagram and the clock do."""

    def __init__(self, bind: tuple[str, int], tos: int) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
            configure_socket(self._sock, tos)
            self._sock.bind(bind)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self.address: tuple[str, int] = self._sock.getsockname()
        if self.address[0] == "0.0.0.0":
            self._sock.close()
            raise ValueError("bind to a concrete IPv4 address: the ICRC covers the addresses")
        # every datagram leaves through here: tests wrap it to drop, duplicate, reorder or corrupt packets
        self.sendto: Callable[[bytes, tuple[str, int]], object] = self._sock.sendto
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._flows: dict[tuple[str, int], tuple[Flow, Flow]] = {}
        self.counters: dict[str, int] = {"bad_icrc": 0, "malformed": 0}  # subclasses add their own

    def run_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Run the loop until ``predicate()`` holds (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic_ns() + round(timeout_s * 1e9)
        while True:
            self._on_clock(time.monotonic_ns())
            if predicate():
                return True
            now = time.monotonic_ns()
            if now >= deadline:
                return False
            wake = min(deadline, now + MAX_WAIT_NS, self._next_wakeup_ns(now))
            if self._selector.select(max(0, wake - now) / 1e9):
                self._drain()

    def close(self) -> None:
        """Release the socket (idempotent)."""
        if self._sock.fileno() >= 0:
            self._selector.close()
            self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def flows(self, peer: tuple[str, int]) -> tuple[Flow, Flow]:
        """(incoming, outgoing) ``Flow`` with ``peer``: what the ICRC of each direction covers."""
        pair = self._flows.get(peer)
        if pair is None:
            (local_ip, local_port), (peer_ip, peer_port) = self.address, peer
            pair = Flow(peer_ip, local_ip, peer_port, local_port), Flow(local_ip, peer_ip, local_port, peer_port)
            self._flows[peer] = pair
        return pair

    def _parse(self, data: bytes, peer: tuple[str, int]) -> RocePacket | None:
        """The packet in ``data`` from ``peer``, or None (counted as bad_icrc or malformed) if it is not one."""
        try:
            return parse(data, self.flows(peer)[0])
        except BadIcrc:
            self.counters["bad_icrc"] += 1
        except MalformedPacket:
            self.counters["malformed"] += 1
        return None

    def _set_tos(self, tos: int) -> None:
        """The IP TOS byte (DSCP and ECN) of the datagrams sent from now on."""
        self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)

    def _drain(self) -> None:
        for _ in range(RECV_BATCH):
            try:
                data, ancillary, _, peer = self._sock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            self._on_datagram(data, _tos(ancillary), peer, time.monotonic_ns())

    @abc.abstractmethod
    def _on_datagram(self, data: bytes, tos: int, peer: tuple[str, int], now_ns: int) -> None:
        """Handle one received datagram whose IP TOS byte was ``tos``."""

    @abc.abstractmethod
    def _on_clock(self, now_ns: int) -> None:
        """Do whatever is due at ``now_ns`` (send paced packets, fire timers)."""

    @abc.abstractmethod
    def _next_wakeup_ns(self, now_ns: int) -> int:
        """When ``_on_clock`` next has something to do (``FAR_FUTURE_NS`` if nothing)."""


def _tos(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The IP TOS byte from ``IP_RECVTOS`` ancillary data (0 if absent)."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == socket.IP_TOS and data:
            return data[0]
    return 0
