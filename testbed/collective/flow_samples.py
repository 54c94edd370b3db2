"""A rank's side of the run's telemetry: its queue pairs' counters every interval, and its collective steps.

The rank samples inside its own event loop (no thread: the loop already wakes at least every 5 ms) and
hands the rows over with each command's answer; ``testbed.observe.telemetry`` turns them into the ``flows`` and
``steps`` tables.  Times are ``time.monotonic_ns()``, the clock the whole run shares (network namespaces
do not have clocks of their own), so these rows line up with the queue samples taken in the root namespace
and with the packet captures.  Rows are lists under a column header: a long command yields thousands.
Times stay on that clock (``testbed.observe.telemetry`` makes ``t_s`` declared); the rates, RTTs and waits
in the rows are declared (``testbed.model.dilation``): the rank's own measurements, converted where they
are taken.
"""

import time

SENDER_COUNTERS = ("packets_sent", "ip_bytes_sent", "bytes_sent", "bytes_acked", "retransmitted_packets",
                   "cnps_received", "delay_reports_received", "timeouts", "naks_received")
RECEIVER_COUNTERS = ("packets", "bytes", "ce_marked", "cnps_sent", "delay_reports_sent", "naks_sent", "duplicates",
                     "out_of_order")
FLOW_COLUMNS = ("t_ns", "rank", "peer", "channel", "side", "src", "dst", "sqpn", "dqpn",
                *SENDER_COUNTERS, "rate_bps", "srtt_us", *RECEIVER_COUNTERS)
STEP_COLUMNS = ("t_ns", "rank", "step", "phase", "channel", "send_peer", "recv_peer", "bytes", "wait_ms")


class FlowSampler:
    """Rows of cumulative counters of every queue-pair end of one rank, at most one sample per interval."""

    def __init__(self, rank: int, addresses: list[str], interval_ns: int, dilation: float = 1.0) -> None:
        self.rank, self.addresses, self.interval_ns, self.dilation = rank, addresses, interval_ns, dilation
        self.flows: list[list] = []
        self.steps: list[list] = []
        self._due_ns = 0

    def maybe_sample(self, senders: dict, receivers: dict) -> None:
        """Sample if the interval has passed (called from the rank's event loop)."""
        now = time.monotonic_ns()
        if self.interval_ns and now >= self._due_ns:
            self.sample(senders, receivers, now)

    def sample(self, senders: dict, receivers: dict, now: int | None = None) -> None:
        """One row per sender and receiver, keyed by (peer, channel) as ``RankLinks`` holds them."""
        now = time.monotonic_ns() if now is None else now
        self._due_ns = now + self.interval_ns
        me = self.addresses[self.rank]
        for (peer, channel), s in senders.items():
            srtt_ns = s.stats()["srtt_ns"]
            srtt = None if srtt_ns is None else srtt_ns / 1e3 / self.dilation
            self.flows.append([now, self.rank, peer, channel, "sender", me, self.addresses[peer], s.qpn, s.peer_qpn,
                               *(s.counters[c] for c in SENDER_COUNTERS), s.pacing_rate_bps * self.dilation, srtt,
                               *(None for _ in RECEIVER_COUNTERS)])
        for (peer, channel), r in receivers.items():
            self.flows.append([now, self.rank, peer, channel, "receiver", self.addresses[peer], me, r.peer_qpn,
                               r.qpn, *(None for _ in SENDER_COUNTERS), None, None,
                               *(r.counters[c] for c in RECEIVER_COUNTERS)])

    def step_done(self, index: int, step, nbytes: int, waited_ns: int) -> None:
        """A step of the collective ran, ``waited_ns`` after it first found its chunk missing."""
        if self.interval_ns:
            self.steps.append([time.monotonic_ns(), self.rank, index, step.phase, step.channel, step.send_peer,
                               step.recv_peer, nbytes, waited_ns / 1e6 / self.dilation])

    def take(self) -> dict:
        """What was recorded since the last call, for the command's answer."""
        rows = {"flow_columns": FLOW_COLUMNS, "flows": self.flows, "step_columns": STEP_COLUMNS, "steps": self.steps}
        self.flows, self.steps = [], []
        return rows
