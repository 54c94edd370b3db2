"""Unit tests for testbed.collective.schedules: collective schedules proven with the simulator."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from testbed.collective.schedules.builder import build_schedule, build_schedules
from testbed.collective.schedules.checking import count_wrong, expected, float_tolerance
from testbed.collective.schedules.model import COLLECTIVES, DeadlockError, Schedule, ScheduleError, Step, Traffic
from testbed.collective.schedules.simulator import run_schedules, simulate

NRANKS = (1, 2, 3, 4, 8)
CHUNKS = (1 << 20, 64, 3)  # one chunk per step, a few, many


def _chunk(i: int, count: int) -> int:
    """Rotate chunk sizes; for big buffers use an odd 97 instead of 3 to bound runtime."""
    ce = CHUNKS[i % 3]
    return 97 if ce == 3 and count >= 1000 else ce


def _inputs(collective: str, n: int, count: int, dtype, rng) -> list[np.ndarray]:
    size = count * n if collective in ("reduce_scatter", "alltoall") else count
    if np.dtype(dtype).kind == "f":
        # Positive values: no catastrophic cancellation, so reordered float sums
        # stay within a few ULPs (nccl-tests instead crafts exactly summable data).
        return [(rng.random(size) + 0.5).astype(dtype) for _ in range(n)]
    return [rng.integers(-1000, 1000, size).astype(dtype) for _ in range(n)]


def _check(collective, inputs, op, *, root=0, nchannels=1, chunk_elems=1 << 20,
           sites=None, in_place=False, seed=None) -> int:
    got = simulate(collective, inputs, op, root, nchannels, chunk_elems, sites,
                   in_place=in_place, seed=seed)
    return count_wrong(got, expected(collective, inputs, op, root), op=op)


def _renumber(sch: Schedule, keep) -> Schedule:
    """Drop the steps for which keep(step) is False, renumbering indices/deps."""
    kept = [s for s in sch.steps if keep(s)]
    new_index = {s.index: i for i, s in enumerate(kept)}
    steps = tuple(dataclasses.replace(s, index=new_index[s.index],
                                      deps=tuple(new_index[d] for d in s.deps if d in new_index))
                  for s in kept)
    return dataclasses.replace(sch, steps=steps)


def _serialize(sch: Schedule) -> Schedule:
    """Force strictly in-order execution: each step depends on the previous one."""
    steps = tuple(dataclasses.replace(s, deps=(s.index - 1,) if s.index else ())
                  for s in sch.steps)
    return dataclasses.replace(sch, steps=steps)


# --------------------------------------------------------------------------- #
# Correctness matrix
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("n", NRANKS)
@pytest.mark.parametrize("collective", COLLECTIVES)
def test_matrix_simulate_equals_expected(collective, n):
    """Every collective x nchannels x count x (op, dtype) x in/out-of-place, rotating
    chunk size and root, half of them in a random dependency-respecting order."""
    rng = np.random.default_rng(1000 * n + COLLECTIVES.index(collective))
    combos = itertools.product(
        (1, 2),
        sorted({0, 1, max(n - 1, 0), 7, 1000, 1001}),
        [(np.float32, "sum"), (np.float32, "max"), (np.float32, "avg"),
         (np.int32, "sum"), (np.int32, "max")],
        (False, True),
    )
    failures = []
    for i, (nch, count, (dtype, op), in_place) in enumerate(combos):
        inputs = _inputs(collective, n, count, dtype, rng)
        kw = dict(root=(i // 2) % n, nchannels=nch, chunk_elems=_chunk(i // 2, count),
                  in_place=in_place, seed=i if i % 4 < 2 else None)
        wrong = _check(collective, inputs, op, **kw)
        if wrong:
            failures.append((nch, count, np.dtype(dtype).name, op, kw, wrong))
    assert not failures


@pytest.mark.parametrize("collective", COLLECTIVES)
@pytest.mark.parametrize("in_place", [False, True])
def test_other_ops_and_dtypes(collective, in_place):
    rng = np.random.default_rng(7)
    n = 4
    cases = [(np.float64, "prod"), (np.float16, "sum"), (np.int8, "sum"),  # int8 wraps
             (np.uint8, "min"), (np.int64, "avg"), (np.float64, "min"), (np.int32, "prod")]
    for dtype, op in cases:
        inputs = _inputs(collective, n, 37, dtype, rng)
        assert _check(collective, inputs, op, root=2, nchannels=2, chunk_elems=4,
                      in_place=in_place, seed=3) == 0, (dtype, op)


def test_in_place_alltoall_needs_deps_not_luck():
    # In place, block r-k arrives (round k) before it is sent (round n-k).
    rng = np.random.default_rng(3)
    inputs = _inputs("alltoall", 8, 13, np.int32, rng)
    for seed in range(10):
        assert _check("alltoall", inputs, "sum", in_place=True, nchannels=2,
                      chunk_elems=4, seed=seed) == 0


@pytest.mark.parametrize("collective", COLLECTIVES)
def test_program_order_is_sequentially_correct(collective):
    """Executing each rank strictly in list order (a naive executor) works too."""
    rng = np.random.default_rng(5)
    n, count = 4, 50
    for in_place in (False, True):
        inputs = _inputs(collective, n, count, np.int32, rng)
        scheds = [_serialize(s) for s in build_schedules(
            collective, n, count, op="sum", root=1, nchannels=2, chunk_elems=6,
            in_place=in_place)]
        got = run_schedules(scheds, inputs, seed=11)
        assert count_wrong(got, expected(collective, inputs, "sum", 1)) == 0


def test_integer_avg_truncates_toward_zero_like_c():
    inputs = [np.array([-3, 3, 7], np.int32), np.array([2, -2, 0], np.int32)]
    exp = expected("all_reduce", inputs, "avg")
    assert exp[0].tolist() == [0, 0, 3]
    assert count_wrong(simulate("all_reduce", inputs, "avg"), exp) == 0


def test_reduce_output_only_defined_at_root():
    inputs = [np.arange(5, dtype=np.int32) + r for r in range(3)]
    exp = expected("reduce", inputs, "sum", root=1)
    assert exp[0] is None and exp[2] is None
    assert exp[1].tolist() == [3, 6, 9, 12, 15]
    # In place, the non-root buffers must be left untouched.
    got = simulate("reduce", inputs, "sum", root=1, in_place=True, nchannels=2, chunk_elems=2)
    assert got[0].tolist() == inputs[0].tolist() and got[2].tolist() == inputs[2].tolist()


# --------------------------------------------------------------------------- #
# Hierarchical all_reduce
# --------------------------------------------------------------------------- #

SITES = {
    "2x4": [[0, 1, 2, 3], [4, 5, 6, 7]],
    "3x2": [[0, 1], [2, 3], [4, 5]],
    "3x3": [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
    "unequal": [[0, 1, 2], [3, 4], [5, 6, 7]],
    "interleaved": [[0, 4], [1, 5, 6], [2], [3, 7]],
    "one-site": [[2, 0, 3, 1]],
}


@pytest.mark.parametrize("name", list(SITES))
def test_hierarchical_all_reduce(name):
    sites = SITES[name]
    n = sum(len(s) for s in sites)
    rng = np.random.default_rng(n)
    combos = itertools.product((1, 2), (0, 1, n - 1, 7, 1000, 1001),
                               [(np.float32, "sum"), (np.float32, "avg"), (np.int32, "max")])
    for i, (nch, count, (dtype, op)) in enumerate(combos):
        inputs = _inputs("all_reduce", n, count, dtype, rng)
        assert _check("all_reduce", inputs, op, nchannels=nch, chunk_elems=_chunk(i, count),
                      sites=sites, in_place=bool(i % 2), seed=i) == 0, (nch, count, op)


def test_hierarchical_two_sites_send_one_local_shard_across_dci():
    sites = SITES["2x4"]
    count, itemsize = 1000, 4
    inputs = [np.full(count, r, np.float32) for r in range(8)]
    for nch, ce in ((1, 1 << 20), (2, 16)):
        hier, flat = Traffic(), Traffic()
        simulate("all_reduce", inputs, nchannels=nch, chunk_elems=ce, sites=sites, traffic=hier)
        simulate("all_reduce", inputs, nchannels=nch, chunk_elems=ce, traffic=flat)
        per_rank = hier.cross_group_bytes(sites)
        # Exactly 1/local_size of the data per rank crosses the DCI.
        assert per_rank == {r: count // 4 * itemsize for r in range(8)}
        # A flat ring pushes 2(N-1)/N of the data through each site-boundary rank.
        flat_per_rank = flat.cross_group_bytes(sites)
        assert flat_per_rank[3] == flat_per_rank[7] == 2 * 7 * count // 8 * itemsize
        assert sum(per_rank.values()) < sum(flat_per_rank.values())


def test_hierarchical_three_sites_dci_volume_formula():
    sites = SITES["3x2"]
    count, local, nsites = 1200, 2, 3
    tr = Traffic()
    simulate("all_reduce", [np.ones(count, np.float64)] * 6, sites=sites, nchannels=2,
             chunk_elems=50, traffic=tr)
    shard = count // local
    want = 2 * (nsites - 1) * shard // nsites * 8  # ring all-reduce of one shard over S sites
    assert tr.cross_group_bytes(sites) == {r: want for r in range(6)}


def test_hierarchical_validation():
    with pytest.raises(ValueError, match="partition"):
        build_schedule("all_reduce", 0, 4, 10, sites=[[0, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="partition"):
        build_schedule("all_reduce", 0, 4, 10, sites=[[0, 1], [2]])
    with pytest.raises(ValueError, match="non-empty"):
        build_schedule("all_reduce", 0, 2, 10, sites=[[0, 1], []])
    with pytest.raises(ValueError, match="only applies"):
        build_schedule("broadcast", 0, 2, 10, sites=[[0], [1]])


# --------------------------------------------------------------------------- #
# Step structure
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("n", (2, 3, 4, 8))
@pytest.mark.parametrize("nch", (1, 2))
def test_ring_step_counts(n, nch):
    count = 64 * n * nch
    for rank in range(n):
        ar = build_schedule("all_reduce", rank, n, count, nchannels=nch, chunk_elems=1 << 20)
        rs = build_schedule("reduce_scatter", rank, n, count, nchannels=nch, chunk_elems=1 << 20)
        ag = build_schedule("all_gather", rank, n, count, nchannels=nch, chunk_elems=1 << 20)
        a2a = build_schedule("alltoall", rank, n, count, nchannels=nch, chunk_elems=1 << 20)
        for ch in range(nch):
            assert len(ar.sends(ch)) == 2 * (n - 1)
            assert len(rs.sends(ch)) == n - 1
            assert len(ag.sends(ch)) == n - 1
            assert len(a2a.sends(ch)) == n - 1
            assert [s.kind for s in ar.steps if s.channel == ch] == (
                ["send"] + ["recvReduceSend"] * (n - 2) + ["recvReduceCopySend"]
                + ["recvCopySend"] * (n - 2) + ["recv"])
        # Chunking multiplies the transfers: 64*n*nch / (nch*n) = 64 elems per slice.
        chunked = build_schedule("all_reduce", rank, n, count, nchannels=nch, chunk_elems=16)
        assert len(chunked.sends()) == 4 * 2 * (n - 1) * nch
        assert all(s.nelems <= 16 for s in chunked.steps)


def test_ring_order_matches_nccl_runring():
    # Rank at ring index i starts with slice i-1 and finalises slice i.
    n, count = 4, 40
    sch = build_schedule("all_reduce", 2, n, count)
    slices = [s.src.lo // 10 if s.src is not None else s.dst.lo // 10 for s in sch.steps]
    assert slices == [1, 0, 3, 2, 1, 0, 3]
    assert all(s.send_peer in (None, 3) and s.recv_peer in (None, 1) for s in sch.steps)


def test_deps_allow_pipelining_across_chunks():
    n = 4
    sch = build_schedule("all_reduce", 0, n, 4 * 40, chunk_elems=10)  # 4 chunks per slice
    steps_per_chunk = 2 * n - 1
    # The first send of every chunk iteration depends on nothing: chunk k+1 can go
    # out before chunk k of the next ring step has arrived.
    for k in range(4):
        assert sch.steps[k * steps_per_chunk].kind == "send"
        assert sch.steps[k * steps_per_chunk].deps == ()
    # In place, the all-gather write of the slice first sent raw must wait for that send.
    sch = build_schedule("all_reduce", 0, n, 40, in_place=True)
    first_send = sch.steps[0]
    overwrite = next(s for s in sch.steps if s.dst is not None and s.dst.lo == first_send.src.lo)
    assert 0 in overwrite.deps
    # The final-reduce step reads what nothing wrote before: no deps out of place.
    sch = build_schedule("all_reduce", 0, n, 40)
    assert all(s.deps == () for s in sch.steps)


def test_uneven_and_tiny_counts_produce_consistent_steps():
    for count in (0, 1, 3, 7):
        scheds = build_schedules("all_reduce", 8, count, nchannels=2, chunk_elems=2)
        assert all(s.nelems > 0 for sch in scheds for s in sch.steps)
        if count == 0:
            assert all(not sch.steps for sch in scheds)


# --------------------------------------------------------------------------- #
# Broken schedules are caught
# --------------------------------------------------------------------------- #


def _ar_setup(n=4, count=40):
    rng = np.random.default_rng(0)
    inputs = _inputs("all_reduce", n, count, np.int32, rng)
    return inputs, build_schedules("all_reduce", n, count, chunk_elems=5)


def test_dropped_send_is_a_deadlock():
    inputs, scheds = _ar_setup()
    victim = next(s for s in scheds[1].steps if s.kind == "send")
    scheds[1] = _renumber(scheds[1], lambda s: s is not victim)
    with pytest.raises(DeadlockError, match="deadlock"):
        run_schedules(scheds, inputs)


def test_dropped_receive_is_caught():
    inputs, scheds = _ar_setup()
    victim = [s for s in scheds[2].steps if s.kind == "recv"][-1]
    scheds[2] = _renumber(scheds[2], lambda s: s is not victim)
    with pytest.raises(ScheduleError, match="never received"):
        run_schedules(scheds, inputs)


def test_dropped_reduction_is_counted_wrong():
    inputs, scheds = _ar_setup()
    steps = list(scheds[0].steps)
    i = next(i for i, s in enumerate(steps) if s.kind == "recvReduceCopySend")
    steps[i] = dataclasses.replace(steps[i], src=None)  # forget to add own contribution
    scheds[0] = dataclasses.replace(scheds[0], steps=tuple(steps))
    got = run_schedules(scheds, inputs)
    wrong = count_wrong(got, expected("all_reduce", inputs))
    assert wrong == 4 * steps[i].nelems  # the bad chunk propagates to all 4 ranks


def test_dropped_local_copy_is_counted_wrong():
    rng = np.random.default_rng(0)
    inputs = _inputs("all_gather", 3, 9, np.float32, rng)
    scheds = build_schedules("all_gather", 3, 9)
    scheds[1] = _renumber(scheds[1], lambda s: s.kind != "copySend")
    with pytest.raises(DeadlockError):  # copySend also carried the send
        run_schedules(scheds, inputs)
    # n == 1: the copy is the whole algorithm; dropping it leaves poison behind.
    sch = _renumber(build_schedule("all_gather", 0, 1, 9), lambda s: False)
    got = run_schedules([sch], inputs[:1])
    assert count_wrong(got, expected("all_gather", inputs[:1])) == 9


def test_mismatched_chunk_is_caught():
    inputs, scheds = _ar_setup()
    steps = list(scheds[3].steps)
    s0 = steps[0]
    steps[0] = dataclasses.replace(s0, src=dataclasses.replace(s0.src, hi=s0.src.hi - 1))
    scheds[3] = dataclasses.replace(scheds[3], steps=tuple(steps))
    with pytest.raises(ScheduleError, match="expected"):
        run_schedules(scheds, inputs)


def test_step_and_schedule_validation():
    with pytest.raises(ValueError):
        Step(index=0, channel=0, send_peer=1)  # nothing to send
    with pytest.raises(ValueError):
        Step(index=1, channel=0, recv_peer=0, dst=None, send_peer=None)
    with pytest.raises(ValueError, match="earlier"):
        from testbed.collective.schedules.model import Region
        Step(index=1, channel=0, src=Region("send", 0, 1), send_peer=0, deps=(1,))
    with pytest.raises(ValueError, match="collective"):
        build_schedule("allreduce", 0, 2, 4)
    with pytest.raises(ValueError, match="op"):
        build_schedule("all_reduce", 0, 2, 4, op="xor")
    with pytest.raises(ValueError, match="root"):
        build_schedule("broadcast", 0, 2, 4, root=2)
    with pytest.raises(ValueError, match="multiple"):
        simulate("reduce_scatter", [np.zeros(5)] * 2)


# --------------------------------------------------------------------------- #
# count_wrong
# --------------------------------------------------------------------------- #


def test_count_wrong_integers_exact():
    a = np.arange(10, dtype=np.int32)
    b = a.copy()
    b[[2, 5]] += 1
    assert count_wrong(a, a) == 0
    assert count_wrong(b, a) == 2
    assert count_wrong([a, b, None], [a, a, None]) == 2
    assert count_wrong(a[:5], a) == 10  # shape mismatch: everything wrong


def test_count_wrong_float_tolerance_in_ulps():
    want = np.array([1.0, 1000.0, 1e-3, 0.0, np.nan, np.inf], np.float32)
    ulps, atol = float_tolerance(np.float32, 8, "sum")
    assert ulps == 1 + int(1.25 * 8 ** 0.51) and atol == pytest.approx(7e-5)
    near = want.copy()
    near[:3] = [np.nextafter(np.float32(x), np.float32(np.inf)) for x in want[:3]]
    assert count_wrong(near, want, op="sum", nranks=8) == 0
    assert count_wrong(near, want, op="max", nranks=8) == 3  # selections must be exact
    far = want.copy()
    far[1] = 1000.5  # ~4096 ULPs and >> atol
    far[4] = 1.0     # NaN expected
    far[5] = 3e38    # inf expected
    assert count_wrong(far, want, op="sum", nranks=8) == 3
    # Absolute floor handles results near zero.
    assert count_wrong(np.array([1e-6], np.float32), np.array([0.0], np.float32),
                       op="sum", nranks=8) == 0


def test_count_wrong_detects_half_and_complex():
    want = np.linspace(1, 2, 16).astype(np.float16)
    assert count_wrong(want * np.float16(1.5), want, op="sum", nranks=4) == 16
    z = np.array([1 + 1j, 2 - 1j], np.complex64)
    assert count_wrong(z, z) == 0
    assert count_wrong(z + np.complex64(1j), z) == 2
