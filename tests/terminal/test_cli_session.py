"""``testbed run --cli`` on a terminal, as a user drives it: through the microVM where this kernel cannot
emulate links (the VM's console joined to the terminal), natively where it can.

Driven through a pseudo-terminal (pexpect): Mininet's verbs and the testbed's, a live delay change that the
RTT follows, a capture started and stopped from the CLI holding the ping it saw, Ctrl-C that stops a command
and not the session, exit, and nothing left behind.
"""

import os
import re
import sys
import time
from pathlib import Path

import pexpect

from testbed.net import cleanup

K = 10  # a fixed dilation keeps the run's checks off the CPU's limit (see tests/kernel/test_cleanup.py)
PROMPT = "mininet> "
RTT = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/")


def ping_ms(session: pexpect.spawn) -> float:
    """Least RTT of a ping across the DCI (the fibre's, least of the stack's), in declared ms (ping measures
    the dilated fabric)."""
    session.sendline("westh1 ping -c 4 -i 0.2 easth1")
    session.expect(RTT, timeout=120)
    rtt = float(session.match.group(1))
    session.expect(PROMPT, timeout=60)
    return rtt / K


def icmp_in(pcaps: list[Path]) -> dict:
    """How many ICMP echo requests and replies the pcaps hold (the capture verb's: one tap, both directions)."""
    from scapy.layers.inet import ICMP
    from scapy.utils import PcapReader
    counts = {"echo-request": 0, "echo-reply": 0}
    for pcap in pcaps:
        with PcapReader(str(pcap)) as packets:
            for packet in packets:
                if ICMP in packet and packet[ICMP].type in (0, 8):
                    counts["echo-request" if packet[ICMP].type == 8 else "echo-reply"] += 1
    return counts


def test_cli_session_on_a_terminal(tmp_path):
    session = pexpect.spawn(sys.executable, ["-m", "testbed", "run", "two_sites", "--hosts", "1", "--distance-km",
                                             "10", "--dilation", str(K), "--seconds", "1", "--sweep", "", "--cli",
                                             "--out", str(tmp_path)],
                            env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
                            encoding="utf-8", codec_errors="replace", timeout=900, dimensions=(50, 160))
    session.logfile_read = open(tmp_path.parent / f"{tmp_path.name}-session.log", "w", buffering=1)
    try:
        session.expect(PROMPT)
        record = cleanup.read(cleanup.record_path(session.pid))
        before = ping_ms(session)
        assert 0.05 * 2 <= before < 5, before  # 10 km: 0.1 ms of fibre each way and back, plus the stack
        session.sendline("dci")
        session.expect(r"west-east.+westb.+eastb", timeout=60)
        session.expect(PROMPT, timeout=60)
        session.sendline("set west-east delay_ms=20")
        session.expect("west-east: delay_ms=20", timeout=60)
        session.expect(PROMPT, timeout=60)
        session.sendline("capture west-east")
        session.expect("capturing west-east", timeout=60)
        session.expect(PROMPT, timeout=60)
        after = ping_ms(session)
        session.sendline("capture west-east")
        session.expect("west-east: stopped", timeout=120)
        session.expect(PROMPT, timeout=60)
        assert 2 * (20 - 0.05) - 1 <= after - before <= 2 * (20 - 0.05) + 2, (before, after)  # 19.95 ms more each way
        session.sendline("set west-east nonsense=1")
        session.expect("set: .*nonsense", timeout=60)
        session.sendline("westh1 sleep 60")
        session.expect(r"sleep 60\r+\n", timeout=60)  # the line is taken (echoed) ...
        time.sleep(2)  # ... and the command runs
        session.sendintr()
        session.expect(PROMPT, timeout=40)  # Ctrl-C ended the command (long before its 60 s), not the session
        session.sendline("westh1 echo still here | tr ' ' -")
        session.expect("still-here", timeout=60)
        session.expect(PROMPT, timeout=60)
        session.sendline("exit")
        session.expect(pexpect.EOF, timeout=300)
    finally:
        session.close(force=True)
    assert session.exitstatus == 0, (session.exitstatus, session.signalstatus, session.before)
    assert (tmp_path / "run.json").exists()
    assert icmp_in(sorted((tmp_path / "capture" / "west-east").glob("*.pcap*"))) == {"echo-request": 4, "echo-reply": 4}
    assert not cleanup.record_path(session.pid).exists()
    if "vm" in record:
        assert not Path(record["temp_dir"]).exists()
        assert cleanup.group_members(record["vm"]["pid"]) == []
    else:
        assert cleanup.shell_pids(set(record["nodes"]), record["run"]) == []

