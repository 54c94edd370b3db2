"""A rank's queue pairs and its link to the fabric controller: what every workload a rank runs (a collective's
steps, ``testbed.collective.rank``; long flows, ``testbed.collective.point_to_point``) moves its data over.

With a job's ``dilation`` k the rank is the transport's boundary of ``testbed.model.dilation``: its queue
pairs run ``TransportConfig.dilated`` and every congestion control, pushed or not, ``controllers.dilated.Dilated``;
what the controller pushes (CNP intervals, pacing caps) is declared and converted here.
"""

import time

from controllers.dilated import Dilated
from controllers.registry import from_spec
from testbed.collective.control_channel import ControlClient
from testbed.collective.flow_samples import FlowSampler
from testbed.collective.qp_numbers import receiver_qpn, sender_qpn
from testbed.roce.nic import MAX_WAIT_NS, Nic, run
from testbed.roce.receiver import Receiver
from testbed.roce.sender import Sender
from testbed.roce.transport import TransportConfig

CONTROL_POLL_NS = 10_000_000
# While a collective runs, the event loop re-checks its predicate (control messages, telemetry) at least every
# MAX_WAIT_NS times k, up to this, instead of every 5 ms: natively an idle rank's 194 wake-ups a second cost
# 2.4 % of a core, nearly all of it in epoll_wait's timer, which under TCG goes through qemu.  Measured in
# the microVM, the congested 1000 km test scenario at k 22: a rank's CPU 0.26-0.32 of the wall clock before,
# 0.19-0.30 after; its CPU demand (with the time it waited for one) 0.43-0.55 before, 0.28-0.47 after;
# lateness p99 5.8-9.7 ms before, 5.8-8.2 after.  A control message then waits at most 5 ms declared.
MAX_DILATED_WAIT_NS = 100_000_000
FLOW_COUNTERS = ("packets_sent", "retransmitted_packets", "cnps_received", "delay_reports_received", "timeouts",
                 "naks_received", "send_errors")
STEP_TIMEOUT_S = 120.0  # no progress for this long (wall time), nor for two dilated maximum RTOs: a peer died


class RankLinks:
    """This rank's queue pairs, opened on first use: a sender per (peer, channel), a receiver likewise.

    Each peer's senders run the job's congestion control until the fabric controller pushes one for that
    peer's path (``apply``), over the control channel when the job has one."""

    def __init__(self, nic: Nic, rank: int, addresses: list[str], cc_spec: dict, config: TransportConfig,
                 control: ControlClient | None = None, telemetry_ns: int = 0, dilation: float = 1.0) -> None:
        self.nic, self.rank, self.addresses, self.control = nic, rank, addresses, control
        self.config, self.dilation = config.dilated(dilation), dilation
        self.step_timeout_s = max(STEP_TIMEOUT_S, 2 * self.config.max_rto_ns / 1e9)
        self.max_wait_ns = round(min(MAX_DILATED_WAIT_NS, max(1.0, dilation) * MAX_WAIT_NS))
        self.telemetry = FlowSampler(rank, addresses, telemetry_ns, dilation)
        self.cc_specs = {peer: cc_spec for peer in range(len(addresses))}
        self.senders: dict[tuple[int, int], Sender] = {}
        self.receivers: dict[tuple[int, int], Receiver] = {}
        self._next_poll_ns = 0

    def sender(self, peer: int, channel: int) -> Sender:
        key, n = (peer, channel), len(self.addresses)
        if key not in self.senders:
            self.senders[key] = Sender(self.nic, (self.addresses[peer], self.nic.address[1]),
                                       sender_qpn(peer, channel, n), receiver_qpn(self.rank, channel, n),
                                       self._congestion_control(self.cc_specs[peer]), self.config)
        return self.senders[key]

    def _congestion_control(self, spec: dict):
        """The algorithm ``spec`` names (declared units), run at this job's dilation."""
        algorithm = from_spec(spec)
        return algorithm if self.dilation == 1 else Dilated(algorithm, self.dilation)

    def receiver(self, peer: int, channel: int) -> Receiver:
        key, n = (peer, channel), len(self.addresses)
        if key not in self.receivers:
            self.receivers[key] = Receiver(self.nic, receiver_qpn(peer, channel, n),
                                           sender_qpn(self.rank, channel, n), self.config)
        return self.receivers[key]

    def open_all(self, channels: int) -> None:
        """Open every queue pair up front, so a peer's first chunk never meets an unknown QP."""
        for peer in range(len(self.addresses)):
            for channel in range(channels):
                if peer != self.rank:
                    self.sender(peer, channel)
                    self.receiver(peer, channel)

    def all_acknowledged(self) -> bool:
        return all(sender.all_acknowledged() for sender in self.senders.values())

    def apply(self, message: dict) -> None:
        """A controller message: ``{"cc": {peer: spec}}`` gives those peers' senders a fresh congestion
        control; ``{"cnp_interval_ns": {peer: ns or None}}`` paces the CNPs this rank's receivers send them
        (None: none, a border answers their marks, ``testbed.collective.near_source``);
        ``{"delay_reports": {peer: [target_queue_ns, base_rtt_ns]}}`` has them report the forward queueing
        delay above that target (``controllers.forward_delay``);
        ``{"pace": {peer: bits/s or None}}`` caps (or uncaps) the senders' pacing rate.  Declared units."""
        for peer, spec in message.get("cc", {}).items():
            self.cc_specs[int(peer)] = spec
            for sender in _of_peer(self.senders, peer):
                sender.cc = self._congestion_control(spec)
        for peer, interval in message.get("cnp_interval_ns", {}).items():
            for receiver in _of_peer(self.receivers, peer):
                receiver.set_cnp_interval(None if interval is None else round(interval * self.dilation))
        for peer, (target, rtt) in message.get("delay_reports", {}).items():
            for receiver in _of_peer(self.receivers, peer):
                receiver.set_delay_reports(round(target * self.dilation), round(rtt * self.dilation))
        for peer, cap in message.get("pace", {}).items():
            for sender in _of_peer(self.senders, peer):
                sender.max_rate_bps = None if cap is None else cap / self.dilation

    def poll_control(self, now: bool = False) -> None:
        """Apply what the controller pushed, looking at most every CONTROL_POLL_NS (a syscall per packet
        would cost more than the control loop needs) unless ``now``."""
        clock = time.monotonic_ns()
        if self.control is None or (clock < self._next_poll_ns and not now):
            return
        self._next_poll_ns = clock + CONTROL_POLL_NS
        for message in self.control.poll():
            self.apply(message)

    def tick(self) -> None:
        """What the event loop does besides moving packets: apply control messages, sample the flows."""
        self.poll_control()
        self.telemetry.maybe_sample(self.senders, self.receivers)

    def serve_until(self, done, failure: str) -> None:
        """Serve the NIC (and ``tick``) until ``done()``; a TimeoutError "rank R: <failure> <timeout> s" when no
        progress came within the step timeout (a peer died)."""
        if not run([self.nic], lambda: self.tick() or done(), self.step_timeout_s, self.max_wait_ns):
            raise TimeoutError(f"rank {self.rank}: {failure} {self.step_timeout_s:g} s")

    def counters(self) -> dict:
        """The senders' counters summed, the packets the receivers got twice (``duplicates``: a
        retransmission whose original had arrived, i.e. a spurious one, unless the fabric duplicates), and
        the packets this host lost outside the fabric's queues: datagrams its socket refused to send
        (``send_errors``) or dropped on arrival with its receive buffer full (``socket_drops``).  What the
        controller reports per run."""
        sent = {name: sum(s.counters[name] for s in self.senders.values()) for name in FLOW_COUNTERS}
        return {**sent, "duplicates": sum(r.counters["duplicates"] for r in self.receivers.values()),
                "socket_drops": self.nic.socket_drops()}


def _of_peer(ends: dict, peer: int | str) -> list:
    """The queue-pair ends of ``ends`` (keyed by (peer, channel)) that talk to ``peer``, every channel."""
    return [end for (other, _), end in ends.items() if other == int(peer)]
