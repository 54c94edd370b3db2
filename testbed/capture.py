"""Packet captures of the DCI links (both ends, so both directions), written as pcap files.

tcpdump runs inside each border router's namespace, headers only (256 bytes a packet) so long runs stay
small.  RoCEv2 traffic (UDP 4791) in these files decodes in Wireshark/tshark as InfiniBand.  A capture
ends only once the DCI queues have drained and the last packet has crossed the fibre, so it holds all
that was sent while it ran; tcpdump's own count of packets it could not keep up with is reported.
Immediate mode matters: in libpcap's default block ring, packets of a block not yet handed over when
tcpdump stops are lost without being counted as drops (seen: a quarter of a 2 s run missing).
"""

import re
import signal
import time
from pathlib import Path

from testbed.link import wait_drained
from testbed.network import Testbed

SNAPLEN = 256
BUFFER_KIB = 16384  # tcpdump's kernel buffer: bursts at line rate must not overrun it
DROPPED = re.compile(r"(\d+) packets? dropped by kernel")


class DciCapture:
    """Context manager: tcpdump on every DCI interface while the block runs.

    After the block, ``files`` lists the pcaps and ``kernel_drops`` maps each interface to the packets
    tcpdump missed (0 when the capture is complete).
    """

    def __init__(self, tb: Testbed, out_dir: Path):
        self.tb, self.out_dir = tb, Path(out_dir)
        self.procs: dict[str, object] = {}
        self.files: list[Path] = []
        self.kernel_drops: dict[str, int] = {}

    def __enter__(self) -> "DciCapture":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for _, link in self.tb.dci_links():
            for intf in (link.intf1, link.intf2):
                path = self.out_dir / f"{intf.name}.pcap"
                self.procs[intf.name] = intf.node.popen(
                    ["tcpdump", "-i", intf.name, "-s", str(SNAPLEN), "-B", str(BUFFER_KIB), "--immediate-mode",
                     "-n", "-Z", "root", "-w", str(path)])
                self.files.append(path)
        deadline = time.monotonic() + 10
        while not all(p.exists() for p in self.files) and time.monotonic() < deadline:
            time.sleep(0.1)  # tcpdump creates the file once it is listening
        return self

    def __exit__(self, *exc) -> None:
        self._drain()
        for proc in self.procs.values():
            proc.send_signal(signal.SIGINT)
        for name, proc in self.procs.items():
            found = DROPPED.search(proc.communicate(timeout=30)[1].decode(errors="replace"))
            self.kernel_drops[name] = int(found.group(1)) if found else 0

    def _drain(self, timeout_s: float = 10.0) -> None:
        """Wait until no DCI egress holds a backlog, then for the longest one-way delay."""
        links = [link for _, link in self.tb.dci_links()]
        wait_drained([intf for link in links for intf in (link.intf1, link.intf2)], timeout_s, poll_s=0.02)
        longest_ms = max(link.intf1.shape.delay_ms + 4 * link.intf1.shape.jitter_ms for link in links)
        time.sleep(longest_ms / 1000 + 0.05)
