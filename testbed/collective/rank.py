"""One rank ("GPU") of a collective, run as its own process on its host: ``python -m testbed.collective.rank``.

The controller (``testbed.collective.runner``) starts one per host with ``host.popen`` and talks to it in JSON
lines: first the job (this rank, every rank's address, the channels to open, the congestion control),
then one command per measurement (the collective, datatype, op, root, algorithm, element count, in or out
of place, iterations, whether to check); the rank answers each with its time and its count of wrong
elements.  Between ranks, data moves only over the
emulated fabric: one queue pair per (peer, channel) and direction on the host's RoCE NIC (port 4791).

With a job's ``dilation`` k the rank is the transport's boundary of ``testbed.model.dilation``: its queue
pairs run ``TransportConfig.dilated`` and every congestion control, pushed or not, ``controllers.dilated.Dilated``;
what the controller pushes (CNP intervals, pacing caps) is declared and converted here; what the rank reports
(times, the flows' rates and RTTs) is converted back.  The specs stay in declared units throughout.

Steps run as NCCL's primitives do (``testbed.collective.schedules``): a step starts once its predecessors are done
and, if it receives, once its chunk has arrived; sends are eager (the chunk is copied to the queue pair),
so a rank keeps several chunks in flight on a long link.
"""

import json
import resource
import select
import sys
import time
from collections import deque

import numpy as np

from testbed.collective.control_channel import ControlClient
from testbed.collective.point_to_point import run_flows
from testbed.collective.rank_links import RankLinks
from testbed.collective.schedules.builder import build_schedule
from testbed.collective.schedules.checking import count_wrong, expected, rank_input
from testbed.collective.schedules.model import UFUNCS, Schedule
from testbed.collective.schedules.steps import apply_step, rank_buffers, step_graph
from testbed.roce.nic import Nic, run
from testbed.roce.receiver import Receiver
from testbed.roce.transport import TransportConfig

IDLE_TIMEOUT_S = 24 * 3600.0  # between commands: the controller decides when the job ends


def execute(schedule: Schedule, buffers: dict[str, np.ndarray], links: RankLinks) -> None:
    """Run this rank's steps over the fabric until every one is done and every chunk it sent is acknowledged."""
    remaining, successors = step_graph(schedule)
    ufunc = UFUNCS[schedule.op]
    dtype = buffers["send"].dtype
    ready = deque(i for i, count in enumerate(remaining) if count == 0)
    blocked: dict[int, Receiver] = {}  # steps whose chunk has not arrived yet
    blocked_since: dict[int, int] = {}
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
                    blocked_since.setdefault(i, time.monotonic_ns())
                    continue
                message = np.frombuffer(receiver.recv(0), dtype=dtype)
            value = apply_step(step, buffers, ufunc, message)
            if step.send_peer is not None:
                links.sender(step.send_peer, step.channel).send(value)
            waited = time.monotonic_ns() - blocked_since.pop(i) if i in blocked_since else 0
            links.telemetry.step_done(i, step, value.nbytes, waited)
            done += 1
            for successor in successors[i]:
                remaining[successor] -= 1
                if remaining[successor] == 0:
                    ready.append(successor)
        if done < len(schedule.steps):
            links.serve_until(lambda: any(r.has_message() for r in blocked.values()), "no chunk arrived for")
            arrived = [i for i, r in blocked.items() if r.has_message()]
            for i in arrived:
                del blocked[i]
            ready.extend(sorted(arrived))
    links.serve_until(links.all_acknowledged, "chunks unacknowledged after")


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
    iter_us = []  # declared time: the wall time this rank took, divided by the dilation
    for _ in range(command["iters"]):
        start = time.perf_counter()
        execute(schedule, buffers, links)
        iter_us.append((time.perf_counter() - start) * 1e6 / links.dilation)
    wrong = None
    if command["check"]:
        buffers = rank_buffers(schedule, data)
        execute(schedule, buffers, links)
        inputs = [rank_input(r, schedule.send_elems, dtype, command["seed"]) for r in range(n)]
        want = expected(command["collective"], inputs, op=command["op"], root=command["root"])[rank]
        wrong = 0 if want is None else count_wrong(buffers["recv"], want, op=command["op"], nranks=n)
    return {"time_us": sum(iter_us) / max(1, len(iter_us)), "iter_us": iter_us, "wrong": wrong}


def answer(command: dict, links: RankLinks) -> dict:
    """Run ``command`` (a collective measurement, or with ``pairs`` long flows, ``testbed.collective.point_to_point``)
    and answer with its results and what it cost: the flows' counters, this process's CPU and its event loop's
    lateness for its timers and its packets (``testbed.observe.fidelity``), and the telemetry rows sampled
    meanwhile."""
    before, cpu_before = links.counters(), cpu_times()
    links.nic.take_lateness()
    results = {"ends": run_flows(command, links)} if "pairs" in command else measure(command, links)
    counters = {name: value - before[name] for name, value in links.counters().items()}
    cpu = {name: None if value is None else value - cpu_before[name] for name, value in cpu_times().items()}
    if links.telemetry.interval_ns:
        links.telemetry.sample(links.senders, links.receivers)  # the command's final totals
    return {**results, "counters": counters, "cpu": cpu, "loop": links.nic.take_lateness(), **links.telemetry.take()}


def cpu_times() -> dict:
    """This process's wall clock, time on a CPU and time waiting on a run queue for one, ns: how much of a CPU
    the rank wanted (``testbed.observe.fidelity``).  The kernel's /proc/self/schedstat; where it has none,
    the CPU time from getrusage and no waiting time (None)."""
    wall = time.monotonic_ns()
    try:
        run_ns, wait_ns, _ = (int(x) for x in open("/proc/self/schedstat").read().split())
    except (OSError, ValueError):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"wall_ns": wall, "run_ns": round((usage.ru_utime + usage.ru_stime) * 1e9), "wait_ns": None}
    return {"wall_ns": wall, "run_ns": run_ns, "wait_ns": wait_ns}


def next_command(links: RankLinks) -> dict | None:
    """The controller's next command (None once it closes stdin), serving the NIC meanwhile: a peer still
    finishing may need this rank to acknowledge a retransmitted chunk.  Control messages pushed before the
    command are applied before it runs (the controller pushes them first)."""
    run([links.nic], lambda: bool(select.select([sys.stdin], [], [], 0)[0]), timeout_s=IDLE_TIMEOUT_S)
    links.poll_control(now=True)
    line = sys.stdin.readline()
    return json.loads(line) if line else None


def main() -> None:
    """Serve the controller: a job line, then one answer per command line until stdin closes."""
    job = json.loads(sys.stdin.readline())
    config = TransportConfig(**job.get("transport", {}))
    control = ControlClient(job["control"], job["rank"]) if job.get("control") else None
    with Nic(job["addresses"][job["rank"]]) as nic:
        links = RankLinks(nic, job["rank"], job["addresses"], job["cc"], config, control,
                          job.get("telemetry_ns", 0), job.get("dilation", 1.0))
        links.open_all(job["nchannels"])
        print(json.dumps({"ready": job["rank"]}), flush=True)
        while (command := next_command(links)) is not None:
            if command["nchannels"] > job["nchannels"]:
                raise ValueError(f"{command['nchannels']} channels asked, the job opened {job['nchannels']}")
            print(json.dumps(answer(command, links)), flush=True)


if __name__ == "__main__":
    main()
