"""The probes the checks and the fabric controller measure with: ping (RTT) and iperf3 UDP (rate) between nodes.

Both run as the tools themselves, in the nodes' namespaces, and return plain numbers.  No warm-up is ever
needed: every neighbour on a path is pinned (``ShapedLink.pin_neighbours``), so no ARP delays a probe.

On a dilated fabric (``testbed.model.dilation``) the tools run in wall time against links k times slower:
given the run's ``dilation``, ``ping`` reports declared RTTs (wall / k) and ``iperf_udp`` offers the
declared rate / k and reports what arrived x k.  Durations (``seconds``, intervals) are wall time: they are
what a probe costs, not what it measures.  ``reply_timeout_s`` bounds how long a reply may take on the
dilated fabric, so a long dilated path is never mistaken for a lost one.
"""

import itertools
import json
import re
import statistics
import time

from testbed.net.network import Testbed

UDP_HEADER_BYTES = 8
IPERF_PORT = 5201
INTERVAL_S = 0.5  # the receiver's reporting interval: steady_bps is the median of the full ones
PING_SUMMARY = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/")
PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def site_pairs(tb: Testbed) -> list[tuple[str, str]]:
    return list(itertools.combinations([s.name for s in tb.topo.fabric.sites], 2))


def reply_timeout_s(tb: Testbed) -> float:
    """Wall seconds to wait for a reply on ``tb``: 5 s beyond a round trip over every link of the fabric,
    dilated (a bound on any path's RTT, from the declaration: probes measure, they do not assume)."""
    worst_ms = 2 * sum(config["config"].delay_ms + 4 * config["config"].jitter_ms
                       for _, _, config in tb.topo.links(withInfo=True))
    return 5.0 + worst_ms * tb.dilation / 1000


def ping(src, dst, count: int = 50, interval_s: float = 0.02, dilation: float = 1.0,
         timeout_s: float = 5.0) -> dict:
    """min/avg/max RTT in declared ms and the counts from node ``src`` to ``dst`` (a node or an address).

    50 samples: the minimum is the fabric's RTT only if one sample escaped the emulator's CPU noise; 20 did not
    always under a loaded TCG guest (+0.78 ms on 10 ms once)."""
    address = dst if isinstance(dst, str) else dst.IP()
    out = src.cmd(f"ping -c {count} -i {interval_s} -W {timeout_s:.3f} -q {address}")
    counts, summary = PING_COUNTS.search(out), PING_SUMMARY.search(out)
    if not counts or not summary:
        raise RuntimeError(f"ping {src.name} -> {address} failed: {out.strip()[-200:]}")
    low, avg, high = (float(x) / dilation for x in summary.groups())
    return {"min_ms": low, "avg_ms": avg, "max_ms": high,
            "sent": int(counts.group(1)), "received": int(counts.group(2))}


def iperf_udp(src, dst, mbps: float, seconds: float, length: int, tos: int = 0, dilation: float = 1.0,
              timeout_s: float = 30.0, interval_s: float = INTERVAL_S) -> dict:
    """iperf3 UDP from ``src`` to ``dst`` at declared ``mbps`` for ``seconds`` (wall) with ``length``-byte
    datagrams and IP TOS ``tos``; ``timeout_s`` beyond ``seconds`` for the tools to finish.

    Returns what the receiver counted: bits_per_second (declared), bytes, packets (by sequence number, so
    lost ones included), lost_packets, lost_percent, out_of_order, and steady_bps (declared): the median
    rate of the receiver's ``interval_s`` intervals that traffic filled from end to end, ``readings`` of
    them (0: steady_bps is ``bits_per_second``).  And what the sender did: sent_bps (declared; below the
    rate asked when it could not keep up) and sender_cpu_pct, iperf3's own CPU time over its wall time.  iperf3's own
    average runs from the test's start to its end as the control connection signals them, which a long
    (dilated) path shifts against the packets: a 1 s probe across a 1.5 s round trip reported 40 % of the
    rate.  The steady intervals see only the bottleneck (``bits_per_second`` when fewer than one is full).
    """
    server = dst.popen(["iperf3", "-s", "-1", "-J", "-p", str(IPERF_PORT), "-i", f"{interval_s:.6g}"])
    try:
        _wait_listening(dst, IPERF_PORT)
        client = json.loads(src.popen(
            ["iperf3", "-c", dst.IP(), "-p", str(IPERF_PORT), "-u", "-b", f"{mbps / dilation:.6f}M", "-l",
             str(length), "-t", str(seconds), "-S", str(tos), "-J"]).communicate(timeout=seconds + timeout_s)[0])
        if "error" in client:
            raise RuntimeError(f"iperf3 {src.name} -> {dst.name}: {client['error']}")
        report = json.loads(server.communicate(timeout=timeout_s)[0])
        end = report["end"]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    received, udp = end["sum_received"], end["streams"][0]["udp"]
    filled = [interval["sum"]["bits_per_second"] for interval in report.get("intervals", [])
              if interval["sum"]["bytes"] > 0][1:-1]  # the first and the last are cut by the traffic's edges
    steady = statistics.median(filled) if filled else received["bits_per_second"]
    sent = client["end"]
    return {"bits_per_second": received["bits_per_second"] * dilation, "bytes": received["bytes"],
            "packets": udp["packets"], "lost_packets": udp["lost_packets"], "lost_percent": received["lost_percent"],
            "out_of_order": udp.get("out_of_order", 0), "steady_bps": steady * dilation, "readings": len(filled),
            "sent_bps": sent["sum_sent"]["bits_per_second"] * dilation,
            "sender_cpu_pct": sent["cpu_utilization_percent"]["host_total"]}


def _wait_listening(node, port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while f":{port} " not in node.cmd(f"ss -Hltn sport = :{port}"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 server on {node.name} did not listen on port {port}")
        time.sleep(0.1)
