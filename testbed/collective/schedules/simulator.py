"""A pure in-process simulator of collective schedules, used by the tests only.

:func:`simulate` executes every rank's schedule over numpy buffers (no networking) so the schedules can be
proven correct against :func:`testbed.collective.schedules.checking.expected`.
"""

import random
from collections import deque
from collections.abc import Sequence

import numpy as np

from testbed.collective.schedules.builder import build_schedules
from testbed.collective.schedules.model import (
    COLLECTIVES,
    DEFAULT_CHUNK_ELEMS,
    UFUNCS,
    DeadlockError,
    Schedule,
    ScheduleError,
    Traffic,
)
from testbed.collective.schedules.steps import apply_step, as_inputs, count_from_inputs, rank_buffers, step_graph


def run_schedules(schedules: Sequence[Schedule], inputs: Sequence[np.ndarray], *,
                  seed: int | None = None, traffic: Traffic | None = None
                  ) -> list[np.ndarray]:
    """Execute every rank's schedule over numpy buffers; return each rank's recv buffer.

    Each step runs once its ``deps`` are done, it is next in program order
    among the steps using the same queue in the same direction, and (for a
    receive) a message is waiting.  Among runnable steps the simulator picks
    the oldest (``seed=None``) or a random one, which shakes out missing deps.
    Raises :class:`DeadlockError` if steps remain but none can run and
    :class:`ScheduleError` on size mismatches or messages left unreceived.
    """
    arrays = as_inputs(inputs)
    n = len(schedules)
    if len(arrays) != n:
        raise ValueError(f"{n} schedules but {len(arrays)} inputs")
    for r, sch in enumerate(schedules):
        if sch.rank != r or sch.nranks != n:
            raise ScheduleError(f"schedule {r} is for rank {sch.rank} of {sch.nranks}")
        if arrays[r].size != sch.send_elems:
            raise ValueError(f"rank {r}: input has {arrays[r].size} elements, "
                             f"schedule expects {sch.send_elems}")
    ufunc = UFUNCS[schedules[0].op] if n else np.add

    # Buffers (views into one allocation when in place).
    bufs = [rank_buffers(sch, x) for sch, x in zip(schedules, arrays)]

    # Dependency graph: explicit deps + per-queue program order.
    remaining: list[list[int]] = []
    succ: list[list[list[int]]] = []
    total = 0
    for r, sch in enumerate(schedules):
        for i, st in enumerate(sch.steps):
            if st.index != i:
                raise ScheduleError(f"rank {r}: step at position {i} has index {st.index}")
            for reg in (st.src, st.dst):
                if reg is not None and reg.hi > bufs[r][reg.buf].size:
                    raise ScheduleError(f"rank {r} step {i}: {reg} outside the {reg.buf} buffer")
            for peer in (st.send_peer, st.recv_peer):
                if peer is not None and not 0 <= peer < n:
                    raise ScheduleError(f"rank {r} step {i}: peer {peer} out of range")
        rem, nxt = step_graph(sch)
        remaining.append(rem)
        succ.append(nxt)
        total += len(sch.steps)

    queues: dict[tuple[int, int, int], deque] = {}
    waiting: dict[tuple[int, int, int], tuple[int, int]] = {}
    runnable: deque[tuple[int, int]] = deque()
    rng = random.Random(seed) if seed is not None else None
    done = [[False] * len(s.steps) for s in schedules]

    def enable(r: int, i: int) -> None:
        st = schedules[r].steps[i]
        if st.recv_peer is not None:
            key = (st.recv_peer, r, st.channel)
            if not queues.get(key):
                waiting[key] = (r, i)
                return
        runnable.append((r, i))

    for r, rem in enumerate(remaining):
        for i, k in enumerate(rem):
            if k == 0:
                enable(r, i)

    executed = 0
    while runnable:
        if rng is not None and len(runnable) > 1:
            runnable.rotate(-rng.randrange(len(runnable)))
        r, i = runnable.popleft()
        st = schedules[r].steps[i]
        b = bufs[r]
        val: np.ndarray | None = None
        if st.recv_peer is not None:
            msg = queues[(st.recv_peer, r, st.channel)].popleft()
            if msg.size != st.nelems:
                raise ScheduleError(
                    f"rank {r} step {i} ({st.kind}) expected {st.nelems} elements from rank "
                    f"{st.recv_peer} on channel {st.channel} but the next message has {msg.size}")
            val = msg
        val = apply_step(st, b, ufunc, val)
        if st.send_peer is not None:
            key = (r, st.send_peer, st.channel)
            queues.setdefault(key, deque()).append(val)
            if traffic is not None:
                traffic.record(r, st.send_peer, st.channel, val.nbytes)
            if key in waiting:
                runnable.append(waiting.pop(key))
        done[r][i] = True
        executed += 1
        for s in succ[r][i]:
            remaining[r][s] -= 1
            if remaining[r][s] == 0:
                enable(r, s)

    if executed != total:
        stuck = []
        for r, sch in enumerate(schedules):
            first = next((i for i, d in enumerate(done[r]) if not d), None)
            if first is None:
                continue
            st = sch.steps[first]
            what = (f"recv from {st.recv_peer} ch {st.channel}" if st.recv_peer is not None
                    else "deps")
            stuck.append(f"rank {r} step {first} {st.kind} waiting on {what}")
        raise DeadlockError(f"deadlock after {executed}/{total} steps: " + "; ".join(stuck[:8]))
    leftover = {k: len(q) for k, q in queues.items() if q}
    if leftover:
        raise ScheduleError(f"messages sent but never received (src, dst, channel): {leftover}")
    return [b["recv"].copy() for b in bufs]

def simulate(collective: str, inputs: Sequence[np.ndarray], op: str = "sum", root: int = 0,
             nchannels: int = 1, chunk_elems: int = DEFAULT_CHUNK_ELEMS,
             sites: Sequence[Sequence[int]] | None = None, *, in_place: bool = False,
             seed: int | None = None, traffic: Traffic | None = None
             ) -> list[np.ndarray]:
    """Build all ranks' schedules for ``inputs`` (rank ``r``'s send buffer) and run them.

    Returns each rank's recv buffer (for ``reduce`` only the root's is meaningful).
    """
    if collective not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r}; expected one of {COLLECTIVES}")
    arrays = as_inputs(inputs)
    count = count_from_inputs(collective, arrays)
    schedules = build_schedules(collective, len(arrays), count, op=op, root=root,
                                nchannels=nchannels, chunk_elems=chunk_elems, sites=sites,
                                in_place=in_place)
    return run_schedules(schedules, arrays, seed=seed, traffic=traffic)
