"""The probes the checks and the fabric controller measure with: ping (RTT) and iperf3 UDP (rate) between nodes.

Both run as the tools themselves, in the nodes' namespaces, and return plain numbers.  No warm-up is ever
needed: every neighbour on a path is pinned (``ShapedLink.pin_neighbours``), so no ARP delays a probe.
"""

import itertools
import json
import re
import time

from testbed.net.network import Testbed

UDP_HEADER_BYTES = 8
IPERF_PORT = 5201
PING_SUMMARY = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/")
PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def site_pairs(tb: Testbed) -> list[tuple[str, str]]:
    return list(itertools.combinations([s.name for s in tb.topo.fabric.sites], 2))


def ping(src, dst, count: int = 50, interval_s: float = 0.02) -> dict:
    """min/avg/max RTT in ms and the counts from node ``src`` to ``dst`` (a node or an address).

    50 samples: the minimum is the fabric's RTT only if one sample escaped the emulator's CPU noise; 20 did not
    always under a loaded TCG guest (+0.78 ms on 10 ms once)."""
    address = dst if isinstance(dst, str) else dst.IP()
    out = src.cmd(f"ping -c {count} -i {interval_s} -W 5 -q {address}")
    counts, summary = PING_COUNTS.search(out), PING_SUMMARY.search(out)
    if not counts or not summary:
        raise RuntimeError(f"ping {src.name} -> {address} failed: {out.strip()[-200:]}")
    low, avg, high = (float(x) for x in summary.groups())
    return {"min_ms": low, "avg_ms": avg, "max_ms": high,
            "sent": int(counts.group(1)), "received": int(counts.group(2))}


def iperf_udp(src, dst, mbps: float, seconds: float, length: int, tos: int = 0) -> dict:
    """iperf3 UDP from ``src`` to ``dst`` at ``mbps`` with ``length``-byte datagrams and IP TOS ``tos``.

    Returns what the receiver counted: bits_per_second, bytes, packets (by sequence number, so lost ones
    included), lost_packets, lost_percent, out_of_order.
    """
    server = dst.popen(["iperf3", "-s", "-1", "-J", "-p", str(IPERF_PORT)])
    try:
        _wait_listening(dst, IPERF_PORT)
        client = json.loads(src.popen(
            ["iperf3", "-c", dst.IP(), "-p", str(IPERF_PORT), "-u", "-b", f"{mbps:.3f}M", "-l", str(length),
             "-t", str(seconds), "-S", str(tos), "-J"]).communicate(timeout=seconds + 30)[0])
        if "error" in client:
            raise RuntimeError(f"iperf3 {src.name} -> {dst.name}: {client['error']}")
        end = json.loads(server.communicate(timeout=30)[0])["end"]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    received, udp = end["sum_received"], end["streams"][0]["udp"]
    return {"bits_per_second": received["bits_per_second"], "bytes": received["bytes"], "packets": udp["packets"],
            "lost_packets": udp["lost_packets"], "lost_percent": received["lost_percent"],
            "out_of_order": udp.get("out_of_order", 0)}


def _wait_listening(node, port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while f":{port} " not in node.cmd(f"ss -Hltn sport = :{port}"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 server on {node.name} did not listen on port {port}")
        time.sleep(0.1)
