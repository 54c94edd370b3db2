"""The sending end of a queue pair: segmentation, pacing, a window, go-back-N recovery and a congestion control.

Messages are cut into SEND packets of ``data_capacity(mtu)`` bytes with consecutive PSNs (24-bit,
wrapping).  Each packet is stamped with ``time.monotonic_ns()`` and asks for an ACK when it ends its
message or every ``ackreq_every`` packets.  Packets leave when the pacer (``testbed.roce.pacer``) allows at
``cc.rate_bps`` -- counted in IP bytes, i.e. the UDP payload plus the 28 bytes of IPv4 and UDP header, so
a flow paced at a link's rate fills the link -- and while unacknowledged bytes stay within
``cc.cwnd_bytes`` (if the algorithm has a window).

Recovery is go-back-N, as on RoCE NICs: a NAK acknowledges everything before its PSN and rewinds sending
to it; a retransmission timeout (RFC 6298, ``testbed.roce.rto``) rewinds to the oldest unacknowledged packet.
With ``TransportConfig.selective_repeat`` (the receiver then buffers out-of-order packets) a NAK or a
timeout resends only the one missing packet, ahead of new data, and sending carries on where it was.
RTT samples come from the send time of the newest packet an ACK covers, skipping retransmitted packets
(Karn) and packets sent before the latest retransmission: with selective repeat the receiver holds those
until the hole fills, so their ACK times the recovery, not the path (a lost repair once made srtt 275 ms
and the RTO 467 ms on loopback, and every later timeout grew with it).

The congestion control sees every event: ``on_send`` per packet (UDP payload bytes), ``on_ack``,
``on_cnp``, ``on_loss`` per NAK, ``on_timeout`` per RTO and ``on_timer`` when its timer is due.
"""

import collections
import errno
import time
from dataclasses import dataclass

from controllers.base import CongestionControl
from testbed.model.units import IPV4_HEADER_BYTES
from testbed.roce import psn
from testbed.roce.nic import FAR_FUTURE_NS, Nic
from testbed.roce.pacer import Pacer
from testbed.roce.rocev2 import UDP_HEADER_LEN, Kind, RocePacket, build_data, data_capacity, ip_tos
from testbed.roce.rto import RttEstimator
from testbed.roce.transport import QueuePairEnd, TransportConfig

IP_UDP_HEADER_BYTES = IPV4_HEADER_BYTES + UDP_HEADER_LEN
SEND_BATCH = 64  # packets sent per turn of the loop before ACKs get theirs


@dataclass(slots=True)
class _Segment:
    """One packet's worth of a message, and what the sender remembers about its last transmission."""

    msg_id: int
    offset: int
    size: int
    msg_len: int
    start: int  # bytes queued on the queue pair before this segment: in-flight bytes are differences of these
    sent_ns: int = 0
    retransmitted: bool = False

    @property
    def last(self) -> bool:
        return self.offset + self.size == self.msg_len


class Sender(QueuePairEnd):
    """Queue pair ``qpn``'s requester on ``nic``, sending to queue pair ``peer_qpn`` at the NIC ``peer``."""

    def __init__(self, nic: Nic, peer: tuple[str, int], qpn: int, peer_qpn: int, cc: CongestionControl,
                 config: TransportConfig = TransportConfig()) -> None:
        super().__init__(nic, qpn, peer_qpn, config)
        self.peer, self.cc = peer, cc
        self.max_rate_bps: float | None = None  # a controller's pacing cap on top of the cc's rate
        self._tos = ip_tos(Kind.DATA, config.dscp)
        self._data_flow = nic.flows(peer)[1]
        self._capacity = data_capacity(config.mtu)
        self._pacer = Pacer()
        self._rtt = RttEstimator(config.initial_rto_ns, config.min_rto_ns, config.max_rto_ns)
        self._rto_due_ns: int | None = None
        self._last_retransmit_ns = 0  # packets sent before it give no RTT sample (see the module docstring)
        self._segments: collections.deque[_Segment] = collections.deque()  # from the oldest unacknowledged
        self._messages: dict[int, bytes] = {}
        # absolute segment indices: oldest unacknowledged, next to send, one past the highest ever sent, queued
        self._una = self._next = self._highest = self._end = 0
        self._repairs: collections.deque[int] = collections.deque()  # selective repeat: indices to resend first
        self._queued_bytes = 0
        self._next_msg_id = 0
        self._first_send_ns: int | None = None
        self._last_ack_ns: int | None = None
        self.counters.update(messages_queued=0, messages_acked=0, packets_sent=0, bytes_sent=0, ip_bytes_sent=0,
                             retransmitted_packets=0, send_errors=0, bytes_acked=0, acks_received=0,
                             naks_received=0, cnps_received=0, timeouts=0, rtt_samples=0)
        self.series: list[dict] = []  # one row per ACK, NAK, CNP and timeout

    def send(self, message: bytes | bytearray | memoryview) -> int:
        """Queue ``message`` (anything with the buffer protocol, e.g. a numpy array) and return its msg_id.

        Sending happens inside ``flush`` (or ``run_until``).  The bytes are copied, C order for arrays.
        """
        data = memoryview(message).tobytes()
        if self._next == self._end:
            self._pacer.reset()  # idle until now: no burst of "saved" sending time
        msg_id = self._next_msg_id
        self._next_msg_id = (msg_id + 1) & 0xFFFFFFFF
        self._messages[msg_id] = data
        for offset in range(0, max(1, len(data)), self._capacity):
            size = min(self._capacity, len(data) - offset)
            self._segments.append(_Segment(msg_id, offset, size, len(data), self._queued_bytes))
            self._queued_bytes += size
            self._end += 1
        self.counters["messages_queued"] += 1
        return msg_id

    def flush(self, timeout_s: float) -> None:
        """Run until every queued message is acknowledged; raises TimeoutError after ``timeout_s``."""
        if not self.run_until(self.all_acknowledged, timeout_s):
            raise TimeoutError(f"{self._end - self._una} packets still unacknowledged after {timeout_s} s")

    def all_acknowledged(self) -> bool:
        """True when every queued message has been acknowledged."""
        return self._una == self._end

    @property
    def pacing_rate_bps(self) -> float:
        """The rate packets leave at: the cc's, under the controller's cap if it set one."""
        return self.cc.rate_bps if self.max_rate_bps is None else min(self.cc.rate_bps, self.max_rate_bps)

    def set_data_tos(self, tos: int) -> None:
        """Send data with IP TOS ``tos`` from now on (a test hook: CE-mark data where no queue would)."""
        self._tos = tos

    def stats(self) -> dict:
        """Counters plus the current rate, window, RTT estimate and goodput (acknowledged bits per second)."""
        span = None if self._last_ack_ns is None else self._last_ack_ns - self._first_send_ns
        goodput = self.counters["bytes_acked"] * 8e9 / span if span else 0.0
        return dict(self.counters, rate_bps=self.cc.rate_bps, cwnd_bytes=self.cc.cwnd_bytes,
                    inflight_bytes=self._inflight_bytes(), srtt_ns=self._rtt.srtt_ns, rto_ns=self._rtt.rto_ns,
                    goodput_bps=goodput)

    def _psn_of(self, index: int) -> int:
        return psn.add(self.config.start_psn, index)

    def _index_of(self, packet_psn: int) -> int:
        """The absolute segment index of ``packet_psn``, taken as the nearest to the oldest unacknowledged."""
        return self._una + psn.diff(packet_psn, self._psn_of(self._una))

    def _inflight_bytes(self) -> int:
        if self._next == self._una:
            return 0
        sent_end = self._queued_bytes if self._next == self._end else self._segments[self._next - self._una].start
        return sent_end - self._segments[0].start

    def _window_open(self, segment: _Segment) -> bool:
        cwnd, inflight = self.cc.cwnd_bytes, self._inflight_bytes()
        return cwnd is None or inflight == 0 or inflight + segment.size <= cwnd

    def on_clock(self, now_ns: int) -> None:
        timer = self.cc.next_timer_ns
        if timer is not None and now_ns >= timer:
            self.cc.on_timer(now_ns)
        if self._rto_due_ns is not None and now_ns >= self._rto_due_ns:
            self._on_timeout(now_ns)
        for _ in range(SEND_BATCH):  # then let ACKs in
            index = self._sendable()
            if index is None or self._pacer.delay_ns(now_ns, self.pacing_rate_bps):
                return
            self._transmit(index, now_ns)
            now_ns = time.monotonic_ns()

    def next_wakeup_ns(self, now_ns: int) -> int:
        due = [t for t in (self.cc.next_timer_ns, self._rto_due_ns) if t is not None]
        if self._sendable() is not None:
            due.append(now_ns + self._pacer.delay_ns(now_ns, self.pacing_rate_bps))
        return min(due, default=FAR_FUTURE_NS)

    def _sendable(self) -> int | None:
        """The index of the packet to send next, if any and the window allows: repairs first (selective repeat)."""
        while self._repairs and self._repairs[0] < self._una:
            self._repairs.popleft()  # acknowledged meanwhile
        if self._repairs:
            return self._repairs[0]
        if self._next < self._end and self._window_open(self._segments[self._next - self._una]):
            return self._next
        return None

    def _transmit(self, index: int, now_ns: int) -> None:
        segment = self._segments[index - self._una]
        data = self._messages[segment.msg_id][segment.offset:segment.offset + segment.size]
        ackreq = segment.last or (index + 1) % self.config.ackreq_every == 0
        packet = build_data(self._data_flow, dqpn=self.peer_qpn, psn=self._psn_of(index), msg_id=segment.msg_id,
                            offset=segment.offset, msg_len=segment.msg_len, payload=data, timestamp_ns=now_ns,
                            ackreq=ackreq, mtu=self.config.mtu)
        try:
            self.nic.sendto(packet, self._tos, self.peer)
            self.counters["ip_bytes_sent"] += len(packet) + IP_UDP_HEADER_BYTES  # what a capture of the path sees
        except OSError as error:  # a full socket buffer is a drop, like a NIC's: NAK or RTO recovers it
            if error.errno not in (errno.EAGAIN, errno.ENOBUFS):
                raise
            self.counters["send_errors"] += 1
        if index < self._highest:
            segment.retransmitted = True
            self._last_retransmit_ns = now_ns
            self.counters["retransmitted_packets"] += 1
        self._highest = max(self._highest, index + 1)
        segment.sent_ns = now_ns
        if self._repairs and self._repairs[0] == index:
            self._repairs.popleft()
        else:
            self._next += 1
        self.counters["packets_sent"] += 1
        self.counters["bytes_sent"] += segment.size
        self._first_send_ns = self._first_send_ns or now_ns
        self.cc.on_send(now_ns, len(packet))
        self._pacer.on_send(now_ns, len(packet) + IP_UDP_HEADER_BYTES, self.pacing_rate_bps)
        if self._rto_due_ns is None:
            self._rto_due_ns = now_ns + self._rtt.rto_ns

    def on_packet(self, packet: RocePacket, tos: int, peer: tuple[str, int], now_ns: int) -> None:
        if packet.kind is Kind.DATA:
            self.counters["malformed"] += 1
        elif packet.kind is Kind.CNP:
            self.counters["cnps_received"] += 1
            self.cc.on_cnp(now_ns)
            self._record(now_ns, "cnp")
        elif packet.kind is Kind.ACK:
            self.counters["acks_received"] += 1
            index = self._index_of(packet.psn)
            if self._una <= index < self._highest:
                self._acknowledge(index + 1, now_ns)
        else:
            self._on_nak(self._index_of(packet.psn), now_ns)

    def _on_nak(self, index: int, now_ns: int) -> None:
        """Everything before ``index`` arrived; resend ``index`` alone (selective repeat) or go back to it."""
        self.counters["naks_received"] += 1
        if not self._una <= index < self._highest:
            return  # stale: a NAK for a gap already recovered
        self._acknowledge(index, now_ns)
        self._go_back(index)
        self.cc.on_loss(now_ns)
        self._record(now_ns, "nak")

    def _acknowledge(self, una: int, now_ns: int) -> None:
        """Segments before absolute index ``una`` were received: release them and take an RTT sample."""
        if una <= self._una:
            return
        acked_bytes, rtt_ns = 0, None
        while self._una < una:
            segment = self._segments.popleft()
            self._una += 1
            acked_bytes += segment.size
            timed = not segment.retransmitted and segment.sent_ns > self._last_retransmit_ns
            rtt_ns = now_ns - segment.sent_ns if timed else None
            if segment.last:
                del self._messages[segment.msg_id]
                self.counters["messages_acked"] += 1
        self._next = max(self._next, una)
        if rtt_ns is None:
            self._rtt.on_progress()
        else:
            self._rtt.on_sample(rtt_ns)
            self.counters["rtt_samples"] += 1
        self.counters["bytes_acked"] += acked_bytes
        self._last_ack_ns = now_ns
        self._rto_due_ns = now_ns + self._rtt.rto_ns if self._una < self._next else None
        self.cc.on_ack(now_ns, acked_bytes, rtt_ns)
        self._record(now_ns, "ack", rtt_ns)

    def _on_timeout(self, now_ns: int) -> None:
        """No ACK for an RTO: back off and resend everything from the oldest unacknowledged packet."""
        self.counters["timeouts"] += 1
        self._rtt.on_timeout()
        self.cc.on_timeout(now_ns)
        self._go_back(self._una)
        self._rto_due_ns = None  # re-armed, backed off, by the first retransmission
        self._record(now_ns, "timeout")

    def _go_back(self, index: int) -> None:
        """Resend from ``index``: only that packet with selective repeat, else it and everything after."""
        if not self.config.selective_repeat:
            self._next = index
        elif index < self._next and index not in self._repairs:
            self._repairs.append(index)

    def _record(self, now_ns: int, event: str, rtt_ns: int | None = None) -> None:
        self.series.append(dict(t_ns=now_ns, event=event, rate_bps=self.cc.rate_bps,
                                acked_bytes=self.counters["bytes_acked"], inflight_bytes=self._inflight_bytes(),
                                rtt_ns=rtt_ns, srtt_ns=self._rtt.srtt_ns))
