"""The receiving end of a queue pair: in-order acceptance, reassembly, coalesced ACKs, one NAK per gap, CNPs.

Like a RoCE responder it accepts only the PSN it expects.  A later PSN means packets were lost: it sends
one NAK (PSN sequence error, carrying the expected PSN) and then stays silent about that gap until the
expected packet arrives, so a burst of out-of-order packets does not become a NAK storm.  An earlier PSN
is a duplicate (a go-back-N retransmission of something already delivered): dropped and re-ACKed, so a
sender whose ACK was lost learns where the receiver is.  With ``TransportConfig.selective_repeat`` a later
PSN within ``reorder_window`` is buffered instead of dropped (counted as ``buffered``, not
``out_of_order``) and accepted once the gap before it is filled; if a further gap then shows, it is NAKed
at once, since the packets after it are already here.  A packet failing its ICRC is dropped (and counted by the NIC),
and the gap it leaves is then NAKed like a loss.  ECN: every data packet's IP TOS is read (IP_RECVTOS);
CE-marked ones ask the DCQCN notification point (``CnpPacer``) whether to send a CNP now.  Delay: where the
fabric controller asks for it (``set_delay_reports``), every data packet's one-way delay (arrival minus its
send timestamp) goes to a ``ForwardDelayPoint``, and the queueing delay it reports goes back to the sender
in a CNP that carries it (``controllers.forward_delay``), counted as ``delay_reports_sent``: ``cnps_sent``
counts only the CNPs that answer CE marks.

Messages come back as bytearrays; a numpy array sent with ``Sender.send`` comes back with
``numpy.frombuffer(receiver.recv(timeout_s), dtype=...).reshape(...)`` (dtype and shape are the
application's to agree on, as with a RoCE SEND).  ``recv`` returns a message already waiting without
turning the event loop (it used to run one turn, with a new selector, per message).

The expected packet, nearly every packet, takes ``on_packet`` then ``_accept``, which places its data itself:
two calls where there were four and a PSN distance (see "Speed" in ``testbed.roce.transport``).
"""

import collections

from controllers.dcqcn import CnpPacer
from controllers.forward_delay import ForwardDelayPoint
from testbed.roce import psn
from testbed.roce.nic import FAR_FUTURE_NS, Nic
from testbed.roce.rocev2 import CE, Flow, Kind, RocePacket, build_ack, build_cnp, build_nak, ip_tos
from testbed.roce.transport import QueuePairEnd, TransportConfig

_DATA = Kind.DATA


class Receiver(QueuePairEnd):
    """Queue pair ``qpn``'s responder on ``nic``; ACKs, NAKs and CNPs go to the sender's ``peer_qpn``."""

    def __init__(self, nic: Nic, qpn: int, peer_qpn: int, config: TransportConfig = TransportConfig()) -> None:
        super().__init__(nic, qpn, peer_qpn, config)
        self._cnp_tos, self._ack_tos = ip_tos(Kind.CNP, config.dscp), ip_tos(Kind.ACK, config.dscp)
        self._cnp_pacer = CnpPacer(config.cnp_interval_ns)
        self._delay_point: ForwardDelayPoint | None = None
        self._expected = config.start_psn
        self._msn = 0
        self._nak_outstanding = False
        self._unacked = 0  # packets accepted since the last ACK
        self._ack_due_ns: int | None = None
        self._peer: tuple[str, int] | None = None
        self._reply_flow: tuple[tuple[str, int] | None, Flow | None] = (None, None)  # (peer, the flow back to it)
        self._partial: bytearray | None = None
        self._partial_id = 0
        self._filled = 0
        self._delivered: collections.deque[bytearray] = collections.deque()
        self._buffer: dict[int, RocePacket] = {}  # selective repeat: out-of-order packets by PSN
        self.counters.update(packets=0, bytes=0, messages=0, duplicates=0, out_of_order=0, buffered=0, acks_sent=0,
                             naks_sent=0, ce_marked=0, cnps_sent=0, delay_reports_sent=0)
        self.series: list[dict] = []  # one row per delivered message, per CNP and per delay report sent

    def set_cnp_interval(self, interval_ns: int | None) -> None:
        """Send at most one CNP per ``interval_ns`` from now on (the notification point's knob, per path);
        None: send none (near-source feedback answers the marks at the sender's border)."""
        self._cnp_pacer = CnpPacer(interval_ns)

    def set_delay_reports(self, target_queue_ns: int | None, base_rtt_ns: int | None = None) -> None:
        """From now on report the forward queueing delay to the sender while it exceeds ``target_queue_ns``,
        judged over half of ``base_rtt_ns`` (``controllers.forward_delay``); None: report none."""
        self._delay_point = None if target_queue_ns is None else ForwardDelayPoint(target_queue_ns, base_rtt_ns)

    def recv(self, timeout_s: float) -> bytearray:
        """The next delivered message; raises TimeoutError if none arrives within ``timeout_s``.

        It is the buffer the message was reassembled in, handed over without a copy (messages can be
        tensors of many megabytes); ``numpy.frombuffer`` on it gives a writable array.
        """
        if not self._delivered and not self.run_until(self.has_message, timeout_s):
            raise TimeoutError(f"no message within {timeout_s} s")
        return self._delivered.popleft()

    def has_message(self) -> bool:
        """True when a delivered message waits to be taken with ``recv``."""
        return bool(self._delivered)

    @property
    def waiting(self) -> int:
        """How many delivered messages wait to be taken with ``recv``."""
        return len(self._delivered)

    def on_packet(self, packet: RocePacket, tos: int, peer: tuple[str, int], now_ns: int) -> None:
        if packet.kind is not _DATA:
            self.counters["malformed"] += 1
            return
        self._peer = peer
        if tos & CE == CE:
            self._on_ce(now_ns)
        if self._delay_point is not None:
            self._on_one_way_delay(now_ns - packet.timestamp_ns, now_ns)
        if packet.psn == self._expected:  # distance 0, the common case, without psn.diff's call
            self._accept(packet, now_ns)
            if self._buffer:
                self._accept_buffered(now_ns)
            return
        distance = psn.diff(packet.psn, self._expected)
        if distance < 0 or packet.psn in self._buffer:
            self.counters["duplicates"] += 1
            self._send_ack()
        else:
            if self.config.selective_repeat and distance < self.config.reorder_window:
                self._buffer[packet.psn] = packet
                self.counters["buffered"] += 1
            else:
                self.counters["out_of_order"] += 1
            if not self._nak_outstanding:
                self._send_nak()

    def _accept_buffered(self, now_ns: int) -> None:
        """The expected packet was just accepted: accept the buffered ones that now follow it (selective
        repeat), then NAK the next hole, if any."""
        while self._expected in self._buffer:
            self._accept(self._buffer.pop(self._expected), now_ns)
        if self._buffer:
            self._send_nak()

    def _send_nak(self) -> None:
        self._nak_outstanding = True
        nak = build_nak(self._flow_back(), dqpn=self.peer_qpn, psn=self._expected, msn=self._msn)
        self._send(nak, "naks_sent")

    def _on_ce(self, now_ns: int) -> None:
        self.counters["ce_marked"] += 1
        if self._cnp_pacer.on_ce(now_ns):
            self._send(build_cnp(self._flow_back(), dqpn=self.peer_qpn), "cnps_sent", self._cnp_tos)
            self.series.append(dict(t_ns=now_ns, event="cnp", delivered_bytes=self.counters["bytes"]))

    def _on_one_way_delay(self, one_way_ns: int, now_ns: int) -> None:
        queue_ns = self._delay_point.on_data(now_ns, one_way_ns)
        if queue_ns is not None:
            report = build_cnp(self._flow_back(), dqpn=self.peer_qpn, queue_delay_ns=queue_ns)
            self._send(report, "delay_reports_sent", self._cnp_tos)
            self.series.append(dict(t_ns=now_ns, event="delay_report", delivered_bytes=self.counters["bytes"],
                                    queue_delay_ns=queue_ns))

    def _accept(self, packet: RocePacket, now_ns: int) -> None:
        """Place the expected packet's data in its message (the copy ``_place`` did, inlined: one call less per
        packet), ACK as the coalescing rules say and deliver the message it completes."""
        payload, offset, msg_len = packet.payload, packet.offset, packet.msg_len
        if offset == 0:
            self._partial, self._partial_id, filled = bytearray(msg_len), packet.msg_id, 0
        else:
            filled = self._filled
            if (self._partial is None or packet.msg_id != self._partial_id or offset != filled
                    or msg_len != len(self._partial)):
                self.counters["malformed"] += 1  # it does not continue the message being reassembled
                return
        size = len(payload)
        self._partial[filled:filled + size] = payload
        self._filled = filled = filled + size
        self._expected = (self._expected + 1) & psn.PSN_MASK
        self._nak_outstanding = False
        self.counters["packets"] += 1
        self._unacked += 1
        complete = filled == msg_len
        if complete:
            self._msn = (self._msn + 1) & psn.PSN_MASK
        if packet.ackreq or self._unacked >= self.config.ack_every:
            self._send_ack()
        elif self._ack_due_ns is None:
            self._ack_due_ns = now_ns + self.config.ack_delay_ns
        if complete:
            self._deliver(packet, now_ns)

    def _deliver(self, packet: RocePacket, now_ns: int) -> None:
        self._delivered.append(self._partial)
        self._partial = None
        self.counters["messages"] += 1
        self.counters["bytes"] += packet.msg_len
        self.series.append(dict(t_ns=now_ns, event="message", delivered_bytes=self.counters["bytes"],
                                one_way_delay_ns=now_ns - packet.timestamp_ns))

    def _send_ack(self) -> None:
        self._unacked, self._ack_due_ns = 0, None
        ack = build_ack(self._flow_back(), dqpn=self.peer_qpn, psn=(self._expected - 1) & psn.PSN_MASK, msn=self._msn)
        self._send(ack, "acks_sent")

    def _flow_back(self) -> Flow:
        """The flow from this NIC to the peer the last data came from (what ACKs, NAKs and CNPs go on)."""
        peer, flow = self._reply_flow
        if peer != self._peer:
            peer, flow = self._reply_flow = self._peer, self.nic.flows(self._peer)[1]
        return flow

    def _send(self, packet: bytes, counter: str, tos: int | None = None) -> None:
        """Send to the peer: ACKs and NAKs ECT(0), CNPs with ``tos`` (ECT(1))."""
        self.nic.sendto(packet, self._ack_tos if tos is None else tos, self._peer)
        self.counters[counter] += 1

    def on_clock(self, now_ns: int) -> None:
        if self._ack_due_ns is not None and now_ns >= self._ack_due_ns:
            self._send_ack()

    def next_wakeup_ns(self, now_ns: int) -> int:
        return FAR_FUTURE_NS if self._ack_due_ns is None else self._ack_due_ns
