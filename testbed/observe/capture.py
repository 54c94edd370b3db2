"""Packet captures of chosen links (every DCI link by default), ring-rotated pcaps that ``testbed analyze`` reads.

One tcpdump per link, on one end of it: a tap sees both directions of an interface, and on our links the
delay line and the bottleneck queue sit on each sender's egress before the tap, so each packet is seen
once, after it queued and crossed the fibre (CE marks of that queue included, its drops never).
Nanosecond timestamps, and a ring of ``RING_FILES`` files per interface (tcpdump's ``-C``/``-W``) sized
from ``max_mb``, so a long run cannot fill the disk: the oldest file is overwritten.

Whole frames by default (``WHOLE``), so that Wireshark and tshark decode every packet as RoCE (UDP 4791 is
RoCEv2 to them): ``RC Send First QP=0x000003`` with its BTH, payload and ICRC.  Cut to ``HEADERS_SNAPLEN``
(Ethernet, IPv4, UDP, BTH and the transport's 20-byte header with its send timestamp), every data packet
shows as ``RRoCE 4154 Invalid Packet Length from LRH! [Malformed Packet]`` instead: the InfiniBand dissector
(4.0) finds its payload missing and says so in the Info column only (no ``_ws.malformed`` field, no expert
item), while the analysis reads both alike.  The ICRC is the real one (``testbed.roce.rocev2``); tshark 4.0
shows it and does not check it.  Wireshark's RPC-over-RDMA heuristic (``rpcrdma_infiniband``, on by
default) reassembles every SEND message to look for NFS in it and fails on a few (2 of 48 marked
malformed in the kernel test's run); ``--disable-heuristic rpcrdma_infiniband`` leaves none.

"Whole" is the largest frame the captured links carry (MTU + Ethernet header), never tcpdump's ``-s 0``
(262,144 bytes): in immediate mode libpcap uses TPACKET_V2, whose ring has fixed slots of the snaplen, so a
16 MB buffer holds ~32 packets at 262,144 (a 512 KB block each), ~1,000 at 9,014 (a 16 KB block each) and
~65,000 at 128; at 262,144 tcpdump dropped 28 % of 850 packets/s (2,353 in 10 s), at 9,014 none.

What whole frames cost, measured in the microVM (TCG, a busy 2-core host, 4 KB UDP datagrams across a
9000-MTU DCI at ~900 packets/s for 10 s, the pcaps on the results directory's 9p mount, two runs each):
4,137 bytes a packet on disk against 144 headers-only (29x: ~3.7 MB/s at that rate, so the default 1000 MB
ring holds ~240,000 packets against ~7 million), and tcpdump's CPU 390-530 us a packet against 600-770, the
same within this host's noise: in immediate mode tcpdump wakes for every packet whatever it keeps.  The
testbed's packet rates are of this order whatever the declared rate, since time dilation sizes k so that
the busiest link needs at most 30 % of a rank's packet budget (a few thousand packets/s under TCG).

``capture.json`` beside the pcaps holds what the analysis needs: the interfaces with their node, peer and
MAC (which tells the two directions apart), the snaplen used, the offset from pcap time (CLOCK_REALTIME)
to the run's ``time.monotonic_ns`` clock, the telemetry's time zero, the run's queue pairs, and tcpdump's
own count of packets it could not keep up with.

A capture ends only once the captured links' queues have drained, the last packet has crossed the
fibre and every tcpdump has written out what its ring holds (its pcaps stop growing), so it holds all that
was sent while it ran.  Both waits matter: packets still in tcpdump's ring when it is told to stop are lost
without being counted as drops.  In libpcap's default block ring that lost a quarter of a 2 s run; with
whole frames on the microVM's 9p results mount tcpdump lags its 833 packets/s by a few hundred packets
(221 of 1,012 CE-marked frames were missing when it was stopped as soon as the queue drained).
"""

import json
import re
import signal
import time
from pathlib import Path

from testbed.model.units import frame_bytes
from testbed.net.link import wait_drained
from testbed.net.network import Testbed

WHOLE = 0  # a snaplen: whole frames, the largest the captured links carry
HEADERS_SNAPLEN = 128  # 14 + 20 + 8 + 12 + 20 = 74 bytes of headers, with room for IP options and VLANs
RING_FILES = 8
DEFAULT_MAX_MB = 1000
BUFFER_KIB = 16384  # tcpdump's kernel buffer, in slots of the snaplen (module docstring): bursts must fit
DROPPED = re.compile(r"(\d+) packets? dropped by kernel")


def clock_offset_ns(tries: int = 5) -> int:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC, from the tightest of a few adjacent readings."""
    best = None
    for _ in range(tries):
        before = time.monotonic_ns()
        real = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, real - (before + after) // 2)
    return best[1]


class Capture:
    """Context manager: tcpdump on one end of each of ``links`` (default every DCI link) while the block runs.

    After the block, ``files`` lists the pcaps and ``kernel_drops`` maps each interface to the packets
    tcpdump missed (0 when the capture is complete).
    """

    def __init__(self, tb: Testbed, out_dir: Path, links: list | None = None, snaplen: int = WHOLE,
                 max_mb: int = DEFAULT_MAX_MB, t0_ns: int | None = None, queue_pairs: list[dict] | None = None):
        self.tb, self.out_dir = tb, Path(out_dir)
        self.links = links if links is not None else [link for _, link in tb.dci_links()]
        largest = max(frame_bytes(intf.mtu) for link in self.links for intf in (link.intf1, link.intf2))
        self.snaplen = largest if snaplen == WHOLE else min(snaplen, largest)  # more keeps nothing more
        self.t0_ns, self.queue_pairs = t0_ns, queue_pairs or []
        self.file_mb = max(1, max_mb // (RING_FILES * len(self.links)))
        self.procs: dict[str, object] = {}
        self.kernel_drops: dict[str, int] = {}
        self._offset_ns = 0

    @property
    def files(self) -> list[Path]:
        """Every pcap written so far, rotated parts included, by interface."""
        return sorted(p for intf in self.procs for p in self.out_dir.glob(f"{intf}.pcap*"))

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Capture":
        """Start a tcpdump on each link and wait until each is listening (its first pcap exists): as entering
        the block; for a capture that outlives one block (the CLI's ``capture`` verb)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._offset_ns = clock_offset_ns()
        for link in self.links:
            intf = link.intf1
            self.procs[intf.name] = intf.node.popen(
                ["tcpdump", "-i", intf.name, "-s", str(self.snaplen), "-B", str(BUFFER_KIB), "--immediate-mode",
                 "--time-stamp-precision=nano", "-n", "-Z", "root", "-C", str(self.file_mb), "-W", str(RING_FILES),
                 "-w", str(self.out_dir / f"{intf.name}.pcap")])
        deadline = time.monotonic() + 10
        while len(self.files) < len(self.procs) and time.monotonic() < deadline:
            time.sleep(0.1)  # tcpdump creates the first file once it is listening
        return self

    def stop(self) -> None:
        """Once the links drained and every tcpdump caught up, stop them, count their drops, write capture.json."""
        self._drain()
        self._settle()
        for proc in self.procs.values():
            proc.send_signal(signal.SIGINT)
        for name, proc in self.procs.items():
            found = DROPPED.search(proc.communicate(timeout=30)[1].decode(errors="replace"))
            self.kernel_drops[name] = int(found.group(1)) if found else 0
        (self.out_dir / "capture.json").write_text(json.dumps(self.metadata(), indent=2))

    def metadata(self) -> dict:
        dci_names = {id(link): name for name, link in self.tb.dci_links()}
        return {"snaplen": self.snaplen, "clock_offset_ns": self._offset_ns, "t0_monotonic_ns": self.t0_ns,
                "dilation": self.tb.dilation,
                "rotation": {"file_mb": self.file_mb, "files": RING_FILES},
                "interfaces": [{"intf": link.intf1.name, "node": link.intf1.node.name, "peer": link.intf2.node.name,
                                "dci": dci_names.get(id(link)), "mac": link.intf1.MAC()} for link in self.links],
                "queue_pairs": self.queue_pairs, "kernel_drops": self.kernel_drops}

    def _drain(self, timeout_s: float = 10.0) -> None:
        """Wait until no captured link holds a backlog either way, then for the longest one-way delay."""
        wait_drained([intf for link in self.links for intf in (link.intf1, link.intf2)], timeout_s, poll_s=0.02)
        longest_ms = max(link.intf1.shape.delay_ms + 4 * link.intf1.shape.jitter_ms for link in self.links)
        time.sleep(longest_ms * self.tb.dilation / 1000 + 0.05)

    def _settle(self, quiet_s: float = 0.3, timeout_s: float = 20.0) -> None:
        """Wait until every tcpdump has caught up: neither its CPU time nor its pcaps grew for ``quiet_s``
        (a lagging tcpdump reads and writes continuously; one that caught up sleeps in poll), or ``timeout_s``
        passes.  CPU time comes from ``/proc/PID/schedstat`` in nanoseconds; file sizes alone would miss a lag
        hidden in tcpdump's stdio buffer."""
        def activity() -> tuple:
            return tuple(path.stat().st_size for path in self.files) + tuple(map(cpu_ns, self.procs.values()))
        deadline, last, quiet_since = time.monotonic() + timeout_s, activity(), time.monotonic()
        while time.monotonic() - quiet_since < quiet_s and time.monotonic() < deadline:
            time.sleep(0.05)
            now = activity()
            if now != last:
                last, quiet_since = now, time.monotonic()


def cpu_ns(proc) -> int:
    """CPU time ``proc`` has used so far, in nanoseconds (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{proc.pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
