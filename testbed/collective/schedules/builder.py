"""Collective schedules (NCCL-style ring algorithms): building each rank's steps.

This module is the *pure-logic* layer under the testbed's collective runner:
for a collective and a rank it produces the ordered list of :class:`Step` s that
rank executes over a message transport offering ``send(peer, array)`` /
``recv(peer) -> array`` with reliable, in-order delivery per
``(src, dst, channel)`` queue pair.

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
tags.  :func:`testbed.collective.schedules.simulator.run_schedules` executes in a random
dependency-respecting order when given a ``seed`` to check the deps are sufficient.
"""

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from testbed.collective.schedules.model import (
    COLLECTIVES,
    DEFAULT_CHUNK_ELEMS,
    REDUCING,
    REDUCTION_OPS,
    Algorithm,
    BufName,
    Region,
    Schedule,
    Step,
)


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
    postdiv = n if (op == "avg" and collective in REDUCING) else 1
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
