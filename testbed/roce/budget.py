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
answers with what its sender sent, retransmitted and timed out too (``_count``).  The budget is the
median rank's count per second: each rank then sent and received that many at once, as in a ring
collective.  Loopback carries no router hops or qdiscs, so a fabric costs the host more per packet than
this; ``auto`` keeps the busiest link at 30 % of the budget (``dilation.AUTO_SHARE``).

Then the lateness: the same ranks, each paced at that share of the budget, report their event loop's
lateness p99 (``testbed.roce.nic.Lateness``), the largest rank's.  It is wall time that the other processes'
turns on the CPUs cost a timer whatever the k, so it bounds k from below by the fabric's shortest RTT
(``dilation.auto``'s second term): under TCG it was 5-16 ms in every run of a distance sweep (2026-12-07,
four ranks on two vCPUs, CPU demand 0.44-0.91), so a 10 km DCI's 0.12 ms RTT needed k ~1,400 where the
packet budget asked for 40; natively it is tens of microseconds.  Pacing wakes the loop on timers, as a
rank's pacing, ACK delay and RTO do; flooding would not.

    python -m testbed.roce.budget --ranks 4          # prints the budget, as the run does
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from controllers.base import CongestionControl
from testbed.model.dilation import AUTO_SHARE
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


@dataclass(frozen=True)
class Budget:
    """What the host gives the ranks' transport: packets/s per rank (the median rank's, flooding), and the
    event loop's lateness p99 in seconds (the largest rank's, paced at ``share`` of that)."""

    packets_per_s: float
    late_p99_s: float
    share: float = AUTO_SHARE


def measure(ranks: int, seconds: float = 2.0, warmup_s: float = 0.5, share: float = AUTO_SHARE) -> Budget:
    """The budget of ``ranks`` ranks in a ring at once: flooding, then paced at ``share`` of the budget."""
    command = [sys.executable, "-m", "testbed.roce.budget", "--ranks", str(ranks), "--seconds", str(seconds),
               "--warmup", str(warmup_s)]
    procs = [subprocess.Popen([*command, "--rank", str(rank)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for rank in range(ranks)]
    try:
        for proc in procs:
            _answer(proc)  # ready: its NIC is bound
        pps = statistics.median(answer["packets_per_s"] for answer in _phase(procs, "flood"))
        late_us = max(answer["late_p99_us"] for answer in _phase(procs, f"pace {share * pps:.0f}"))
        return Budget(pps, late_us / 1e6, share)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _phase(procs: list[subprocess.Popen], order: str) -> list[dict]:
    """Every rank's answer to ``order`` ("flood", or "pace PPS"), all started together."""
    for proc in procs:
        proc.stdin.write(order + "\n")
        proc.stdin.flush()
    return [_answer(proc) for proc in procs]


def _answer(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a budget rank exited with status {proc.wait()} before answering")
    return json.loads(line)


def serve(rank: int, ranks: int, seconds: float, warmup_s: float) -> None:
    """One rank of the measurement: bind, say ready, then answer each order on stdin ("flood": send to the next
    rank as fast as the CPU allows and count what arrives; "pace PPS": send at PPS packets/s and report the
    event loop's lateness), until stdin closes."""
    config = TransportConfig()
    with Nic(address(rank)) as nic:
        peer = (address((rank + 1) % ranks), ROCEV2_UDP_PORT)
        sender = Sender(nic, peer, SENDER_QPN, RECEIVER_QPN, _Flood(WINDOW_PACKETS * config.mtu), config)
        receiver = Receiver(nic, RECEIVER_QPN, SENDER_QPN, config)
        print(json.dumps({"ready": rank}), flush=True)
        for order in sys.stdin:
            pps = order.partition(" ")[2]
            sender.max_rate_bps = float(pps) * data_frame_bytes(config.mtu) * 8 if pps else None
            print(json.dumps(_count(nic, sender, receiver, seconds, warmup_s)), flush=True)


def _count(nic: Nic, sender: Sender, receiver: Receiver, seconds: float, warmup_s: float) -> dict:
    """Keep two messages queued to the next rank and take what arrives for ``seconds`` after ``warmup_s``:
    packets accepted per second, the event loop's lateness p99 meanwhile, and what the sender sent,
    retransmitted and timed out (the budget counts accepted packets only, so recovery shows as a lower
    budget; these say why)."""
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
            nic.lateness.take()
        return first is not None and now >= first[0] + seconds

    run([nic], done, warmup_s + seconds + START_TIMEOUT_S)
    pps = (receiver.counters["packets"] - first[1]) / (time.monotonic() - first[0])
    return {"packets_per_s": pps, "late_p99_us": nic.lateness.take()["late_p99_us"],
            **{name: sender.counters[name] for name in
               ("packets_sent", "retransmitted_packets", "timeouts", "naks_received")}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m testbed.roce.budget", description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)  # set for the rank processes
    args = parser.parse_args()
    if args.rank is None:
        found = measure(args.ranks, args.seconds, args.warmup)
        print(f"{found.packets_per_s:.0f} packets/s per rank, {args.ranks} ranks at once; event-loop lateness "
              f"p99 {found.late_p99_s * 1e3:.3g} ms at {found.share:.0%} of that")
    else:
        serve(args.rank, args.ranks, args.seconds, args.warmup)


if __name__ == "__main__":
    main()
