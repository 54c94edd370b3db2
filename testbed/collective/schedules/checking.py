"""Result checking: reference results computed directly with numpy (:func:`expected`), with
:func:`count_wrong` mimicking nccl-tests' ``#wrong`` column.
"""

from collections.abc import Sequence

import numpy as np

from testbed.collective.schedules.model import COLLECTIVES, REDUCING, REDUCTION_OPS, UFUNCS
from testbed.collective.schedules.steps import as_inputs, count_from_inputs, postdiv


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
    arrays = as_inputs(inputs)
    n = len(arrays)
    if not 0 <= root < n:
        raise ValueError(f"root {root} out of range for {n} ranks")
    c = count_from_inputs(collective, arrays)
    if collective in REDUCING:
        acc = arrays[0].copy()
        for a in arrays[1:]:
            acc = UFUNCS[op](acc, a)
        if op == "avg":
            acc = postdiv(acc, n)
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


def rank_input(rank: int, count: int, dtype: np.dtype, seed: int) -> np.ndarray:
    """Rank ``rank``'s input: small positive values (exact sums for integers, no cancellation for floats);
    every rank can make every other rank's, to know the expected result without exchanging it."""
    rng = np.random.default_rng([seed, rank])
    return rng.integers(1, 8, count).astype(dtype)
