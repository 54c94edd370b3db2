"""Loss, jitter, reordering and ECN marking on a live DCI link, set and reset at run time."""

import pytest
from scapy.layers.inet import IP
from scapy.utils import PcapReader

from testbed.capture import DciCapture
from testbed.verify import iperf_udp, ping

pytestmark = pytest.mark.kernel

ECT0, CE = 0b10, 0b11


def egress(link, node_name: str):
    """The end of ``link`` through which ``node_name`` sends."""
    return next(intf for intf in (link.intf1, link.intf2) if intf.node.name == node_name)


def test_loss_drops_packets_and_resetting_to_zero_stops_the_drops(two_sites):
    """10 % loss each way: every lost ping is a netem drop at one of the two DCI egresses, and 0 % is clean."""
    link = two_sites.dci("west", "east")
    ends = (egress(link, "westb"), egress(link, "eastb"))
    src, dst = two_sites.hosts("west")[1], two_sites.hosts("east")[1]

    def pings_and_drops() -> tuple[int, int]:
        before = [end.stats()["netem_drops"] for end in ends]
        result = ping(src, dst, count=500, interval_s=0.005, warmup=False)
        return result["sent"] - result["received"], sum(e.stats()["netem_drops"] - b for e, b in zip(ends, before))

    ping(src, dst, count=1)  # resolve ARP on every hop before the link gets lossy
    try:
        link.set(loss_pct=10)
        lost, dropped = pings_and_drops()
        assert 0.10 < lost / 500 < 0.30, lost  # 1 - 0.9**2 = 19 % of round trips
        assert lost <= dropped <= lost + 4  # besides pings, only the borders' ARP refreshes cross the DCI
        link.set(loss_pct=0)
        assert pings_and_drops() == (0, 0)
    finally:
        link.set(loss_pct=0)


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
    assert ordered["out_of_order"] <= 0.01 * ordered["packets"], ordered
    assert shuffled["out_of_order"] >= 0.05 * shuffled["packets"], shuffled


def test_ecn_capable_traffic_above_threshold_is_marked_counted_and_captured(two_sites, tmp_path):
    link = two_sites.dci("west", "east")
    west, east = egress(link, "westb"), egress(link, "eastb")
    src, dst = two_sites.hosts("west")[3], two_sites.hosts("east")[3]
    before = west.stats()
    with DciCapture(two_sites, tmp_path) as capture:
        iperf_udp(src, dst, mbps=60, seconds=2, length=8972, tos=ECT0)  # 1.2x the 50 Mbit/s DCI
    assert capture.kernel_drops[east.name] == 0, capture.kernel_drops
    after = west.stats()
    marks = after["ecn_marks"] - before["ecn_marks"]
    full_buffer_drops = after["red_overlimit_drops"] - before["red_overlimit_drops"]
    assert marks > 0, after
    with PcapReader(str(tmp_path / f"{east.name}.pcap")) as packets:  # what arrived at the far border
        captured_ce = sum(1 for p in packets if IP in p and p[IP].tos & 0b11 == CE)
    # RED counts a mark on enqueue; a marked packet can still meet a full buffer and be dropped after it
    assert marks - full_buffer_drops <= captured_ce <= marks, (captured_ce, marks, full_buffer_drops)
    assert captured_ce > 0
