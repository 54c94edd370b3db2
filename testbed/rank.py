"""One rank ("GPU") of a collective, run as its own process on its host: ``python -m testbed.rank``.

The controller (``testbed.collectives``) starts one per host with ``host.popen`` and talks to it in JSON
lines: first the job (this rank, every rank's address, the channels to open, the congestion control),
then one command per measurement (the collective, datatype, op, root, algorithm, element count, in or out
of place, iterations, whether to check); the rank answers each with its time and its count of wrong
elements.  Between ranks, data moves only over the
emulated fabric: one queue pair per (peer, channel) and direction on the host's RoCE NIC (port 4791).

Steps run as NCCL's primitives do (``testbed.schedules``): a step starts once its predecessors are done
and, if it receives, once its chunk has arrived; sends are eager (the chunk is copied to the queue pair),
so a rank keeps several chunks in flight on a long link.
"""

import json
import select
import sys
import time
from collections import deque

import numpy as np

from controllers.dcqcn import Dcqcn, DcqcnParams
from controllers.fixed_rate import FixedRate
from testbed.nic import Nic, run
from testbed.schedules import UFUNCS, Schedule, apply_step, build_schedule, count_wrong, expected, rank_buffers, \
    step_graph
from testbed.transport import TransportConfig
from testbed.transport_receiver import Receiver
from testbed.transport_sender import Sender

STEP_TIMEOUT_S = 120.0  # no progress for this long: the run is broken (a peer died), not slow
IDLE_TIMEOUT_S = 24 * 3600.0  # between commands: the controller decides when the job ends


def sender_qpn(peer: int, channel: int, nranks: int) -> int:
    """The QP a rank sends to ``peer`` on ``channel`` from (even numbers from 2: QP0/1 are IB's)."""
    return 2 + 2 * (channel * nranks + peer)


def receiver_qpn(peer: int, channel: int, nranks: int) -> int:
    """The QP a rank receives from ``peer`` on ``channel`` with (odd numbers)."""
    return 3 + 2 * (channel * nranks + peer)


def congestion_control(spec: dict):
    """The congestion control a job names: ``{"kind": "dcqcn", "line_rate_bps": ..., "stretch": ...}`` or
    ``{"kind": "fixed", "rate_bps": ...}``."""
    if spec["kind"] == "fixed":
        return FixedRate(spec["rate_bps"])
    params = DcqcnParams().scaled_to(spec["line_rate_bps"])
    return Dcqcn(params.stretched(spec.get("stretch", 1.0)))


class RankLinks:
    """This rank's queue pairs, opened on first use: a sender per (peer, channel), a receiver likewise."""

    def __init__(self, nic: Nic, rank: int, addresses: list[str], cc_spec: dict, config: TransportConfig) -> None:
        self.nic, self.rank, self.addresses, self.cc_spec, self.config = nic, rank, addresses, cc_spec, config
        self.senders: dict[tuple[int, int], Sender] = {}
        self.receivers: dict[tuple[int, int], Receiver] = {}

    def sender(self, peer: int, channel: int) -> Sender:
        key, n = (peer, channel), len(self.addresses)
        if key not in self.senders:
            self.senders[key] = Sender(self.nic, (self.addresses[peer], self.nic.address[1]),
                                       sender_qpn(peer, channel, n), receiver_qpn(self.rank, channel, n),
                                       congestion_control(self.cc_spec), self.config)
        return self.senders[key]

    def receiver(self, peer: int, channel: int) -> Receiver:
        key, n = (peer, channel), len(self.addresses)
        if key not in self.receivers:
            self.receivers[key] = Receiver(self.nic, receiver_qpn(peer, channel, n),
                                           sender_qpn(self.rank, channel, n), self.config)
        return self.receivers[key]

    def open_all(self, channels: int) -> None:
        """Open every queue pair up front, so a peer's first chunk never meets an unknown QP."""
        for peer in range(len(self.addresses)):
            for channel in range(channels):
                if peer != self.rank:
                    self.sender(peer, channel)
                    self.receiver(peer, channel)

    def all_acknowledged(self) -> bool:
        return all(sender.all_acknowledged() for sender in self.senders.values())


def execute(schedule: Schedule, buffers: dict[str, np.ndarray], links: RankLinks) -> None:
    """Run this rank's steps over the fabric until every one is done and every chunk it sent is acknowledged."""
    remaining, successors = step_graph(schedule)
    ufunc = UFUNCS[schedule.op]
    dtype = buffers["send"].dtype
    ready = deque(i for i, count in enumerate(remaining) if count == 0)
    blocked: dict[int, Receiver] = {}  # steps whose chunk has not arrived yet
    done = 0
    while done < len(schedule.steps):
        while ready:
            i = ready.popleft()
            step = schedule.steps[i]
            message = None
            if step.recv_peer is not None:
                receiver = links.receiver(step.recv_peer, step.channel)
                if not receiver.has_message():
                    blocked[i] = receiver
                    continue
                message = np.frombuffer(receiver.recv(0), dtype=dtype)
            value = apply_step(step, buffers, ufunc, message)
            if step.send_peer is not None:
                links.sender(step.send_peer, step.channel).send(value)
            done += 1
            for successor in successors[i]:
                remaining[successor] -= 1
                if remaining[successor] == 0:
                    ready.append(successor)
        if done < len(schedule.steps):
            if not run([links.nic], lambda: any(r.has_message() for r in blocked.values()), STEP_TIMEOUT_S):
                raise TimeoutError(f"rank {schedule.rank}: no chunk arrived for {STEP_TIMEOUT_S} s")
            arrived = [i for i, r in blocked.items() if r.has_message()]
            for i in arrived:
                del blocked[i]
            ready.extend(sorted(arrived))
    if not run([links.nic], links.all_acknowledged, STEP_TIMEOUT_S):
        raise TimeoutError(f"rank {schedule.rank}: chunks unacknowledged after {STEP_TIMEOUT_S} s")


def rank_input(rank: int, count: int, dtype: np.dtype, seed: int) -> np.ndarray:
    """Rank ``rank``'s input: small positive values (exact sums for integers, no cancellation for floats);
    every rank can make every other rank's, to know the expected result without exchanging it."""
    rng = np.random.default_rng([seed, rank])
    return rng.integers(1, 8, count).astype(dtype)


def measure(command: dict, links: RankLinks) -> dict:
    """Run one command: ``warmup`` untimed and ``iters`` timed iterations of its collective, then (with
    ``check``) one on fresh inputs whose result is compared element by element with the expected one."""
    rank, n, dtype = links.rank, len(links.addresses), np.dtype(command["dtype"])
    schedule = build_schedule(command["collective"], rank, n, command["count"], op=command["op"],
                              root=command["root"], nchannels=command["nchannels"],
                              chunk_elems=command["chunk_elems"], sites=command.get("sites"),
                              in_place=command["in_place"])
    data = rank_input(rank, schedule.send_elems, dtype, command["seed"])
    buffers = rank_buffers(schedule, data)
    for _ in range(command["warmup"]):
        execute(schedule, buffers, links)
    start = time.perf_counter()
    for _ in range(command["iters"]):
        execute(schedule, buffers, links)
    elapsed = time.perf_counter() - start
    wrong = None
    if command["check"]:
        buffers = rank_buffers(schedule, data)
        execute(schedule, buffers, links)
        inputs = [rank_input(r, schedule.send_elems, dtype, command["seed"]) for r in range(n)]
        want = expected(command["collective"], inputs, op=command["op"], root=command["root"])[rank]
        wrong = 0 if want is None else count_wrong(buffers["recv"], want, op=command["op"], nranks=n)
    return {"time_us": elapsed * 1e6 / max(1, command["iters"]), "wrong": wrong}


def next_command(nic: Nic) -> dict | None:
    """The controller's next command (None once it closes stdin), serving the NIC meanwhile: a peer still
    finishing may need this rank to acknowledge a retransmitted chunk."""
    run([nic], lambda: bool(select.select([sys.stdin], [], [], 0)[0]), timeout_s=IDLE_TIMEOUT_S)
    line = sys.stdin.readline()
    return json.loads(line) if line else None


def main() -> None:
    """Serve the controller: a job line, then one answer per command line until stdin closes."""
    job = json.loads(sys.stdin.readline())
    config = TransportConfig(**job.get("transport", {}))
    with Nic(job["addresses"][job["rank"]]) as nic:
        links = RankLinks(nic, job["rank"], job["addresses"], job["cc"], config)
        links.open_all(job["nchannels"])
        print(json.dumps({"ready": job["rank"]}), flush=True)
        while (command := next_command(nic)) is not None:
            if command["nchannels"] > job["nchannels"]:
                raise ValueError(f"{command['nchannels']} channels asked, the job opened {job['nchannels']}")
            print(json.dumps(measure(command, links)), flush=True)


if __name__ == "__main__":
    main()
