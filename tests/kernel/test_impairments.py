"""Loss, burst loss, jitter, reordering and ECN marking on a live DCI link, set and reset at run time."""

import itertools
import math
import re
import threading
import time

import pytest
from scapy.layers.inet import IP
from scapy.utils import PcapReader

from testbed.experiments.probes import iperf_udp, ping
from testbed.net.link import netlink
from testbed.net.tc.qdisc import read_config
from testbed.observe.capture import Capture

pytestmark = pytest.mark.kernel

ECT0, CE = 0b10, 0b11
REPLY = re.compile(r"bytes from .* icmp_seq=(\d+)")


def test_loss_drops_packets_and_resetting_to_zero_stops_the_drops(two_sites):
    """10 % loss each way: every lost ping is a netem drop at one of the two DCI egresses, and 0 % is clean."""
    link = two_sites.dci("west", "east")
    ends = (two_sites.egress("westb", "eastb"), two_sites.egress("eastb", "westb"))
    src, dst = two_sites.hosts("west")[1], two_sites.hosts("east")[1]

    def pings_and_drops() -> tuple[int, int]:
        before = [end.stats()["netem_drops"] for end in ends]
        result = ping(src, dst, count=500, interval_s=0.005)
        return result["sent"] - result["received"], sum(e.stats()["netem_drops"] - b for e, b in zip(ends, before))

    try:
        link.set(loss_pct=10)
        lost, dropped = pings_and_drops()
        assert 0.10 < lost / 500 < 0.30, lost  # 1 - 0.9**2 = 19 % of round trips
        assert dropped == lost  # nothing but the pings crosses the DCI: neighbours are pinned, no ARP
        link.set(loss_pct=0)
        assert pings_and_drops() == (0, 0)
    finally:
        link.set(loss_pct=0)


def lost_runs(src, dst, count: int, interval_s: float) -> list[int]:
    """Ping ``count`` times; the lengths of the runs of consecutive pings that got no reply, in order."""
    replied = {int(seq) for seq in REPLY.findall(src.cmd(f"ping -c {count} -i {interval_s} -W 5 {dst.IP()}"))}
    lost = [seq not in replied for seq in range(1, count + 1)]
    return [len(list(run)) for is_lost, run in itertools.groupby(lost) if is_lost]


def gilbert_loss_sd(count: int, loss: float, burst: float) -> float:
    """Standard deviation of the loss fraction of ``count`` packets through a simple Gilbert chain.

    Its losses are correlated, so the binomial variance loss * (1 - loss) / count grows by (1 + l) / (1 - l),
    where l = 1 - p - r is the chain's second eigenvalue: about 6.6 times for 5 % in bursts of 4.
    """
    r = 1 / burst
    eigen = 1 - r - r * loss / (1 - loss)
    return math.sqrt(loss * (1 - loss) / count * (1 + eigen) / (1 - eigen))


def test_burst_loss_keeps_the_average_loses_in_runs_and_resets_live(two_sites):
    """5 % loss in bursts of 4, west -> east only, so each lost ping is one packet lost in that direction.

    Bounds are 4.5 standard deviations: of the loss fraction (see gilbert_loss_sd) and of the mean run (a
    geometric length, variance (1 - r) / r**2, over the runs seen).  Independent loss of 5 % gives runs of
    1 / 0.95 = 1.05 packets on average.
    """
    west, east = two_sites.egress("westb", "eastb"), two_sites.egress("eastb", "westb")
    src, dst = two_sites.hosts("west")[0], two_sites.hosts("east")[0]

    def held() -> tuple[float, dict | None]:
        config = read_config(netlink(west.node), west.index)
        return config["netem_loss_pct"], config["netem_loss_gemodel_pct"]

    def measure(count: int) -> tuple[list[int], int, int]:
        """Runs of lost pings, and the netem drops at the west and east egresses meanwhile."""
        before = [end.stats()["netem_drops"] for end in (west, east)]
        runs = lost_runs(src, dst, count, interval_s=0.003)
        return runs, *(end.stats()["netem_drops"] - b for end, b in zip((west, east), before))

    try:
        west.set(loss_pct=5, loss_burst_pkts=4)
        assert held() == (0, pytest.approx({"p": 100 / 76, "r": 25, "h": 0, "k1": 0}))  # p = r * 0.05 / 0.95
        runs, west_drops, east_drops = measure(5000)
        lost, mean_run = sum(runs), sum(runs) / len(runs)
        print(f"burst loss: {lost / 5000:.2%} of 5000 in {len(runs)} runs, mean {mean_run:.2f}, max {max(runs)}")
        assert abs(lost / 5000 - 0.05) <= 4.5 * gilbert_loss_sd(5000, 0.05, 4), runs
        assert abs(mean_run - 4) <= 4.5 * math.sqrt(0.75 * 4**2 / len(runs)), runs
        assert west_drops == lost and east_drops == 0  # only the pings cross: neighbours are pinned, no ARP

        west.set(loss_burst_pkts=0)  # the same 5 %, independent again
        assert held() == (pytest.approx(5), None)
        runs, _, _ = measure(1000)
        print(f"independent loss: {sum(runs) / 1000:.2%} of 1000 in {len(runs)} runs, "
              f"mean {sum(runs) / len(runs):.2f}")
        assert abs(sum(runs) / 1000 - 0.05) <= 4.5 * math.sqrt(0.05 * 0.95 / 1000), runs
        assert sum(runs) / len(runs) < 1.5, runs

        west.set(loss_pct=0, loss_burst_pkts=0)
        assert held() == (0, None)
        assert measure(500) == ([], 0, 0)
    finally:
        west.set(loss_pct=0, loss_burst_pkts=0)


def test_jitter_varies_delay_but_reorders_only_when_asked(two_sites):
    link = two_sites.dci("west", "east")
    src, dst = two_sites.hosts("west")[2], two_sites.hosts("east")[2]
    try:
        link.set(jitter_ms=2)
        rtt = ping(src, dst, count=50, interval_s=0.02)
        assert rtt["max_ms"] - rtt["min_ms"] > 2.0, rtt  # +-2 ms each way
        ordered = iperf_udp(src, dst, mbps=20, seconds=2, length=1000)
        link.set(jitter_ms=2, reorder_pct=25)
        shuffled = iperf_udp(src, dst, mbps=20, seconds=2, length=1000)
    finally:
        link.set(jitter_ms=0, reorder_pct=0)
    # netem keeps them in order, and so does the rest of the path: before every interface steered a flow to
    # one CPU's backlog (testbed.net.steering) the two vCPUs swapped 0-0.4 % of these packets on an idle
    # host and 4.6 % under load; reorder_pct 25 shuffles 72-73 %
    assert ordered["out_of_order"] == 0, ordered
    assert shuffled["out_of_order"] >= 0.50 * shuffled["packets"], shuffled


def test_ecn_capable_traffic_above_threshold_is_marked_counted_and_captured(two_sites, tmp_path):
    west = two_sites.egress("westb", "eastb")
    src, dst = two_sites.hosts("west")[3], two_sites.hosts("east")[3]
    before = west.stats()
    with Capture(two_sites, tmp_path) as capture:  # on the west border's DCI interface: after its queue
        iperf_udp(src, dst, mbps=60, seconds=2, length=8972, tos=ECT0)  # 1.2x the 50 Mbit/s DCI
    # RED marks the queue as it is, now empty: Not-ECT pings pass at once (an EWMA kept dropping them for 4 s)
    after_congestion = ping(src, dst, count=20, interval_s=0.05)
    assert after_congestion["received"] == after_congestion["sent"] == 20, after_congestion
    assert capture.kernel_drops == {west.name: 0}, capture.kernel_drops
    after = west.stats()
    marks = after["ecn_marks"] - before["ecn_marks"]
    full_buffer_drops = after["red_overlimit_drops"] - before["red_overlimit_drops"]
    assert marks > 0, after
    captured_ce = 0
    for path in capture.files:
        with PcapReader(str(path)) as packets:
            captured_ce += sum(1 for p in packets if IP in p and p[IP].tos & 0b11 == CE)
    # RED counts a mark on enqueue; a marked packet can still meet a full buffer and be dropped after it
    assert marks - full_buffer_drops <= captured_ce <= marks, (captured_ce, marks, full_buffer_drops)
    assert captured_ce > 0


def test_changing_the_thresholds_under_a_standing_queue_keeps_the_queue(two_sites):
    """The latency loop re-sets a DCI's thresholds while its queue stands: nothing queued may be lost.  The
    kernel swaps RED's queue for a new one on a change that names a buffer, counting the flushed packets as
    drops of the tree but not of RED (its own early and overlimit counters): so every drop of the tree
    must be RED's own, and the buffer must read back unchanged from where the queue now lives."""
    west = two_sites.egress("westb", "eastb")
    src, dst = two_sites.hosts("west")[2], two_sites.hosts("east")[2]
    original, buffer_bytes = west.shape, read_config(netlink(west.node), west.index)["buffer_bytes"]
    before = west.stats()
    load = threading.Thread(target=iperf_udp, args=(src, dst), daemon=True,
                            kwargs={"mbps": 55, "seconds": 3, "length": 8972, "tos": ECT0})  # 1.1x the DCI
    load.start()
    standing, changes = [], itertools.cycle([(buffer_bytes // 8, buffer_bytes // 3), (buffer_bytes // 16,
                                                                                         buffer_bytes // 4)])
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            kmin, kmax = next(changes)
            west.set(ecn_kmin_bytes=kmin, ecn_kmax_bytes=kmax)
            standing.append(west.stats()["backlog_bytes"])
            time.sleep(0.1)
        held = read_config(netlink(west.node), west.index)
    finally:
        load.join()
        west.set(ecn_kmin_bytes=original.ecn_kmin_bytes, ecn_kmax_bytes=original.ecn_kmax_bytes)
    after = west.stats()
    print(f"{len(standing)} changes, backlog after each (bytes): {standing}")
    assert (held["buffer_bytes"], held["ecn_kmin_bytes"]) == (buffer_bytes, kmin)
    assert max(standing) > 50_000  # a queue stood while the thresholds changed
    red_drops = sum(after[k] - before[k] for k in ("red_early_drops", "red_overlimit_drops", "netem_drops"))
    assert after["drops"] - before["drops"] == red_drops, (before, after)
