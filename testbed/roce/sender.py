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

The retransmission timer takes every such sample; the congestion control only those that time the path:
samples from an ACK the receiver sent on the packet's arrival, i.e. whose newest packet asked for one (the
ACK request every ``ackreq_every`` packets and at each message's end).  Any other ACK may have waited at the
receiver for up to ``ack_delay_ns`` (fewer than ``ack_every`` packets arrived in that time), and that wait is
not congestion.  Swift (Kumar et al. SIGCOMM'20) takes it out by decomposing the RTT with NIC timestamps
and subtracting the remote host's delay, carried back in the ACK; a RoCE ACK (BTH + AETH, as here) has no
field for it, so the held samples are skipped instead.  Measured before (issue 14, 100 km, 2 Gbit/s
DCI): a sender cut to a low rate saw only timer ACKs, each sample base + 100 us against the adaptive delay
target of 50 us, and was cut again every round trip, down to 10-17 Mbit/s of a 1 Gbit/s share for over a
second.  NAKs give no congestion-control sample (sent when a later packet arrives, they time the gap, not
the path).

The congestion control sees every event: ``on_send`` per packet (UDP payload bytes), ``on_ack``,
``on_cnp``, ``on_queue_delay`` per CNP carrying a queueing delay (``controllers.forward_delay``),
``on_loss`` per NAK, ``on_timeout`` per RTO and ``on_timer`` when its timer is due.

Per packet (see "Speed" in ``testbed.roce.transport``): ``_send_some`` sends a batch in one loop with what it
uses in locals; each packet is built by ``build_data_unchecked`` from a memoryview of the message (no copy
of its slice), the pacing rate and window are read once per packet (they change only in ``cc.on_send``,
which is not called when it is the interface's no-op, ``ignores_sends``), and the counters are added once
per batch.  The loop with the socket replaced by a list: 4.0-4.8 us per packet natively instead of 6-8,
55-60 us under TCG instead of 100-107.  Messages are copied into buffers of acknowledged messages of the
same size where it can (``_copy``): new ones were new pages, ~0.5 page faults per packet.
"""

import collections
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass

from controllers.base import CongestionControl
from controllers.dilated import Dilated
from testbed.model.units import IPV4_HEADER_BYTES
from testbed.roce import psn
from testbed.roce.nic import FAR_FUTURE_NS, Nic
from testbed.roce.pacer import Pacer
from testbed.roce.rocev2 import UDP_HEADER_LEN, Kind, RocePacket, build_data_unchecked, data_capacity, ip_tos
from testbed.roce.rto import RttEstimator
from testbed.roce.transport import QueuePairEnd, TransportConfig

IP_UDP_HEADER_BYTES = IPV4_HEADER_BYTES + UDP_HEADER_LEN
SEND_BATCH = 64  # packets sent per turn of the loop before ACKs get theirs
SPARE_COPIES = 4  # copies of acknowledged messages kept to copy the next ones of their size into
_ACK, _CNP, _DATA = Kind.ACK, Kind.CNP, Kind.DATA
_DROPS = (errno.EAGAIN, errno.ENOBUFS)


@dataclass(slots=True)
class _Segment:
    """One packet's worth of a message, and what the sender remembers about its last transmission."""

    msg_id: int
    offset: int
    size: int
    msg_len: int
    start: int  # bytes queued on the queue pair before this segment: in-flight bytes are differences of these
    payload: memoryview  # its bytes of the message (a view, not a copy)
    last: bool  # whether it ends its message
    sent_ns: int = 0
    retransmitted: bool = False


def ignores_sends(cc: CongestionControl) -> bool:
    """Whether ``cc.on_send`` is the interface's, which does nothing (through any ``Dilated``): the sender
    then does not call it, one call less per packet (~1 us under TCG, twice that through ``Dilated``)."""
    while isinstance(cc, Dilated):
        cc = cc.algorithm
    return type(cc).on_send is CongestionControl.on_send


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
        # absolute segment indices: oldest unacknowledged, next to send, one past the highest ever sent, queued
        self._una = self._next = self._highest = self._end = 0
        self._repairs: collections.deque[int] = collections.deque()  # selective repeat: indices to resend first
        self._queued_bytes = 0
        self._next_msg_id = 0
        self._first_send_ns: int | None = None
        self._last_ack_ns: int | None = None
        self.counters.update(messages_queued=0, messages_acked=0, packets_sent=0, bytes_sent=0, ip_bytes_sent=0,
                             retransmitted_packets=0, send_errors=0, bytes_acked=0, acks_received=0,
                             naks_received=0, cnps_received=0, delay_reports_received=0, timeouts=0,
                             rtt_samples=0)
        self.series: list[dict] = []  # one row per ACK, NAK, CNP, delay report and timeout
        self._on_send: tuple[CongestionControl | None, Callable[[int, int], None] | None] = (None, None)
        self._spares: list[bytearray] = []  # copies of acknowledged messages, all of the latest size kept

    def send(self, message: bytes | bytearray | memoryview) -> int:
        """Queue ``message`` (anything with the buffer protocol, e.g. a numpy array) and return its msg_id.

        Sending happens inside ``flush`` (or ``run_until``).  The bytes are copied, C order for arrays; an
        immutable ``bytes`` is kept as it is, since nothing can change it (a copy of 1 MB and its fresh pages
        cost ~1 ms under TCG).
        """
        data = message if type(message) is bytes else self._copy(memoryview(message))
        if self._next == self._end:
            self._pacer.reset()  # idle until now: no burst of "saved" sending time
        msg_id = self._next_msg_id
        self._next_msg_id = (msg_id + 1) & 0xFFFFFFFF
        view, size, capacity, queued = memoryview(data), len(data), self._capacity, self._queued_bytes
        append = self._segments.append
        for offset in range(0, max(1, size), capacity):
            end = min(offset + capacity, size)
            append(_Segment(msg_id, offset, end - offset, size, queued, view[offset:end], end == size))
            queued += end - offset
            self._end += 1
        self._queued_bytes = queued
        self.counters["messages_queued"] += 1
        return msg_id

    def _copy(self, source: memoryview) -> bytearray:
        """The message's bytes (C order) in a buffer of the sender's: the copy of an acknowledged message of
        the same size if one is kept, else a new one.  New buffers of a megabyte were new pages after glibc
        gave the last ones back: ~0.5 page faults per packet sent, ~25 us each under TCG (4 us natively)."""
        spares = self._spares
        if not spares or len(spares[-1]) != source.nbytes or not source.c_contiguous:
            return bytearray(source)
        buffer = spares.pop()
        buffer[:] = source if source.format == "B" and source.ndim == 1 else source.cast("B")
        return buffer

    def _keep(self, buffer: bytearray) -> None:
        """The copy of a message just acknowledged, kept for the next message of its size: at most
        ``SPARE_COPIES``, all of one size (a collective sends chunks of one size; a new size drops the rest)."""
        if self._spares and len(self._spares[-1]) != len(buffer):
            self._spares.clear()
        if len(self._spares) < SPARE_COPIES:
            self._spares.append(buffer)

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
        if self._next < self._end or self._repairs:
            self._send_some(now_ns)

    def _send_some(self, now_ns: int) -> None:
        """Send up to ``SEND_BATCH`` packets, as long as there are some, the window is open and the pacer allows.

        ``_sendable``, ``_transmit`` and the pacing rate's property inline (see the module docstring): what
        the old loop called per packet cost more than the system call under TCG."""
        cc, pacer, segments, repairs, counters = self.cc, self._pacer, self._segments, self._repairs, self.counters
        sendto, tos, peer, flow, dqpn = self.nic.sendto, self._tos, self.peer, self._data_flow, self.peer_qpn
        start_psn, ackreq_every, cap, clock = self.config.start_psn, self.config.ackreq_every, self.max_rate_bps, \
            time.monotonic_ns
        direct = self.nic.direct_sendto(tos)
        seen, on_send = self._on_send
        if seen is not cc:  # the algorithm was swapped (rank.py does): look again
            on_send = None if ignores_sends(cc) else cc.on_send
            self._on_send = cc, on_send
        rate = cc.rate_bps if cap is None else min(cc.rate_bps, cap)  # re-read after each cc.on_send
        sent = sent_bytes = ip_bytes = 0
        try:
            for _ in range(SEND_BATCH):
                if repairs:
                    index = self._sendable()
                    if index is None:
                        return
                else:  # what _sendable does without repairs
                    index, una = self._next, self._una
                    if index >= self._end:
                        return
                    cwnd = cc.cwnd_bytes
                    if cwnd is not None and index != una:
                        segment = segments[index - una]
                        inflight = segment.start - segments[0].start
                        if inflight and inflight + segment.size > cwnd:
                            return
                if pacer.delay_ns(now_ns, rate):
                    return
                segment = segments[index - self._una]
                packet = build_data_unchecked(flow, dqpn, (start_psn + index) & psn.PSN_MASK, segment.msg_id,
                                              segment.offset, segment.msg_len, segment.payload, now_ns,
                                              segment.last or (index + 1) % ackreq_every == 0)
                nbytes = len(packet)
                try:
                    if direct is None:
                        sendto(packet, tos, peer)
                    else:
                        direct(packet, peer)
                    ip_bytes += nbytes + IP_UDP_HEADER_BYTES  # what a capture of the path sees
                except OSError as error:  # a full socket buffer is a drop, like a NIC's: NAK or RTO recovers it
                    if error.errno not in _DROPS:
                        raise
                    counters["send_errors"] += 1
                if index < self._highest:
                    segment.retransmitted = True
                    self._last_retransmit_ns = now_ns
                    counters["retransmitted_packets"] += 1
                else:
                    self._highest = index + 1
                segment.sent_ns = now_ns
                if repairs and repairs[0] == index:
                    repairs.popleft()
                else:
                    self._next += 1
                sent += 1
                sent_bytes += segment.size
                if not self._first_send_ns:
                    self._first_send_ns = now_ns
                if on_send is not None:
                    on_send(now_ns, nbytes)
                rate = cc.rate_bps if cap is None else min(cc.rate_bps, cap)
                pacer.on_send(now_ns, nbytes + IP_UDP_HEADER_BYTES, rate)
                if self._rto_due_ns is None:
                    self._rto_due_ns = now_ns + self._rtt.rto_ns
                now_ns = clock()
        finally:
            counters["packets_sent"] += sent
            counters["bytes_sent"] += sent_bytes
            counters["ip_bytes_sent"] += ip_bytes

    def next_wakeup_ns(self, now_ns: int) -> int:
        due = self.cc.next_timer_ns
        rto = self._rto_due_ns
        if rto is not None and (due is None or rto < due):
            due = rto
        if (self._next < self._end or self._repairs) and self._sendable() is not None:
            paced = now_ns + self._pacer.delay_ns(now_ns, self.pacing_rate_bps)
            if due is None or paced < due:
                due = paced
        return FAR_FUTURE_NS if due is None else due

    def _sendable(self) -> int | None:
        """The index of the packet to send next, if any and the window allows: repairs first (selective repeat)."""
        while self._repairs and self._repairs[0] < self._una:
            self._repairs.popleft()  # acknowledged meanwhile
        if self._repairs:
            return self._repairs[0]
        if self._next < self._end and self._window_open(self._segments[self._next - self._una]):
            return self._next
        return None

    def on_packet(self, packet: RocePacket, tos: int, peer: tuple[str, int], now_ns: int) -> None:
        kind = packet.kind
        if kind is _ACK:
            self.counters["acks_received"] += 1
            una = self._una
            index = una + (((packet.psn - (self.config.start_psn + una)) + psn.HALF) & psn.PSN_MASK) - psn.HALF
            if una <= index < self._highest:
                self._acknowledge(index + 1, now_ns, from_ack=True)
        elif kind is _DATA:
            self.counters["malformed"] += 1
        elif kind is _CNP:
            if packet.queue_delay_ns is None:
                self.counters["cnps_received"] += 1
                self.cc.on_cnp(now_ns)
                self._record(now_ns, "cnp")
            else:
                self.counters["delay_reports_received"] += 1
                self.cc.on_queue_delay(now_ns, packet.queue_delay_ns)
                self._record(now_ns, "delay_report")
        else:
            self._on_nak(self._index_of(packet.psn), now_ns)

    def _on_nak(self, index: int, now_ns: int) -> None:
        """Everything before ``index`` arrived; resend ``index`` alone (selective repeat) or go back to it."""
        self.counters["naks_received"] += 1
        if not self._una <= index < self._highest:
            return  # stale: a NAK for a gap already recovered
        self._acknowledge(index, now_ns, from_ack=False)
        self._go_back(index)
        self.cc.on_loss(now_ns)
        self._record(now_ns, "nak")

    def _acknowledge(self, una: int, now_ns: int, from_ack: bool) -> None:
        """Segments before absolute index ``una`` were received: release them and take an RTT sample (for the
        congestion control too if ``from_ack`` and the newest segment asked for an ACK: module docstring)."""
        if una <= self._una:
            return
        popleft = self._segments.popleft
        acked_bytes = completed = 0
        for _ in range(una - self._una):
            segment = popleft()
            acked_bytes += segment.size
            if segment.last:
                completed += 1
                if type(segment.payload.obj) is bytearray:  # the sender's copy (a caller's bytes is not one)
                    self._keep(segment.payload.obj)
        self._una = una
        # the sample is the newest packet acknowledged's (see the module docstring)
        timed = not segment.retransmitted and segment.sent_ns > self._last_retransmit_ns
        rtt_ns = now_ns - segment.sent_ns if timed else None
        asked = from_ack and (segment.last or una % self.config.ackreq_every == 0)  # see _send_some's ackreq
        path_rtt_ns = rtt_ns if asked else None
        counters = self.counters
        counters["messages_acked"] += completed
        if una > self._next:
            self._next = una
        if rtt_ns is None:
            self._rtt.on_progress()
        else:
            self._rtt.on_sample(rtt_ns)
            counters["rtt_samples"] += 1
        counters["bytes_acked"] += acked_bytes
        self._last_ack_ns = now_ns
        self._rto_due_ns = now_ns + self._rtt.rto_ns if self._una < self._next else None
        self.cc.on_ack(now_ns, acked_bytes, path_rtt_ns)
        self._record(now_ns, "ack", path_rtt_ns)

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
