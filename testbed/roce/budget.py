"""The packet budget: how many packets per second the ranks' transport moves per rank on this host, with as many
ranks at once as a run will have.

``--dilation auto`` needs it (``testbed.model.dilation.auto``), and it must be measured, never assumed: on
this 2-core machine it ranges from ~65,000 packets/s per rank natively (one or two ranks) to 3,000-5,000
under TCG with a vCPU per rank and 1,300-2,000 with two ranks per vCPU, and halves when another VM shares
the host.  So each run measures it where it runs (natively, or inside the microVM), just before it builds.
``benchmarks/transport_goodput.py`` tracks it with 1, 2 and 4 ranks, natively and in the microVM.

How: ``ranks`` processes, each a rank on a loopback address of its own (127.0.1.i), send to the next one in
a ring through the real transport (a ``Nic``, a ``Sender``, a ``Receiver``), as fast as their CPU allows,
within a window of ``WINDOW_PACKETS`` so loopback never drops (it did in the microVM, whose kernel capped
the sockets' buffers below the window until the NIC forced them: half of what was sent there was
retransmitted); after ``warmup_s`` each counts the packets its receiver accepted for ``seconds``, and
answers with what its sender sent, retransmitted and timed out too (``serve_counting``).  The budget is the
median rank's count per second: each rank then sent and received that many at once, as in a ring
collective.  Loopback carries no router hops or qdiscs, so a fabric costs the host more per packet than
this; ``auto`` keeps the busiest link at 30 % of the budget (``dilation.AUTO_SHARE``).

    python -m testbed.roce.budget --ranks 4          # prints the budget, as the run does
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

from controllers.base import CongestionControl
from testbed.roce.nic import Nic, run
from testbed.roce.receiver import Receiver
from testbed.roce.rocev2 import ROCEV2_UDP_PORT, data_frame_bytes
from testbed.roce.sender import Sender
from testbed.roce.transport import TransportConfig

WINDOW_PACKETS = 64
MESSAGE_BYTES = 1 << 20
SENDER_QPN, RECEIVER_QPN = 2, 3
START_TIMEOUT_S = 120.0  # a rank process's start-up (imports) under TCG takes seconds


class _Flood(CongestionControl):
    """As fast as the CPU allows, within a window: what the budget measures."""

    def __init__(self, window_bytes: int) -> None:
        self._window = window_bytes

    @property
    def rate_bps(self) -> float:
        return 1e15

    @property
    def cwnd_bytes(self) -> int:
        return self._window


def busiest_link(topo) -> tuple[tuple[str, str], float, float]:
    """The link of ``topo`` (a ``FabricTopo``) with the highest declared rate: its ends, its Mbit/s and the
    full data frames per second it carries at that rate, what ``--dilation auto`` holds against the budget."""
    (a, b), mbps = max((((a, b), info["config"].bw_mbps) for a, b, info in topo.links(withInfo=True)),
                       key=lambda link: link[1])
    return (a, b), mbps, mbps * 1e6 / 8 / data_frame_bytes()


def address(rank: int) -> str:
    return f"127.0.1.{rank + 1}"


def measure(ranks: int, seconds: float = 2.0, warmup_s: float = 0.5) -> float:
    """Packets per second per rank (the median rank's), ``ranks`` of them sending in a ring at once."""
    command = [sys.executable, "-m", "testbed.roce.budget", "--ranks", str(ranks), "--seconds", str(seconds),
               "--warmup", str(warmup_s)]
    procs = [subprocess.Popen([*command, "--rank", str(rank)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for rank in range(ranks)]
    try:
        for proc in procs:
            _answer(proc)  # ready: its NIC is bound
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return statistics.median(_answer(proc)["packets_per_s"] for proc in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _answer(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a budget rank exited with status {proc.wait()} before answering")
    return json.loads(line)


def serve(rank: int, ranks: int, seconds: float, warmup_s: float) -> float:
    """One rank of the measurement: bind, say ready, wait for "go", send to the next rank and count what arrives."""
    return serve_counting(rank, ranks, seconds, warmup_s)["packets_per_s"]


def serve_counting(rank: int, ranks: int, seconds: float, warmup_s: float) -> dict:
    """``serve``, answering with what the rank's sender did too: packets sent and retransmitted, timeouts and
    NAKs (the budget counts accepted packets only, so recovery shows as a lower budget; these say why)."""
    config = TransportConfig()
    with Nic(address(rank)) as nic:
        peer = (address((rank + 1) % ranks), ROCEV2_UDP_PORT)
        sender = Sender(nic, peer, SENDER_QPN, RECEIVER_QPN, _Flood(WINDOW_PACKETS * config.mtu), config)
        receiver = Receiver(nic, RECEIVER_QPN, SENDER_QPN, config)
        print(json.dumps({"ready": rank}), flush=True)
        sys.stdin.readline()
        message = bytearray(MESSAGE_BYTES)  # mutable, so the sender copies it, as it copies a rank's numpy chunks
        counting_from = time.monotonic() + warmup_s
        first: tuple[float, int] | None = None

        def done() -> bool:
            nonlocal first
            if sender.counters["messages_queued"] - sender.counters["messages_acked"] < 2:
                sender.send(message)
            while receiver.has_message():
                receiver.recv(0)
            now = time.monotonic()
            if first is None and now >= counting_from:
                first = (now, receiver.counters["packets"])
            return first is not None and now >= first[0] + seconds

        run([nic], done, warmup_s + seconds + START_TIMEOUT_S)
        pps = (receiver.counters["packets"] - first[1]) / (time.monotonic() - first[0])
        return {"packets_per_s": pps, **{name: sender.counters[name] for name in
                                        ("packets_sent", "retransmitted_packets", "timeouts", "naks_received")}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m testbed.roce.budget", description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)  # set for the rank processes
    args = parser.parse_args()
    if args.rank is None:
        print(f"{measure(args.ranks, args.seconds, args.warmup):.0f} packets/s per rank, {args.ranks} ranks at once")
    else:
        print(json.dumps(serve_counting(args.rank, args.ranks, args.seconds, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
