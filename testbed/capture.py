"""Packet captures of the DCI links (both ends, so both directions), written as pcap files.

tcpdump runs inside each border router's namespace; headers only (256 bytes a packet) so long runs stay
small.  RoCEv2 traffic (UDP 4791) in these files decodes in Wireshark/tshark as InfiniBand.
"""

import signal
import time
from pathlib import Path

from testbed.network import Testbed

SNAPLEN = 256


class DciCapture:
    """Context manager: tcpdump on every DCI interface while the block runs."""

    def __init__(self, tb: Testbed, out_dir: Path):
        self.tb, self.out_dir = tb, Path(out_dir)
        self.procs: list = []
        self.files: list[Path] = []

    def __enter__(self) -> "DciCapture":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for _, link in self.tb.dci_links():
            for intf in (link.intf1, link.intf2):
                path = self.out_dir / f"{intf.name}.pcap"
                self.procs.append(intf.node.popen(
                    ["tcpdump", "-i", intf.name, "-s", str(SNAPLEN), "-U", "-n", "-Z", "root", "-w", str(path)]))
                self.files.append(path)
        deadline = time.monotonic() + 10
        while not all(p.exists() for p in self.files) and time.monotonic() < deadline:
            time.sleep(0.1)  # tcpdump creates the file once it is listening
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(timeout=10)
