"""The schedule model: what one rank executes for one collective call, a :class:`Schedule` of :class:`Step` s
over :class:`Region` s of its buffers, with the collectives, reduction ops and algorithm parameters it is
built from, the errors, and the :class:`Traffic` the simulator records.

Buffers
-------
Each rank has a ``"send"`` buffer (its input) and a ``"recv"`` buffer (its
output), with NCCL's sizes (``count`` as in the NCCL API, see
:func:`testbed.collective.schedules.builder.build_schedule`).  In place (as
nccl-tests' in-place column) both live in one allocation at NCCL's offsets:
``all_gather`` sends from ``recvbuff + rank*count``, ``reduce_scatter``
receives into ``sendbuff + rank*count``, every other collective uses one and
the same array.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

BufName = Literal["send", "recv"]

COLLECTIVES: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "alltoall")
REDUCTION_OPS: tuple[str, ...] = ("sum", "prod", "max", "min", "avg")

#: 32 Ki elements = 128 KiB of float32, the order of NCCL's Simple-protocol chunk.
DEFAULT_CHUNK_ELEMS = 1 << 15


@dataclass(frozen=True)
class Algorithm:
    """How the ranks run a collective on the fabric: NCCL's channels and pipelining chunk (in bytes, so
    the same for every datatype), and hierarchical (site-aware) all_reduce, which keeps DCI crossings to
    one shard per rank.

    The defaults are NCCL's on one NIC per GPU, a flat ring with a 512 KiB step (the Simple protocol's
    NCCL_BUFFSIZE of 4 MiB over NCCL_STEPS 8, src/include/device.h), the most one step moves, but one channel
    where NCCL runs 2 (the topology search finds one ring per NIC and ``ncclTopoPostset`` in
    src/graph/connect.cc doubles the channels): a real NIC shares its port between its QPs, while here each
    QP paces at the line rate on its own, so two channels offered twice the host's link to its own first
    queue.  Measured: on the invariance test's uncongested fabric (200 Mbit/s NICs) two channels made the
    firmware DCQCN fight its own uplink and busbw differ by 35 % between k and 2k, both runs faithful.
    The step is larger than ``DEFAULT_CHUNK_ELEMS``: fewer, larger messages also cost the Python transport
    less per byte."""

    nchannels: int = 1
    chunk_bytes: int = 512 * 1024
    hierarchical: bool = False

UFUNCS = {
    "sum": np.add,
    "prod": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
    "avg": np.add,  # ncclAvg = sum, then divide by nranks once (postOp)
}
REDUCING = frozenset({"all_reduce", "reduce_scatter", "reduce"})


class ScheduleError(RuntimeError):
    """A schedule is malformed or its ranks disagree (size mismatch, stray message...)."""


class DeadlockError(ScheduleError):
    """No rank can make progress although steps remain."""


@dataclass(frozen=True)
class Region:
    """Elements ``[lo, hi)`` of one of the rank's buffers (``"send"`` or ``"recv"``)."""

    buf: BufName
    lo: int
    hi: int

    def __post_init__(self) -> None:
        if self.buf not in ("send", "recv"):
            raise ValueError(f"unknown buffer {self.buf!r}")
        if not 0 <= self.lo <= self.hi:
            raise ValueError(f"bad region [{self.lo}, {self.hi})")

    @property
    def size(self) -> int:
        return self.hi - self.lo


_KINDS = {
    # (recv?, src?, dst?, send?) -> NCCL primitive name
    (False, True, False, True): "send",
    (False, True, True, False): "copy",
    (False, True, True, True): "copySend",
    (True, False, True, False): "recv",
    (True, False, True, True): "recvCopySend",
    (True, True, False, True): "recvReduceSend",
    (True, True, True, False): "recvReduceCopy",
    (True, True, True, True): "recvReduceCopySend",
}


@dataclass(frozen=True)
class Step:
    """One chunk-sized operation of one rank, modelled on NCCL's primitives.

    Semantics, in order:

    1. value source: if ``recv_peer`` is set, receive the next message of queue
       ``(recv_peer -> me, channel)``; if ``src`` is set too, the value is
       ``op(src, message)`` (a *reduce*), otherwise the message itself.  Without
       ``recv_peer`` the value is a copy of ``src``.
    2. if ``postdiv > 1`` divide the value by it (``ncclAvg``'s postOp; C-style
       truncation toward zero for integers).
    3. sinks: write the value to ``dst`` if set; send it to ``send_peer`` on
       queue ``(me -> send_peer, channel)`` if set.

    ``deps`` are indices of earlier steps of this rank that must have completed
    (see :mod:`testbed.collective.schedules.builder`); ``phase`` is a label for tracing only.
    """

    index: int
    channel: int
    recv_peer: int | None = None
    send_peer: int | None = None
    src: Region | None = None
    dst: Region | None = None
    postdiv: int = 1
    deps: tuple[int, ...] = ()
    phase: str = ""

    def __post_init__(self) -> None:
        key = (self.recv_peer is not None, self.src is not None, self.dst is not None,
               self.send_peer is not None)
        if key not in _KINDS:
            raise ValueError(f"step {self.index}: unsupported combination {key} "
                             "(need a local src or dst region and something to do)")
        if self.src is not None and self.dst is not None and self.src.size != self.dst.size:
            raise ValueError(f"step {self.index}: src and dst sizes differ")
        if self.postdiv < 1:
            raise ValueError(f"step {self.index}: postdiv must be >= 1")
        if any(not 0 <= d < self.index for d in self.deps):
            raise ValueError(f"step {self.index}: deps must name earlier steps: {self.deps}")

    @property
    def kind(self) -> str:
        """NCCL primitive name, e.g. ``"recvReduceSend"``."""
        return _KINDS[(self.recv_peer is not None, self.src is not None,
                       self.dst is not None, self.send_peer is not None)]

    @property
    def reduces(self) -> bool:
        return self.recv_peer is not None and self.src is not None

    @property
    def nelems(self) -> int:
        """Elements moved (the size of every message this step sends or receives)."""
        region = self.src if self.src is not None else self.dst
        assert region is not None
        return region.size


@dataclass(frozen=True)
class Schedule:
    """Everything one rank executes for one collective call.

    ``send_elems``/``recv_elems`` are the buffer sizes the steps assume.  When
    ``in_place`` both buffers are views of one allocation of
    ``alloc_elems`` elements, starting at ``send_offset`` / ``recv_offset``.
    """

    collective: str
    rank: int
    nranks: int
    count: int
    op: str
    root: int
    nchannels: int
    chunk_elems: int
    in_place: bool
    send_elems: int
    recv_elems: int
    send_offset: int
    recv_offset: int
    sites: tuple[tuple[int, ...], ...] | None
    steps: tuple[Step, ...]

    @property
    def alloc_elems(self) -> int:
        if not self.in_place:
            return self.send_elems + self.recv_elems
        return max(self.send_offset + self.send_elems, self.recv_offset + self.recv_elems)

    def sends(self, channel: int | None = None) -> list[Step]:
        """Steps that send a chunk (optionally only on ``channel``)."""
        return [s for s in self.steps if s.send_peer is not None
                and (channel is None or s.channel == channel)]


@dataclass
class Traffic:
    """Messages and bytes per ``(src, dst, channel)`` queue, filled by the simulator."""

    messages: Counter = field(default_factory=Counter)
    nbytes: Counter = field(default_factory=Counter)

    def record(self, src: int, dst: int, channel: int, nbytes: int) -> None:
        self.messages[(src, dst, channel)] += 1
        self.nbytes[(src, dst, channel)] += nbytes

    def bytes_sent(self, src: int) -> int:
        return sum(b for (s, _, _), b in self.nbytes.items() if s == src)

    def cross_group_bytes(self, groups: Sequence[Sequence[int]]) -> dict[int, int]:
        """Bytes each rank sent to ranks outside its group (e.g. across a DCI)."""
        group_of = {r: g for g, members in enumerate(groups) for r in members}
        out = {r: 0 for r in group_of}
        for (s, d, _), b in self.nbytes.items():
            if group_of.get(s) != group_of.get(d):
                out[s] = out.get(s, 0) + b
        return out
