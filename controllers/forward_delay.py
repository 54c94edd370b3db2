"""The receiver's half of the adaptive sender's delay signal: the forward path's standing queueing delay, from
one-way delays, reported to the sender while it exceeds the target.

Why at the receiver: every DCI carries both directions, so a flow's ACKs queue behind the other direction's
data.  A delay signal read from RTT samples then cuts a sender for a queue it does not feed: in issue 14's
100 km runs the west->east senders were cut from 0.63 / 1.08 to 0.47 / 0.65 Gbit/s, with no CNP, while
east->west ran 2.9 Gbit/s into its 2 Gbit/s DCI, and at 10 km one direction held at 10-13 of 20 Gbit/s
while the other ran 21-22.  The queue a sender can drain is the one on its forward path, and only the
receiver sees it alone: each data packet carries its send timestamp (``testbed.roce.rocev2``), so

  one-way delay   d   = arrival - send timestamp
  base            d_0 = the flow's smallest d                      LEDBAT, RFC 6817 section 3.4.2
  standing        d_s = the smallest d of the last half base RTT   Copa's RTT_standing (Arun and
                                                                   Balakrishnan, NSDI'18), one way
  queueing delay  q   = d_s - d_0

The clocks of the two hosts need not agree: an offset between them is in every d and cancels in d_s - d_0
(LEDBAT's point; drift is negligible over one run).  The minimum over half a round trip, not the newest
sample, because a queue is what every packet of that half round trip waited in, whereas one late sample is
an end host's scheduling (the receiver stamps arrival when its event loop reads the packet).

While q exceeds the target queue, at most ``REPORTS_PER_RTT`` times per base RTT, the receiver sends q to
the sender in a CNP (``testbed.roce.rocev2.build_cnp``, the reserved bytes; a NIC that ignores them takes
the report for a CNP and cuts as DCQCN does), and the sender cuts by Swift's factor
(``controllers.adaptive``).  Eight per RTT, the adaptive notification point's CNP pacing, so that a
sender's guard (one cut per RTT) is never kept waiting long for a fresh value.
"""

import collections

from controllers.adaptive import CNPS_PER_RTT, check_positive

REPORTS_PER_RTT = CNPS_PER_RTT


class ForwardDelayPoint:
    """One flow's receiver-side queueing-delay monitor (module docstring); times in ns of the receiver's clock."""

    def __init__(self, target_queue_ns: int, base_rtt_ns: int) -> None:
        check_positive("target_queue_ns", target_queue_ns)
        check_positive("base_rtt_ns", base_rtt_ns)
        self.target_queue_ns = target_queue_ns
        self.window_ns = base_rtt_ns // 2
        self.interval_ns = base_rtt_ns // REPORTS_PER_RTT
        self.base_ns: int | None = None  # d_0
        self._last_report_ns: int | None = None
        # (arrival, d) of the last half base RTT, d increasing: the first is the standing one-way delay
        self._recent: collections.deque[tuple[int, int]] = collections.deque()

    def on_data(self, now_ns: int, one_way_ns: int) -> int | None:
        """A data packet whose one-way delay was ``one_way_ns`` arrived at ``now_ns``: the queueing delay to
        report to its sender now, or None."""
        if self.base_ns is None or one_way_ns < self.base_ns:
            self.base_ns = one_way_ns
        queue_ns = self._standing(now_ns, one_way_ns) - self.base_ns
        if queue_ns <= self.target_queue_ns:
            return None
        if self._last_report_ns is not None and now_ns - self._last_report_ns < self.interval_ns:
            return None
        self._last_report_ns = now_ns
        return queue_ns

    def _standing(self, now_ns: int, one_way_ns: int) -> int:
        """The smallest one-way delay of the last half base RTT, this one included: a monotonic queue, so each
        sample is added and dropped once."""
        recent = self._recent
        while recent and recent[-1][1] >= one_way_ns:
            recent.pop()  # never the minimum again: a smaller sample came later
        recent.append((now_ns, one_way_ns))
        horizon = now_ns - self.window_ns
        while recent[0][0] < horizon:
            recent.popleft()
        return recent[0][1]
