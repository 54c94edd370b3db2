"""Executing one rank's steps over numpy buffers, shared by the real rank process
(:mod:`testbed.collective.rank`) and the simulator (:mod:`testbed.collective.schedules.simulator`): the
rank's buffers, one step's reduce, copy and divide, the order in which steps may run, and the checks of
per-rank inputs that the simulator and the reference results (:mod:`testbed.collective.schedules.checking`)
share.
"""

from collections.abc import Sequence

import numpy as np

from testbed.collective.schedules.model import Schedule, Step


def postdiv(v: np.ndarray, d: int) -> np.ndarray:
    if d == 1:
        return v
    kind = v.dtype.kind
    if kind in "fc":
        return (v / d).astype(v.dtype, copy=False)
    if kind == "u":
        return v // v.dtype.type(d)
    if kind == "i":  # C semantics: truncate toward zero
        dd = v.dtype.type(d)
        q = v // dd
        fix = (v < 0) & (v % dd != 0)
        return np.where(fix, q + v.dtype.type(1), q).astype(v.dtype, copy=False)
    raise ValueError(f"avg is not defined for dtype {v.dtype}")


def _poison(size: int, dtype: np.dtype) -> np.ndarray:
    """Initial output contents that never look like a correct result by accident."""
    if dtype.kind in "fc":
        return np.full(size, np.nan, dtype=dtype)
    if dtype.kind in "iu":
        return np.full(size, np.iinfo(dtype).min if dtype.kind == "i" else np.iinfo(dtype).max,
                       dtype=dtype)
    return np.zeros(size, dtype=dtype)


def as_inputs(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    arrays = [np.asarray(x) for x in inputs]
    if not arrays:
        raise ValueError("need at least one rank")
    if any(a.ndim != 1 for a in arrays):
        raise ValueError("inputs must be 1-D arrays")
    if len({a.dtype for a in arrays}) != 1:
        raise ValueError("all ranks' inputs must share one dtype")
    return arrays


def rank_buffers(schedule: Schedule, data: np.ndarray) -> dict[str, np.ndarray]:
    """A rank's ``"send"`` buffer holding ``data`` and its ``"recv"`` buffer, poisoned so that anything the
    collective leaves unwritten counts as wrong; views of one allocation when in place, at NCCL's offsets."""
    if schedule.in_place:
        memory = _poison(schedule.alloc_elems, data.dtype)
        send = memory[schedule.send_offset:schedule.send_offset + schedule.send_elems]
        recv = memory[schedule.recv_offset:schedule.recv_offset + schedule.recv_elems]
        send[...] = data
    else:
        send, recv = data.copy(), _poison(schedule.recv_elems, data.dtype)
    return {"send": send, "recv": recv}


def apply_step(step: Step, buffers: dict[str, np.ndarray], ufunc: np.ufunc,
               message: np.ndarray | None) -> np.ndarray:
    """Run ``step`` on a rank's ``buffers`` given the ``message`` it received (None if it receives none):
    reduce or copy, divide (avg), write ``dst``; returns the value the step sends, if it sends."""
    value = message
    if step.src is not None:
        local = buffers[step.src.buf][step.src.lo:step.src.hi]
        value = local.copy() if value is None else ufunc(local, value)
    assert value is not None
    if step.postdiv > 1:
        value = postdiv(value, step.postdiv)
    if step.dst is not None:
        buffers[step.dst.buf][step.dst.lo:step.dst.hi] = value
    return value


def step_graph(schedule: Schedule) -> tuple[list[int], list[list[int]]]:
    """Each step's number of predecessors and each step's successors, for an executor that runs a step as
    soon as its predecessors are done: its ``deps`` plus the previous step on the same queue (same peer,
    channel and direction), since queues are FIFO and carry no tags."""
    remaining = [0] * len(schedule.steps)
    successors: list[list[int]] = [[] for _ in schedule.steps]
    last_on_queue: dict[tuple, int] = {}
    for i, step in enumerate(schedule.steps):
        preds = set(step.deps)
        for key in (("s", step.send_peer, step.channel), ("r", step.recv_peer, step.channel)):
            if key[1] is not None:
                if key in last_on_queue:
                    preds.add(last_on_queue[key])
                last_on_queue[key] = i
        remaining[i] = len(preds)
        for d in preds:
            successors[d].append(i)
    return remaining, successors



def count_from_inputs(collective: str, arrays: list[np.ndarray]) -> int:
    n = len(arrays)
    sizes = {a.size for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"all ranks' inputs must have the same size, got {sorted(sizes)}")
    size = sizes.pop()
    if collective in ("reduce_scatter", "alltoall"):
        if size % n:
            raise ValueError(f"{collective} input size {size} must be a multiple of nranks={n} "
                             "(NCCL: sendcount = nranks * recvcount)")
        return size // n
    return size
