"""A reliable, paced, RoCE-like transport over ordinary UDP sockets: what both ends of a queue pair share.

One queue pair carries messages one way: a ``Sender`` (``testbed.roce.sender``) segments them into
RoCEv2 SEND packets (``testbed.roce.rocev2``) and a ``Receiver`` (``testbed.roce.receiver``) reassembles
them and answers with ACKs, NAKs and CNPs, as a RoCE NIC's requester and responder do:

- the receiver accepts only the PSN it expects, delivers messages in order and exactly once, ACKs
  cumulatively (coalesced), sends one NAK per gap and a paced CNP when data arrives CE-marked;
- the sender recovers by go-back-N (from a NAK's PSN, or from the oldest unacknowledged PSN after a
  retransmission timeout), paces at its congestion control's rate and caps unacknowledged bytes at its
  window.  Selective repeat is an option (``TransportConfig.selective_repeat``): a NAK or a timeout
  then resends only the missing packet and the receiver buffers out-of-order packets within a window.

Both ends are attached to a ``Nic`` (``testbed.roce.nic``): a host's one UDP socket on port 4791, which carries
every queue pair of the host and hands each packet to the end its destination QP names.  The ends do
nothing on their own: they run inside their NIC's event loop, which runs only inside blocking calls
(``Sender.flush``, ``Receiver.recv``, ``testbed.roce.nic.run``).  A receiver's loop must keep running until its
sender has flushed, so late retransmissions are still acknowledged.

Both ends are built from the same ``TransportConfig`` (like the PSNs and QPNs a RoCE connection exchanges
at setup).

Speed.  The packets per second one rank's process moves is the packet budget (``testbed.roce.budget``), and
the budget sets how much ``--dilation auto`` slows a run down, so the per-packet path is written for it.
Profiled with the budget's one rank sending to itself (both ends in one process), natively with cProfile and
inside the microVM (qemu TCG) with py-spy and perf (cProfile's clock is a system call there: it profiles
itself):

- before: ~105 Python calls per packet (5.5 M for 52,000 packets), ~20 us of CPU per packet natively and
  330-345 us under TCG, where Python bytecode runs 25-40 times slower than natively but system calls only
  ~5-10 times (a bare Python ``sendto`` + ``recvmsg`` loop moves 12,000-19,000 packets/s there, depending on
  the host's other load, the same system calls as this transport's ~12,000; this transport ~1,300);
- where it went, per packet sent: nine range checks in ``build_data``, a copy of the payload slice, three
  calls per PSN, the pacing rate read twice through properties, a pseudo-header pack and three CRC calls;
  per packet received: a frozen dataclass (23 us under TCG by itself), the same CRC work, three calls per
  PSN distance, four calls from the socket to the reassembly; per call of ``nic.run`` a new selector; at
  start-up scapy and pyroute2 (15-98 s of imports per rank process under TCG);
- and, inside the microVM only, drops: the NIC asked for 4 MB socket buffers but the VM's kernel capped them
  at 416 KB, which a 64-packet window overflows, so half the packets the budget sent there were go-back-N
  retransmissions (``testbed.roce.nic``).

After: ~41 calls per packet, C built-ins included (``rocev2``'s fast path, ``Sender._send_some``, the NIC's
``_drain``, ``Receiver._accept``; each says what it does instead), ~15 us natively and 210-225 us under TCG,
where the socket calls are now ~45 % of a packet's time.  Wire bytes, counters, series rows and the
reliability rules are unchanged.  The budget, measured in one microVM boot, old code against new (medians of
three): 1 rank 1,325 -> 3,356 packets/s per rank, 2 ranks 1,941 -> 3,618, 4 ranks (two per vCPU) 695 ->
1,819; natively 46,400 -> 66,800, 36,400 -> 63,200 and 20,400 -> 26,300.  With the VM's buffer cap raised
for the old code too, so that only the Python differs: ~1.55 times (1 rank 2,835-3,006 -> 4,365-4,714, 2
ranks 2,892-3,093 -> 4,547-5,016).
"""

from dataclasses import dataclass, replace
from typing import Self

from controllers.dcqcn import MLX5_FIRMWARE
from testbed.roce.nic import Endpoint, Nic
from testbed.roce.psn import PSN_MASK
from testbed.roce.rocev2 import DEFAULT_MTU, QPN_MAX, check_mtu

TIME_FIELDS = ("ack_delay_ns", "initial_rto_ns", "min_rto_ns", "max_rto_ns", "cnp_interval_ns")


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
    cnp_interval_ns: int = MLX5_FIRMWARE.np_min_time_between_cnps_ns  # the receiver is DCQCN's notification point
    dscp: int = 0
    selective_repeat: bool = False  # resend only the missing packet; the receiver buffers out-of-order ones
    reorder_window: int = 1024  # packets past the expected PSN the receiver buffers with selective repeat

    def dilated(self, dilation: float) -> "TransportConfig":
        """These settings ``dilation`` times slower (``testbed.model.dilation``): every time (ACK delay, RTO
        initial, floor and ceiling, CNP interval) multiplied; sizes and counts unchanged."""
        return replace(self, **{name: round(getattr(self, name) * dilation) for name in TIME_FIELDS})

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


class QueuePairEnd(Endpoint):
    """One end of queue pair ``qpn`` on ``nic``, talking to the peer's queue pair ``peer_qpn``."""

    def __init__(self, nic: Nic, qpn: int, peer_qpn: int, config: TransportConfig) -> None:
        check_qpns(qpn, peer_qpn)
        self.nic, self.qpn, self.peer_qpn, self.config = nic, qpn, peer_qpn, config
        self.counters: dict[str, int] = {"malformed": 0}  # subclasses add their own
        nic.attach(self)

    def close(self) -> None:
        """Detach from the NIC (idempotent): packets for this QP are then counted as unknown there."""
        self.nic.detach(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_until(self, predicate, timeout_s: float) -> bool:
        """Run this end's NIC (and so every queue pair on it) until ``predicate()`` or ``timeout_s``."""
        return self.nic.run_until(predicate, timeout_s)
