"""Collective schedules (NCCL-style ring algorithms) and a pure in-process simulator.

This module is the *pure-logic* layer under the testbed's collective runner:
for a collective and a rank it produces the ordered list of :class:`Step` s that
rank executes over a message transport offering ``send(peer, array)`` /
``recv(peer) -> array`` with reliable, in-order delivery per
``(src, dst, channel)`` queue pair.  :func:`simulate` executes every rank's
schedule over numpy buffers (no networking) so the schedules can be proven
correct against :func:`expected`, with :func:`count_wrong` mimicking
nccl-tests' ``#wrong`` column.

Algorithms (why they look the way they do)
-----------------------------------------
The step order follows NCCL's ring kernels so that what the testbed puts on the
wire resembles what NCCL puts on the wire:

* ``all_reduce``: ``runRing`` in NCCL ``src/device/all_reduce.h`` -- one
  ``send``, ``n-2`` × ``recvReduceSend``, one ``recvReduceCopySend`` (the
  rank's own slice becomes final, ``postOp`` applied), ``n-2`` ×
  ``recvCopySend`` and a final ``recv``: ``2(n-1)`` sends per chunk.
  Rank at ring index ``i`` starts with slice ``i-1`` and ends owning slice ``i``.
* ``reduce_scatter`` (``src/device/reduce_scatter.h``): the first half of the
  above, ending with ``recvReduceCopy`` into the output: ``n-1`` sends.
* ``all_gather`` (``src/device/all_gather.h``): ``copySend`` (or ``send`` when
  in place) of the own block, ``n-2`` × ``recvCopySend``, one ``recv``.
* ``broadcast`` (``src/device/broadcast.h``): a pipelined chain
  ``root -> root+1 -> ... -> root-1``.
* ``reduce`` (``src/device/reduce.h``): a pipelined chain
  ``root+1 -> ... -> root`` with ``recvReduceSend`` in the middle and
  ``recvReduceCopy`` (with ``postOp``) at the root.
* ``alltoall``: ``n-1`` direct pairwise exchanges; at round ``k`` rank ``r``
  sends block ``r+k`` to rank ``r+k`` and receives block ``r-k`` from ``r-k``
  (what nccl-tests' grouped ``ncclSend``/``ncclRecv`` alltoall amounts to).
* hierarchical ``all_reduce`` (``sites=...``): see :func:`build_schedule`.

Channels and chunks
-------------------
Like NCCL's ``nChannels`` the buffer is cut into ``nchannels`` contiguous parts,
each run as an independent ring in the same rank order; every :class:`Step`
carries its channel so the transport can use one queue pair per channel.
Within a channel each ring slice is cut into chunks of at most
``chunk_elems`` elements and *a step moves one chunk* (it receives at most one
chunk and sends at most one chunk, exactly like NCCL's primitives).  Counts that
do not divide evenly are split with ``numpy.array_split`` boundaries (the first
parts get one extra element); empty slices simply produce no steps, on every
rank consistently, so counts of 0 or fewer than ``nranks`` work.

Dependencies (for pipelining executors)
---------------------------------------
A rank's steps are listed in an order that is correct when executed strictly
sequentially (sends are eager: a send completes once its data is copied out).
Each step also lists ``deps``: the indices of earlier steps of the same rank it
must wait for.  They are derived mechanically from buffer-region conflicts
(read-after-write, write-after-read, write-after-write; send and receive
buffers alias when in place), so an executor may start any step whose deps are
complete -- e.g. send chunk ``k+1`` of a ring step before chunk ``k`` of the next
ring step has arrived.  The one ordering *not* spelled out in ``deps`` is the
transport's: steps using the same queue in the same direction (same peer and
channel) must be issued in program order, because queues are FIFO and carry no
tags.  :func:`run_schedules` executes in a random dependency-respecting order
when given a ``seed`` to check the deps are sufficient.

Buffers
-------
Each rank has a ``"send"`` buffer (its input) and a ``"recv"`` buffer (its
output), with NCCL's sizes (``count`` as in the NCCL API, see
:func:`build_schedule`).  In place (as nccl-tests' in-place column) both live in
one allocation at NCCL's offsets: ``all_gather`` sends from
``recvbuff + rank*count``, ``reduce_scatter`` receives into
``sendbuff + rank*count``, every other collective uses one and the same array.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "COLLECTIVES",
    "REDUCTION_OPS",
    "DEFAULT_CHUNK_ELEMS",
    "Region",
    "Step",
    "Schedule",
    "Traffic",
    "ScheduleError",
    "DeadlockError",
    "build_schedule",
    "build_schedules",
    "run_schedules",
    "simulate",
    "expected",
    "count_wrong",
    "float_tolerance",
]

BufName = Literal["send", "recv"]

COLLECTIVES: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "alltoall")
REDUCTION_OPS: tuple[str, ...] = ("sum", "prod", "max", "min", "avg")

#: 32 Ki elements = 128 KiB of float32, the order of NCCL's Simple-protocol chunk.
DEFAULT_CHUNK_ELEMS = 1 << 15


@dataclass(frozen=True)
class Algorithm:
    """How the ranks run a collective on the fabric: NCCL's channels and pipelining chunk (in bytes, so
    the same for every datatype), and hierarchical (site-aware) all_reduce, which keeps DCI crossings to
    one shard per rank.  The runner's chunk, 512 KiB, is larger than ``DEFAULT_CHUNK_ELEMS``: fewer,
    larger messages cost the Python transport less per byte."""

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
_REDUCING = frozenset({"all_reduce", "reduce_scatter", "reduce"})


class ScheduleError(RuntimeError):
    """A schedule is malformed or its ranks disagree (size mismatch, stray message...)."""


class DeadlockError(ScheduleError):
    """No rank can make progress although steps remain."""


# --------------------------------------------------------------------------- #
# Public data model
# --------------------------------------------------------------------------- #


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
    (see the module docstring); ``phase`` is a label for tracing only.
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


# --------------------------------------------------------------------------- #
# Schedule construction
# --------------------------------------------------------------------------- #


def _split(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """``numpy.array_split`` boundaries of ``[lo, hi)`` into ``parts`` pieces."""
    q, r = divmod(hi - lo, parts)
    out, x = [], lo
    for i in range(parts):
        size = q + (1 if i < r else 0)
        out.append((x, x + size))
        x += size
    return out


class _Tracker:
    """Last writer / readers-since-last-write per element range of one memory space."""

    def __init__(self) -> None:
        self._starts: list[int] = [0]  # segment k covers [starts[k], starts[k+1])
        self._writer: list[int] = [-1]
        self._readers: list[tuple[int, ...]] = [()]

    def _cut(self, x: int) -> int:
        k = bisect.bisect_right(self._starts, x) - 1
        if self._starts[k] == x:
            return k
        self._starts.insert(k + 1, x)
        self._writer.insert(k + 1, self._writer[k])
        self._readers.insert(k + 1, self._readers[k])
        return k + 1

    def access(self, lo: int, hi: int, step: int, write: bool) -> set[int]:
        if lo >= hi:
            return set()
        a = self._cut(lo)
        b = self._cut(hi)
        deps: set[int] = set()
        for k in range(a, b):
            if self._writer[k] >= 0:
                deps.add(self._writer[k])
            if write:
                deps.update(self._readers[k])
        if write:
            del self._starts[a + 1:b], self._writer[a + 1:b], self._readers[a + 1:b]
            self._writer[a] = step
            self._readers[a] = ()
        else:
            for k in range(a, b):
                self._readers[k] = self._readers[k] + (step,)
        return deps


class _Builder:
    """Accumulates one rank's steps and derives their ``deps`` from region conflicts."""

    def __init__(self, in_place: bool, send_offset: int, recv_offset: int) -> None:
        self.steps: list[Step] = []
        self._in_place = in_place
        self._off = {"send": send_offset, "recv": recv_offset}
        self._trackers: dict[str, _Tracker] = {}

    def _mem(self, r: Region) -> tuple[str, int, int]:
        if self._in_place:
            off = self._off[r.buf]
            return ("mem", r.lo + off, r.hi + off)
        return (r.buf, r.lo, r.hi)

    def same_mem(self, a: Region, b: Region) -> bool:
        return self._mem(a) == self._mem(b)

    def _access(self, r: Region, idx: int, write: bool) -> set[int]:
        space, lo, hi = self._mem(r)
        tracker = self._trackers.setdefault(space, _Tracker())
        return tracker.access(lo, hi, idx, write)

    def add(self, *, channel: int, phase: str, recv_peer: int | None = None,
            send_peer: int | None = None, src: Region | None = None,
            dst: Region | None = None, postdiv: int = 1) -> None:
        region = src if src is not None else dst
        if region is None or region.size == 0:
            return
        idx = len(self.steps)
        deps: set[int] = set()
        if src is not None:
            deps |= self._access(src, idx, write=False)
        if dst is not None:
            deps |= self._access(dst, idx, write=True)
        deps.discard(idx)
        self.steps.append(Step(index=idx, channel=channel, recv_peer=recv_peer,
                               send_peer=send_peer, src=src, dst=dst, postdiv=postdiv,
                               deps=tuple(sorted(deps)), phase=phase))

    def local_copy(self, src: Region, dst: Region, postdiv: int, channel: int,
                   phase: str) -> None:
        if self.same_mem(src, dst) and postdiv == 1:
            return
        self.add(channel=channel, phase=phase, src=src, dst=dst, postdiv=postdiv)


@dataclass(frozen=True)
class _Slice:
    """A ring slice: ``size`` elements read at ``inp`` and/or written at ``out``."""

    size: int
    inp: tuple[BufName, int] | None
    out: tuple[BufName, int] | None

    def nchunks(self, ce: int) -> int:
        return -(-self.size // ce)

    def chunk(self, j: int, ce: int) -> tuple[Region | None, Region | None] | None:
        lo = j * ce
        if lo >= self.size:
            return None
        hi = min(self.size, lo + ce)
        inp = None if self.inp is None else Region(self.inp[0], self.inp[1] + lo, self.inp[1] + hi)
        out = None if self.out is None else Region(self.out[0], self.out[1] + lo, self.out[1] + hi)
        return inp, out


@dataclass(frozen=True)
class _Job:
    """One ring (or chain) algorithm instance on one channel, seen from ``pos``."""

    kind: str  # all_reduce | reduce_scatter | all_gather | broadcast | reduce
    ring: tuple[int, ...]
    pos: int
    channel: int
    slices: tuple[_Slice, ...]
    phase: str
    postdiv: int = 1
    root_pos: int = 0

    def iterations(self, ce: int) -> int:
        return max((s.nchunks(ce) for s in self.slices), default=0)


def _emit_job(b: _Builder, job: _Job, j: int, ce: int) -> None:
    """Emit chunk iteration ``j`` of ``job`` (the body of NCCL's gridOffset loop)."""
    m, p = len(job.ring), job.pos
    nxt, prv = job.ring[(p + 1) % m], job.ring[(p - 1) % m]
    kw = {"channel": job.channel, "phase": job.phase}
    kind = job.kind

    if kind in ("broadcast", "reduce"):
        c = job.slices[0].chunk(j, ce)
        if c is None:
            return
        src, dst = c
        assert src is not None and dst is not None
        if m == 1:
            b.local_copy(src, dst, job.postdiv, **kw)
        elif kind == "broadcast":
            q = (p - job.root_pos) % m  # chain root -> root+1 -> ... -> root-1
            if q == 0:
                if b.same_mem(src, dst):
                    b.add(src=dst, send_peer=nxt, **kw)
                else:
                    b.add(src=src, dst=dst, send_peer=nxt, **kw)
            elif q < m - 1:
                b.add(recv_peer=prv, dst=dst, send_peer=nxt, **kw)
            else:
                b.add(recv_peer=prv, dst=dst, **kw)
        else:
            q = (p - job.root_pos - 1) % m  # chain root+1 -> ... -> root
            if q == 0:
                b.add(src=src, send_peer=nxt, **kw)
            elif q < m - 1:
                b.add(recv_peer=prv, src=src, send_peer=nxt, **kw)
            else:
                b.add(recv_peer=prv, src=src, dst=dst, postdiv=job.postdiv, **kw)
        return

    def pc(s: int) -> tuple[Region | None, Region | None] | None:
        return job.slices[s % m].chunk(j, ce)

    if m == 1:
        c = pc(0)
        if c is not None and c[0] is not None and c[1] is not None:
            b.local_copy(c[0], c[1], job.postdiv, **kw)
        return

    if kind in ("all_reduce", "reduce_scatter"):
        # Reduce-scatter half of NCCL runRing: start with slice p-1, end owning p.
        if (c := pc(p - 1)) is not None:
            b.add(src=c[0], send_peer=nxt, **kw)
        for t in range(1, m - 1):
            if (c := pc(p - 1 - t)) is not None:
                b.add(recv_peer=prv, src=c[0], send_peer=nxt, **kw)
        if (c := pc(p)) is not None:
            b.add(recv_peer=prv, src=c[0], dst=c[1], postdiv=job.postdiv,
                  send_peer=nxt if kind == "all_reduce" else None, **kw)
        if kind == "reduce_scatter":
            return
        _emit_ring_gather(b, pc, p, m, prv, nxt, kw)  # the all-gather half
        return

    if kind == "all_gather":
        if (c := pc(p)) is not None:
            src, dst = c
            assert dst is not None
            if src is None or b.same_mem(src, dst):
                b.add(src=dst, send_peer=nxt, **kw)
            else:
                b.add(src=src, dst=dst, send_peer=nxt, **kw)
        _emit_ring_gather(b, pc, p, m, prv, nxt, kw)
        return

    raise AssertionError(kind)


def _emit_ring_gather(b: _Builder, pc, p: int, m: int, prv: int, nxt: int, kw: dict) -> None:
    """The gather half of a ring: receive each final slice from the previous rank, keep it, pass it on
    (NCCL's recvCopySend), and keep the last one without passing it (recv)."""
    for t in range(1, m - 1):
        if (c := pc(p - t)) is not None:
            b.add(recv_peer=prv, dst=c[1], send_peer=nxt, **kw)
    if (c := pc(p + 1)) is not None:
        b.add(recv_peer=prv, dst=c[1], **kw)


def _emit_phase(b: _Builder, jobs: Sequence[_Job], ce: int) -> None:
    """Emit jobs interleaved chunk-iteration-major (as NCCL's channels run in parallel).

    Every rank orders the (iteration, job) units the same way, so sequential
    execution cannot deadlock and each FIFO queue sees messages in the order
    its receiver expects them.
    """
    nit = max((job.iterations(ce) for job in jobs), default=0)
    for j in range(nit):
        for job in jobs:
            _emit_job(b, job, j, ce)


def _emit_alltoall(b: _Builder, rank: int, n: int, count: int, nch: int, ce: int,
                   in_place: bool) -> None:
    chans = _split(0, count, nch)
    nit = max((-(-(hi - lo) // ce) for lo, hi in chans), default=0)

    def pieces(block: int, buf: BufName) -> list[tuple[int, Region]]:
        """(channel, chunk region) of ``block`` in ``buf``, chunk-iteration-major."""
        out = []
        for j in range(nit):
            for c, (lo, hi) in enumerate(chans):
                a = lo + j * ce
                if a < hi:
                    out.append((c, Region(buf, block * count + a, block * count + min(hi, a + ce))))
        return out

    for (c, src), (_, dst) in zip(pieces(rank, "send"), pieces(rank, "recv")):
        b.local_copy(src, dst, 1, channel=c, phase="alltoall")
    if not in_place:
        for k in range(1, n):
            to, frm = (rank + k) % n, (rank - k) % n
            for (c, src), (_, dst) in zip(pieces(to, "send"), pieces(frm, "recv")):
                b.add(channel=c, phase="alltoall", src=src, send_peer=to)
                b.add(channel=c, phase="alltoall", recv_peer=frm, dst=dst)
    else:
        # In place, block r-k is received at round k but only sent at round n-k:
        # post every send first, then the receives (deps then let each receive
        # start as soon as the send of the block it overwrites has happened).
        for k in range(1, n):
            to = (rank + k) % n
            for c, src in pieces(to, "send"):
                b.add(channel=c, phase="alltoall", src=src, send_peer=to)
        for k in range(1, n):
            frm = (rank - k) % n
            for c, dst in pieces(frm, "recv"):
                b.add(channel=c, phase="alltoall", recv_peer=frm, dst=dst)


def _check_sites(sites: Sequence[Sequence[int]], nranks: int) -> tuple[tuple[int, ...], ...]:
    norm = tuple(tuple(int(r) for r in site) for site in sites)
    if not norm or any(len(site) == 0 for site in norm):
        raise ValueError("sites must be a non-empty list of non-empty rank lists")
    flat = [r for site in norm for r in site]
    if sorted(flat) != list(range(nranks)):
        raise ValueError(f"sites must partition ranks 0..{nranks - 1} exactly once each, got {sites!r}")
    return norm


def _hierarchical_jobs(rank: int, n: int, count: int, nch: int, op: str,
                       sites: tuple[tuple[int, ...], ...]) -> list[list[_Job]]:
    nsites = len(sites)
    si = next(i for i, site in enumerate(sites) if rank in site)
    mine = sites[si]
    p = mine.index(rank)
    postdiv = n if op == "avg" else 1
    rs, inter, ag = [], [], []
    for c, (lo, hi) in enumerate(_split(0, count, nch)):
        shards = [_split(lo, hi, len(site)) for site in sites]
        own = shards[si]
        rs.append(_Job("reduce_scatter", mine, p, c,
                       tuple(_Slice(b - a, ("send", a), ("recv", a)) for a, b in own),
                       phase="intra_reduce_scatter", postdiv=postdiv if nsites == 1 else 1))
        ag.append(_Job("all_gather", mine, p, c,
                       tuple(_Slice(b - a, ("recv", a), ("recv", a)) for a, b in own),
                       phase="intra_all_gather"))
        if nsites == 1:
            continue
        # Segments: the common refinement of every site's shard boundaries.  Each
        # segment lies in exactly one shard per site; its owners (one per site)
        # all-reduce it over the DCI.  With equal site sizes the segments are the
        # shards themselves (one inter-site ring per local index).
        cuts = sorted({x for sh in shards for ab in sh for x in ab})
        for g_lo, g_hi in zip(cuts, cuts[1:]):
            if g_hi <= g_lo:
                continue
            owners = []
            for site, sh in zip(sites, shards):
                k = next(k for k, (a, b) in enumerate(sh) if a <= g_lo < b)
                owners.append(site[k])
            if owners[si] != rank:
                continue
            inter.append(_Job("all_reduce", tuple(owners), si, c,
                              tuple(_Slice(b - a, ("recv", a), ("recv", a))
                                    for a, b in _split(g_lo, g_hi, nsites)),
                              phase="inter_all_reduce", postdiv=postdiv))
    return [rs, inter, ag]


def build_schedule(collective: str, rank: int, nranks: int, count: int, *,
                   op: str = "sum", root: int = 0, nchannels: int = 1,
                   chunk_elems: int = DEFAULT_CHUNK_ELEMS,
                   sites: Sequence[Sequence[int]] | None = None,
                   in_place: bool = False) -> Schedule:
    """Build ``rank``'s schedule for one collective call.

    ``count`` follows the NCCL API of each collective (and nccl-tests):

    ============== ================ ================
    collective     send buffer      recv buffer
    ============== ================ ================
    all_reduce     count            count
    broadcast      count            count
    reduce         count            count (root only meaningful)
    reduce_scatter nranks*count     count
    all_gather     count            nranks*count
    alltoall       nranks*count     nranks*count (count per peer)
    ============== ================ ================

    ``op`` matters only for reducing collectives; ``root`` only for broadcast
    and reduce.  ``sites`` (``all_reduce`` only) selects the hierarchical
    algorithm for multi-site fabrics:

    1. intra-site ring reduce-scatter: rank with local index ``i`` of a site of
       ``L`` ranks ends up with local shard ``i`` (``count/L`` elements) reduced
       over its site;
    2. inter-site ring all-reduce of each shard among the ``S`` ranks holding
       it (one per site, ring in site order);
    3. intra-site ring all-gather of the shards.

    DCI volume (``D`` = buffer bytes, ``N = S*L`` ranks, sites contiguous in a
    flat ring): a flat ring sends ``2(N-1)/N * D`` over *each* ring link, and
    ``S`` of its links cross a DCI, so ``~2*S*D`` crosses DCIs in total, funnelled
    through a single rank pair per site boundary.  Hierarchically only step 2
    crosses DCIs: each rank sends ``2(S-1)/S * D/L`` (for two sites exactly its
    shard, ``D/L``), ``2(S-1)*D`` in total, spread over ``L`` rank pairs --
    e.g. ``S=2, L=4``: 2.0 D instead of 3.5 D in total, and 0.25 D instead of
    1.75 D per crossing flow.  Sites of unequal size are supported: the buffer
    is then cut at every site's shard boundaries and each resulting segment is
    all-reduced by its owners (one per site); a rank of a site of ``L_s`` ranks
    still carries ``~1/L_s`` of the data across the DCI.
    """
    if collective not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r}; expected one of {COLLECTIVES}")
    if op not in REDUCTION_OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {REDUCTION_OPS}")
    if nranks < 1 or not 0 <= rank < nranks:
        raise ValueError(f"need 0 <= rank < nranks, got rank={rank} nranks={nranks}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if nchannels < 1 or chunk_elems < 1:
        raise ValueError("nchannels and chunk_elems must be >= 1")
    if not 0 <= root < nranks:
        raise ValueError(f"root {root} out of range for {nranks} ranks")
    norm_sites = None
    if sites is not None:
        if collective != "all_reduce":
            raise ValueError("sites (hierarchical algorithm) only applies to all_reduce")
        norm_sites = _check_sites(sites, nranks)

    n, c = nranks, count
    send_elems, recv_elems = {
        "all_reduce": (c, c), "broadcast": (c, c), "reduce": (c, c),
        "reduce_scatter": (n * c, c), "all_gather": (c, n * c), "alltoall": (n * c, n * c),
    }[collective]
    send_off, recv_off = 0, 0
    if in_place and collective == "all_gather":
        send_off = rank * c
    if in_place and collective == "reduce_scatter":
        recv_off = rank * c

    b = _Builder(in_place, send_off, recv_off)
    postdiv = n if (op == "avg" and collective in _REDUCING) else 1
    ring = tuple(range(n))
    chans = _split(0, c, nchannels)

    if collective == "all_reduce" and norm_sites is not None:
        for jobs in _hierarchical_jobs(rank, n, c, nchannels, op, norm_sites):
            _emit_phase(b, jobs, chunk_elems)
    elif collective == "all_reduce":
        _emit_phase(b, [
            _Job("all_reduce", ring, rank, ch,
                 tuple(_Slice(z - a, ("send", a), ("recv", a)) for a, z in _split(lo, hi, n)),
                 phase="ring_all_reduce", postdiv=postdiv)
            for ch, (lo, hi) in enumerate(chans)], chunk_elems)
    elif collective == "reduce_scatter":
        _emit_phase(b, [
            _Job("reduce_scatter", ring, rank, ch,
                 tuple(_Slice(hi - lo, ("send", s * c + lo), ("recv", lo) if s == rank else None)
                       for s in range(n)),
                 phase="ring_reduce_scatter", postdiv=postdiv)
            for ch, (lo, hi) in enumerate(chans)], chunk_elems)
    elif collective == "all_gather":
        _emit_phase(b, [
            _Job("all_gather", ring, rank, ch,
                 tuple(_Slice(hi - lo, ("send", lo) if s == rank else None, ("recv", s * c + lo))
                       for s in range(n)),
                 phase="ring_all_gather")
            for ch, (lo, hi) in enumerate(chans)], chunk_elems)
    elif collective in ("broadcast", "reduce"):
        _emit_phase(b, [
            _Job(collective, ring, rank, ch, (_Slice(hi - lo, ("send", lo), ("recv", lo)),),
                 phase=f"chain_{collective}", postdiv=postdiv, root_pos=root)
            for ch, (lo, hi) in enumerate(chans)], chunk_elems)
    else:
        _emit_alltoall(b, rank, n, c, nchannels, chunk_elems, in_place)

    return Schedule(collective=collective, rank=rank, nranks=n, count=c, op=op, root=root,
                    nchannels=nchannels, chunk_elems=chunk_elems, in_place=in_place,
                    send_elems=send_elems, recv_elems=recv_elems, send_offset=send_off,
                    recv_offset=recv_off, sites=norm_sites, steps=tuple(b.steps))


def build_schedules(collective: str, nranks: int, count: int, **kwargs) -> list[Schedule]:
    """:func:`build_schedule` for every rank."""
    return [build_schedule(collective, r, nranks, count, **kwargs) for r in range(nranks)]


def flows(collective: str, nranks: int, algorithm: Algorithm, root: int = 0,
          sites: Sequence[Sequence[int]] | None = None) -> set[tuple[int, int, int]]:
    """(rank, peer, channel) of every queue pair a call of ``collective`` sends data on: what a fabric
    controller needs to know which flows share a link (the pattern does not depend on the size)."""
    count = nranks * algorithm.nchannels * 2
    return {(s.rank, step.send_peer, step.channel)
            for s in build_schedules(collective, nranks, count, root=root, nchannels=algorithm.nchannels,
                                     sites=sites)
            for step in s.steps if step.send_peer is not None}


# --------------------------------------------------------------------------- #
# Simulation
# --------------------------------------------------------------------------- #


def _postdiv(v: np.ndarray, d: int) -> np.ndarray:
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


def _as_inputs(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
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
        value = _postdiv(value, step.postdiv)
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
    arrays = _as_inputs(inputs)
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


def _count_from_inputs(collective: str, arrays: list[np.ndarray]) -> int:
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
    arrays = _as_inputs(inputs)
    count = _count_from_inputs(collective, arrays)
    schedules = build_schedules(collective, len(arrays), count, op=op, root=root,
                                nchannels=nchannels, chunk_elems=chunk_elems, sites=sites,
                                in_place=in_place)
    return run_schedules(schedules, arrays, seed=seed, traffic=traffic)


def expected(collective: str, inputs: Sequence[np.ndarray], op: str = "sum",
             root: int = 0) -> list[np.ndarray | None]:
    """Reference results computed directly with numpy (``None`` = undefined output).

    Reductions accumulate in rank order, like nccl-tests' reference; ``avg``
    is the sum divided by nranks once at the end.
    """
    if collective not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r}; expected one of {COLLECTIVES}")
    if op not in REDUCTION_OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {REDUCTION_OPS}")
    arrays = _as_inputs(inputs)
    n = len(arrays)
    if not 0 <= root < n:
        raise ValueError(f"root {root} out of range for {n} ranks")
    c = _count_from_inputs(collective, arrays)
    if collective in _REDUCING:
        acc = arrays[0].copy()
        for a in arrays[1:]:
            acc = UFUNCS[op](acc, a)
        if op == "avg":
            acc = _postdiv(acc, n)
        if collective == "all_reduce":
            return [acc.copy() for _ in range(n)]
        if collective == "reduce_scatter":
            return [acc[r * c:(r + 1) * c].copy() for r in range(n)]
        return [acc.copy() if r == root else None for r in range(n)]
    if collective == "broadcast":
        return [arrays[root].copy() for _ in range(n)]
    if collective == "all_gather":
        full = np.concatenate(arrays)
        return [full.copy() for _ in range(n)]
    # alltoall: rank r receives block r of every rank, in rank order.
    return [np.concatenate([a[r * c:(r + 1) * c] for a in arrays]) for r in range(n)]


# --------------------------------------------------------------------------- #
# Checking
# --------------------------------------------------------------------------- #

#: Absolute-error floor per float width, nccl-tests' old ``DeltaMaxValue`` (half 1e-2,
#: float 1e-5, double 1e-12), scaled by ``nranks - 1`` as its ``CheckData`` did.
_DELTA_MAX = {2: 1e-2, 4: 1e-5, 8: 1e-12}


def float_tolerance(dtype: np.dtype, nranks: int, op: str | None) -> tuple[int, float]:
    """``(ulps, atol)`` for comparing a reduced float against the reference.

    nccl-tests' checker (``verifiable/verifiable.cu``, used by ``CheckData``
    in ``src/common.cu``) compares bit patterns: two floats of the same sign
    whose integer representations differ by ``d`` are ``d`` ULPs apart, a
    relative error measure.  For order-dependent float reductions it allows
    ``calcSumFloatTolerance(nranks)`` = ``1 + int(coef * nranks**power)`` ULPs
    (``coef, power`` = 1.25, 0.51 for float/double; 0.75, 0.91 for half),
    fitted to observed ring-vs-sequential summation differences.  nccl-tests
    generates inputs whose sums are exact, so it needs that only for avg; we
    accept arbitrary inputs, so every order-dependent op (sum, prod, avg)
    gets it, plus an absolute floor from the older ``DeltaMaxValue`` check
    that covers results near zero after cancellation.  max/min merely select
    an input, so they must be exact.
    """
    dtype = np.dtype(dtype)
    if op in ("max", "min"):
        return 0, 0.0
    n = max(int(nranks), 1)
    coef, power = (0.75, 0.91) if dtype.itemsize == 2 else (1.25, 0.51)
    ulps = 1 + int(coef * n ** power)
    atol = _DELTA_MAX.get(dtype.itemsize, 1e-12) * (n - 1)
    return ulps, atol


def _ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ULPs between same-dtype floats (bit patterns mapped to a monotonic key)."""
    size = a.dtype.itemsize
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[size]
    sign = np.uint64(1 << (8 * size - 1))
    mask = np.uint64((1 << (8 * size)) - 1)

    def key(x: np.ndarray) -> np.ndarray:
        u = np.ascontiguousarray(x).view(uint).astype(np.uint64)
        return np.where(u & sign, (~u) & mask, u | sign)

    ka, kb = key(a), key(b)
    return np.where(ka > kb, ka - kb, kb - ka)


def _wrong_in(got: np.ndarray, want: np.ndarray, op: str | None, nranks: int) -> int:
    if got.shape != want.shape:
        return max(got.size, want.size)
    if got.size == 0:
        return 0
    kind = want.dtype.kind
    if kind == "c":
        real = np.dtype(f"f{want.dtype.itemsize // 2}")
        g = np.ascontiguousarray(got.astype(want.dtype)).view(real).reshape(-1, 2)
        w = np.ascontiguousarray(want).view(real).reshape(-1, 2)
        bad = _wrong_mask_float(g.ravel(), w.ravel(), op, nranks).reshape(-1, 2)
        return int(np.count_nonzero(bad.any(axis=1)))
    if kind == "f":
        return int(np.count_nonzero(_wrong_mask_float(got.astype(want.dtype).ravel(),
                                                      want.ravel(), op, nranks)))
    return int(np.count_nonzero(got != want))  # integers/bools: exact, as nccl-tests


def _wrong_mask_float(got: np.ndarray, want: np.ndarray, op: str | None,
                      nranks: int) -> np.ndarray:
    ulps, atol = float_tolerance(want.dtype, nranks, op)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (got == want) | (np.isnan(got) & np.isnan(want))
        finite = np.isfinite(got) & np.isfinite(want)
        if ulps or atol:
            close = np.abs(got.astype(np.float64) - want.astype(np.float64)) <= atol
            if want.dtype.itemsize in (2, 4, 8):
                close |= _ulp_distance(got, want) <= ulps
            else:  # e.g. longdouble: ULPs via spacing
                close |= np.abs(got - want) <= ulps * np.spacing(np.abs(want))
            ok |= finite & close
    return ~ok


def count_wrong(result: np.ndarray | Sequence[np.ndarray | None],
                expected: np.ndarray | Sequence[np.ndarray | None], *,
                op: str | None = None, nranks: int | None = None) -> int:
    """Number of wrong elements, like nccl-tests' ``#wrong``, summed over ranks.

    ``result``/``expected`` are one array each or per-rank lists (``None``
    entries in ``expected`` are skipped).  Integers must match exactly; floats
    within :func:`float_tolerance` (``nranks`` defaults to the list length,
    ``op=None`` means the lenient order-dependent tolerance).  A shape mismatch
    counts every element as wrong.
    """
    if isinstance(expected, (list, tuple)):
        if not isinstance(result, (list, tuple)) or len(result) != len(expected):
            raise ValueError("result and expected must both be per-rank lists of equal length")
        pairs = list(zip(result, expected))
        n = nranks if nranks is not None else len(expected)
    else:
        pairs = [(result, expected)]
        n = nranks if nranks is not None else 1
    wrong = 0
    for got, want in pairs:
        if want is None:
            continue
        if got is None:
            wrong += np.asarray(want).size
            continue
        wrong += _wrong_in(np.asarray(got), np.asarray(want), op, n)
    return wrong
