"""The command line and text report of NVIDIA's nccl-tests, for collectives run between emulated hosts.

People read collective benchmarks in the shape nccl-tests prints (https://github.com/NVIDIA/nccl-tests), and
their scripts parse that shape, so the testbed's collectives take the same options and print the same report.
Everything here is pure logic: option parsing, the size sweep, the per-collective element counts, the
bandwidth arithmetic, and the text, CSV and Parquet renderings of a run.

The text is the classic layout of ``src/common.cu`` (``run``, ``TimeTest``, ``BenchTime``), the one almost
every published log shows.  In 2025 nccl-tests moved printing into ``src/util.cu``: the header then also
prints a version line and ``unalign: 0``, the column header has two spaces before ``#wrong``, time and
bandwidths get an adaptive width (``getFloatStr``) and ``#wrong`` is ``%6g``; we keep the classic text.
Element counts follow the current ``*GetCollByteCount`` functions, which round each rank's chunk of
all_gather, reduce_scatter and alltoall down to 16 bytes (older releases rounded to 4 elements).

A GPU in nccl-tests is a rank on an emulated host here: ``-t``/``-g`` accept only 1 and the device list
prints each rank's host, IP address and site where nccl-tests prints the PCI bus id and GPU name.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from testbed.collective.schedules.model import COLLECTIVES, REDUCTION_OPS

ROOTED = frozenset({"broadcast", "reduce"})
REDUCING = frozenset({"all_reduce", "reduce_scatter", "reduce"})
# test_opnames in src/common.cu, without "mulsum" (ncclRedOpCreatePreMulSum has no emulated counterpart).
OPS = REDUCTION_OPS
NO_OP = "none"  # the redop column of all_gather, broadcast and alltoall (their RunTest passes "none")
NO_ROOT = -1    # the root column of collectives without a root (their RunTest passes root -1)
CHUNK_ALIGN_BYTES = 16  # `(count/nranks) & -(16/eltSize)` in AllGather/ReduceScatter/AlltoAllGetCollByteCount


@dataclass(frozen=True)
class Datatype:
    """One entry of test_typenames (src/common.cu) with its wordSize() (src/common.h)."""

    name: str  # as nccl-tests spells it in -d and prints it in the type column
    size: int  # bytes per element
    numpy: str | None  # numpy dtype that holds it; None when numpy has none


DATATYPES = {d.name: d for d in (
    Datatype("int8", 1, "int8"), Datatype("uint8", 1, "uint8"),
    Datatype("int32", 4, "int32"), Datatype("uint32", 4, "uint32"),
    Datatype("int64", 8, "int64"), Datatype("uint64", 8, "uint64"),
    Datatype("half", 2, "float16"), Datatype("float", 4, "float32"), Datatype("double", 8, "float64"),
    Datatype("bfloat16", 2, None),
)}
# NCCL's own enum aliases (ncclFloat16/32/64); nccl-tests itself accepts only the names above.
DATATYPE_ALIASES = {"float16": "half", "float32": "float", "float64": "double"}


def datatype(name: str) -> Datatype:
    """The datatype nccl-tests calls ``name`` (or one of NCCL's float16/float32/float64 aliases)."""
    canonical = DATATYPE_ALIASES.get(name, name)
    if canonical not in DATATYPES:
        raise ValueError(f"unknown datatype {name!r} (known: {', '.join([*DATATYPES, *DATATYPE_ALIASES])})")
    return DATATYPES[canonical]


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype the emulated ranks compute ``name`` in."""
    entry = datatype(name)
    if entry.numpy is None:
        raise ValueError(f"datatype {entry.name} has no numpy dtype")
    return np.dtype(entry.numpy)


def _check_collective(collective: str) -> None:
    if collective not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r} (known: {', '.join(COLLECTIVES)})")


# --- sizes ----------------------------------------------------------------------------------------------

_SIZE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(\S?)")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parsesize(text: str) -> int:
    """Bytes meant by ``text``, as parsesize() in src/common.cu reads -b, -e and -i.

    Like its ``sscanf("%lf %1s")`` a number may be fractional ("1.5K") and only the first character after
    it counts as the unit, so "1KB" is 1024; the product is truncated to whole bytes.
    """
    match = _SIZE.match(text)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: want a number of bytes with an optional K, M or G suffix")
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not math.isfinite(size):  # "1e400" reads as inf, which no int holds
        raise ValueError(f"invalid size {text!r}: must be a finite number of bytes")
    if size < 0:
        raise ValueError(f"invalid size {text!r}: must not be negative")
    return int(size)


def _stall_reason(minbytes: int, maxbytes: int, stepfactor: int, stepbytes: int) -> str | None:
    """Why the sweep would never end (nccl-tests then loops forever), or None."""
    if minbytes > maxbytes:
        return None  # nothing to visit
    if stepfactor > 1 and minbytes == 0:
        return f"minbytes 0 never grows by stepfactor {stepfactor}: start at 1 byte or more"
    if stepfactor <= 1 and stepbytes == 0:
        return "stepbytes 0 never advances the sizes: give -i > 0 or -f > 1"
    return None


# sizes one sweep may visit: each is measured out of place and in place, a second or more each under TCG, so
# a thousand take over half an hour; nccl-tests' widest usual sweep (-b 8 -e 8G -f 2) is 31
MAX_SIZES = 1000


def sweep_length(minbytes: int, maxbytes: int, stepfactor: int, stepbytes: int) -> int:
    """How many sizes ``sizes`` visits, counted without listing them (``-b 1 -e 1G -f 1 -i 1`` is a billion);
    the sweep must not stall (``_stall_reason``)."""
    if minbytes > maxbytes:
        return 0
    if stepfactor <= 1:
        return (maxbytes - minbytes) // stepbytes + 1
    count, size = 0, minbytes
    while size <= maxbytes:  # at most log2(maxbytes) + 1 steps
        count, size = count + 1, size * stepfactor
    return count


def sizes(minbytes: int, maxbytes: int, stepfactor: int, stepbytes: int) -> list[int]:
    """The sizes a run visits: the loop in TimeTest (src/common.cu).

    Sizes grow by ``stepfactor`` when it is above 1, else by ``stepbytes``, and stop once past maxbytes.
    These are the requested sizes; ``coll_counts`` turns each into what is actually moved and printed.
    """
    reason = _stall_reason(minbytes, maxbytes, stepfactor, stepbytes)
    if reason is not None:
        raise ValueError(reason)
    visited = []
    size = minbytes
    while size <= maxbytes:
        visited.append(size)
        size = size * stepfactor if stepfactor > 1 else size + stepbytes
    return visited


@dataclass(frozen=True)
class CollCounts:
    """Element counts of one collective call, as the *GetCollByteCount functions (src/<coll>.cu) set them."""

    send_count: int  # elements each rank sends
    recv_count: int  # elements each rank receives
    param_count: int  # the count argument of the NCCL call; printed in the count column
    send_inplace_offset: int  # in-place: where rank r's send data sits in its receive buffer, times r
    recv_inplace_offset: int  # in-place: where rank r's result sits in its receive buffer, times r
    element_size: int  # bytes per element

    @property
    def size_bytes(self) -> int:
        """The size column: max(sendBytes, expectedBytes) in TimeTest, also the S of algbw = S/t."""
        return max(self.send_count, self.recv_count) * self.element_size


def _aligned_chunk(count: int, nranks: int, element_size: int) -> int:
    """Each rank's share of ``count`` elements, rounded down to whole 16-byte chunks."""
    align = max(1, CHUNK_ALIGN_BYTES // element_size)
    return count // nranks // align * align


def coll_counts(collective: str, size_bytes: int, dtype: str, nranks: int) -> CollCounts:
    """What ``collective`` moves for a requested size: setupArgs (src/common.cu) + <Coll>GetCollByteCount.

    The requested size becomes ``size / wordSize`` elements.  all_reduce, broadcast and reduce move them
    all; all_gather and reduce_scatter split them into one 16-byte-aligned chunk per rank, and alltoall
    sends one such chunk to every rank, so their printed size can fall below the requested one.
    """
    _check_collective(collective)
    if nranks < 1:
        raise ValueError(f"nranks {nranks} must be >= 1")
    element_size = datatype(dtype).size
    count = size_bytes // element_size
    if collective in ("all_reduce", "broadcast", "reduce"):
        return CollCounts(count, count, count, 0, 0, element_size)
    chunk = _aligned_chunk(count, nranks, element_size)
    if collective == "all_gather":
        return CollCounts(chunk, chunk * nranks, chunk, chunk, 0, element_size)
    if collective == "reduce_scatter":
        return CollCounts(chunk * nranks, chunk, chunk, 0, chunk, element_size)
    return CollCounts(chunk * nranks, chunk * nranks, chunk, 0, 0, element_size)  # alltoall


# --- bandwidth ------------------------------------------------------------------------------------------

def bus_factor(collective: str, nranks: int) -> float:
    """busbw / algbw for ``collective`` on ``nranks`` ranks: the factors of <Coll>GetBw and doc/PERFORMANCE.md.

    all_reduce moves every byte 2(n-1)/n times over the busiest link; reduce_scatter, all_gather and alltoall
    (n-1)/n times; broadcast and reduce are bound by the root's one link, factor 1.  AllReduceGetBw's
    NVLS factor (n-1)/(n+1) is for in-network reduction, which emulated hosts do not have.
    """
    _check_collective(collective)
    if nranks < 1:
        raise ValueError(f"nranks {nranks} must be >= 1")
    if collective == "all_reduce":
        return 2 * (nranks - 1) / nranks
    if collective in ("reduce_scatter", "all_gather", "alltoall"):
        return (nranks - 1) / nranks
    return 1.0


def algorithm_bandwidth(size_bytes: int, time_us: float) -> float:
    """algbw in GB/s (1e9 bytes per second): ``baseBw = bytes / 1.0E9 / sec`` in every <Coll>GetBw."""
    if time_us <= 0:
        raise ValueError(f"time {time_us} us must be > 0")
    return size_bytes / 1.0e9 / (time_us / 1.0e6)


def bus_bandwidth(collective: str, nranks: int, algbw_gbps: float) -> float:
    """busbw in GB/s: algbw times the collective's bus factor (doc/PERFORMANCE.md)."""
    return algbw_gbps * bus_factor(collective, nranks)


# --- options --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    """One run's settings, named and defaulted like the static globals at the top of src/common.cu."""

    collective: str
    minbytes: int = 32 * 1024 * 1024
    maxbytes: int = 32 * 1024 * 1024
    stepbytes: int = 1024 * 1024
    stepfactor: int = 1  # above 1 it replaces stepbytes
    iters: int = 20
    warmup_iters: int = 5
    agg_iters: int = 1
    check: int = 1  # validation iterations; 0 prints N/A in #wrong
    op: str = "sum"  # or "all"
    dtype: str = "float"  # nccl-tests' name, or "all"
    root: int = 0  # -1 runs every rank as root in turn (Broadcast/ReduceRunTest)

    @property
    def sizes(self) -> list[int]:
        """The requested sizes of the sweep, smallest first."""
        return sizes(self.minbytes, self.maxbytes, self.stepfactor, self.stepbytes)

    @property
    def ops(self) -> tuple[str, ...]:
        """redop values to run, in order: "none" for collectives that do not reduce, all OPS for "all"."""
        if self.collective not in REDUCING:
            return (NO_OP,)
        return OPS if self.op == "all" else (self.op,)

    @property
    def dtypes(self) -> tuple[str, ...]:
        """Datatypes to run, in order; "all" is every one numpy holds, as a build without bfloat16 runs."""
        if self.dtype == "all":
            return tuple(d.name for d in DATATYPES.values() if d.numpy is not None)
        return (self.dtype,)

    def measurements(self, nranks: int) -> int:
        """Rows the sweep prints: one per size, datatype, op and root (each measured out of and in place)."""
        return len(self.sizes) * len(self.dtypes) * len(self.ops) * len(self.roots(nranks))

    def roots(self, nranks: int) -> tuple[int, ...]:
        """Root column values to run: -1 without a root, every rank for root -1, else the root given."""
        if self.collective not in ROOTED:
            return (NO_ROOT,)
        return tuple(range(nranks)) if self.root == NO_ROOT else (self.root,)


def _size_arg(text: str) -> int:
    """-b, -e and -i; recent nccl-tests read -i with parsesize too (older ones with strtol, no suffix)."""
    try:
        return parsesize(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _whole_number(minimum: int):
    """An argparse type accepting integers >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value
    return parse


def _only_one(text: str) -> int:
    """-t and -g: kept so nccl-tests command lines (which often say -g 1) work unchanged."""
    if text.strip() != "1":
        raise argparse.ArgumentTypeError(f"only 1 is supported (one rank per emulated process), got {text!r}")
    return 1


def _dtype_arg(text: str) -> str:
    """-d as nccl-tests' canonical name, refusing types the emulated ranks cannot compute in."""
    if text == "all":
        return text
    try:
        entry = datatype(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if entry.numpy is None:
        raise argparse.ArgumentTypeError(f"datatype {entry.name} is not supported: numpy has no such type")
    return entry.name


def _parser(collective: str) -> argparse.ArgumentParser:
    """getopt_long's table in main() of src/common.cu, for the options that mean something here."""
    defaults = Options(collective)
    parser = argparse.ArgumentParser(prog=f"{collective}_perf",
                                     description=f"{collective} between emulated hosts, reported as nccl-tests")
    parser.add_argument("-t", "--nthreads", type=_only_one, default=1, help="threads per process (1)")
    parser.add_argument("-g", "--ngpus", type=_only_one, default=1, help="GPUs per thread (1)")
    parser.add_argument("-b", "--minbytes", type=_size_arg, default=defaults.minbytes,
                        help="min size in bytes, K/M/G suffix allowed (32M)")
    parser.add_argument("-e", "--maxbytes", type=_size_arg, default=defaults.maxbytes,
                        help="max size in bytes (32M)")
    parser.add_argument("-i", "--stepbytes", type=_size_arg, default=defaults.stepbytes,
                        help="increment size (1M)")
    parser.add_argument("-f", "--stepfactor", type=_whole_number(0), default=defaults.stepfactor,
                        help="increment factor; above 1 it replaces -i (disabled)")
    parser.add_argument("-n", "--iters", type=_whole_number(1), default=defaults.iters,
                        help="iteration count (20)")
    parser.add_argument("-m", "--agg_iters", type=_whole_number(1), default=defaults.agg_iters,
                        help="aggregated iteration count (1)")
    parser.add_argument("-w", "--warmup_iters", type=_whole_number(0), default=defaults.warmup_iters,
                        help="warmup iteration count (5)")
    parser.add_argument("-c", "--check", type=_whole_number(0), default=defaults.check,
                        help="check iteration count (1)")
    parser.add_argument("-o", "--op", choices=(*OPS, "all"), default=defaults.op,
                        help="reduction operation (sum)")
    parser.add_argument("-d", "--datatype", type=_dtype_arg, default=defaults.dtype,
                        help="nccltype or all (float)")
    parser.add_argument("-r", "--root", type=_whole_number(NO_ROOT), default=defaults.root,
                        help="root rank, -1 for every rank in turn (0)")
    return parser


def parse_args(collective: str, argv: Sequence[str], nranks: int | None = None) -> Options:
    """Options from an nccl-tests command line; a bad one exits 2 with one ``error:`` line (argparse).

    nccl-tests itself falls back to float or sum on an unknown -d or -o and hangs on a sweep that never
    grows; here both are errors.  Given ``nranks``, the root of broadcast and reduce is checked too.
    """
    _check_collective(collective)
    parser = _parser(collective)
    args = parser.parse_args(list(argv))
    if args.minbytes > args.maxbytes:  # nccl-tests' own message for this case
        parser.error(f"invalid sizes for 'minbytes' and 'maxbytes': {args.minbytes} > {args.maxbytes}")
    reason = _stall_reason(args.minbytes, args.maxbytes, args.stepfactor, args.stepbytes)
    if reason is not None:
        parser.error(reason)
    count = sweep_length(args.minbytes, args.maxbytes, args.stepfactor, args.stepbytes)
    if count > MAX_SIZES:
        parser.error(f"the sweep visits {count} sizes, at most {MAX_SIZES}: raise -i or -f, or narrow -b to -e")
    if nranks is not None and collective in ROOTED and args.root >= nranks:
        parser.error(f"root {args.root} is out of range for {nranks} ranks (0..{nranks - 1}, or -1 for all)")
    return Options(collective=collective, minbytes=args.minbytes, maxbytes=args.maxbytes,
                   stepbytes=args.stepbytes, stepfactor=args.stepfactor, iters=args.iters,
                   warmup_iters=args.warmup_iters, agg_iters=args.agg_iters, check=args.check, op=args.op,
                   dtype=args.datatype, root=args.root)


# --- report ---------------------------------------------------------------------------------------------

class RankInfo(NamedTuple):
    """One rank of the run; a plain (rank, host, ip, site) tuple will do."""

    rank: int
    host: str
    ip: str
    site: str
    pid: int = 0  # the rank's process id, where the caller knows it


@dataclass(frozen=True)
class Measurement:
    """One half of a row: the out-of-place or the in-place run of one size."""

    time_us: float
    algbw_gbps: float
    busbw_gbps: float
    wrong: int | None  # wrong elements; None prints N/A (validation off, or in-place alltoall)


@dataclass(frozen=True)
class Result:
    """One printed row: TimeTest's preamble and BenchTime's two measurements (src/common.cu)."""

    size_bytes: int
    count: int
    dtype: str
    redop: str
    root: int
    out_of_place: Measurement
    in_place: Measurement

    @property
    def wrong_elements(self) -> int:
        """Wrong elements counted out of place and in place (N/A counts as 0)."""
        return (self.out_of_place.wrong or 0) + (self.in_place.wrong or 0)


def wrong_is_reported(collective: str, in_place: bool, check: int) -> bool:
    """Whether #wrong shows a count (``args->reportErrors``) rather than N/A.

    It is ``datacheck`` (-c), except that AlltoAllInitData clears it for the in-place run, which
    nccl-tests does not verify.
    """
    return check > 0 and not (collective == "alltoall" and in_place)


def measure(collective: str, nranks: int, size_bytes: int, time_us: float, wrong: int | None) -> Measurement:
    """A measurement of ``size_bytes`` (CollCounts.size_bytes) in ``time_us``, with both bandwidths."""
    algbw = algorithm_bandwidth(size_bytes, time_us)
    return Measurement(time_us, algbw, bus_bandwidth(collective, nranks, algbw), wrong)


def _rank_lines(ranks: Iterable[Sequence]) -> list[str]:
    """nccl-tests' device lines with the GPU's PCI id and name replaced by the rank's IP and site.

    The device column is the rank's ordinal on its host, as cudaDev is the GPU's on its node; Group is the
    NCCL_TESTS_SPLIT_MASK colour, always 0 here.
    """
    lines = []
    ranks_seen_per_host: dict[str, int] = {}
    for entry in ranks:
        info = RankInfo(*entry)
        device = ranks_seen_per_host.get(info.host, 0)
        ranks_seen_per_host[info.host] = device + 1
        lines.append("#  Rank %2d Group %2d Pid %6d on %10s device %2d [%s] %s"
                     % (info.rank, 0, info.pid, info.host, device, info.ip, info.site))
    return lines


def header_lines(options: Options, ranks: Iterable[Sequence]) -> list[str]:
    """The run header of run() in src/common.cu: settings, then one line per rank."""
    factor_steps = options.stepfactor > 1
    step = options.stepfactor if factor_steps else options.stepbytes
    settings = ("# nThread 1 nGpus 1 minBytes %d maxBytes %d step: %d(%s) warmup iters: %d iters: %d "
                "agg iters: %d validation: %d graph: %d"
                % (options.minbytes, options.maxbytes, step, "factor" if factor_steps else "bytes",
                   options.warmup_iters, options.iters, options.agg_iters, options.check, 0))
    return [settings, "#", "# Using devices", *_rank_lines(ranks)]


def column_header_lines() -> list[str]:
    """The "#" line and the three column-title lines run() prints before the rows (trailing blanks kept)."""
    blank = ("",) * 5
    return [
        "#",
        "# %10s  %12s  %8s  %6s  %6s           out-of-place                       in-place          " % blank,
        "# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s %6s  %7s  %6s  %6s %6s"
        % ("size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong",
           "time", "algbw", "busbw", "#wrong"),
        "# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s  %5s  %7s  %6s  %6s  %5s"
        % ("(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", ""),
    ]


def format_time(time_us: float) -> str:
    """BenchTime's timeStr: fewer decimals as the time grows, so it stays 7 characters up to 10 s."""
    if time_us >= 10000.0:
        return "%7.0f" % time_us
    if time_us >= 100.0:
        return "%7.1f" % time_us
    return "%7.2f" % time_us


def _format_measurement(measurement: Measurement) -> str:
    """BenchTime's PRINT: #wrong is ``%5g`` of a double (so 1e6 and up print as 1e+06), or N/A."""
    wrong = "%5s" % "N/A" if measurement.wrong is None else "%5g" % float(measurement.wrong)
    return "  %7s  %6.2f  %6.2f  %s" % (format_time(measurement.time_us), measurement.algbw_gbps,
                                        measurement.busbw_gbps, wrong)


def format_row(result: Result) -> str:
    """One row: TimeTest's ``%12li  %12li  %8s  %6s  %6s`` preamble (root as ``%6i``), then both halves."""
    preamble = "%12li  %12li  %8s  %6s  %6s" % (result.size_bytes, result.count, result.dtype, result.redop,
                                                "%6i" % result.root)
    return preamble + _format_measurement(result.out_of_place) + _format_measurement(result.in_place)


def average_bus_bandwidth(results: Sequence[Result]) -> float:
    """run()'s ``bw[0] / bw_count[0]``: the mean busbw over every out-of-place and in-place measurement."""
    busbws = [m.busbw_gbps for r in results for m in (r.out_of_place, r.in_place)]
    return sum(busbws) / len(busbws) if busbws else math.nan


def footer_lines(results: Sequence[Result], out_of_bounds: int) -> list[str]:
    """The summary run() prints after the rows.

    ``out_of_bounds`` is nccl-tests' errors[0]: how many (rank process, measurement) pairs saw wrong data.
    The average is ``%g`` followed by a space, where nccl-tests would put OK/FAILED against
    NCCL_TESTS_MIN_BW (unset here); the final empty line is its ``ncclGetLastError`` line.  With no rows
    nccl-tests divides 0 by 0 and glibc prints "-nan".
    """
    average = average_bus_bandwidth(results)
    average_text = "-nan" if math.isnan(average) else "%g" % average
    return ["# Out of bounds values : %d %s" % (out_of_bounds, "FAILED" if out_of_bounds else "OK"),
            "# Avg bus bandwidth    : %s " % average_text,
            "#",
            ""]


def _parse_measurement(fields: Sequence[str]) -> Measurement:
    time_us, algbw, busbw, wrong = fields
    return Measurement(float(time_us), float(algbw), float(busbw),
                       None if wrong == "N/A" else int(round(float(wrong))))


def parse_row(line: str) -> Result:
    """The Result a printed row shows, to print precision (also reads rows of real nccl-tests logs)."""
    fields = line.split()
    if len(fields) != 13 or line.lstrip().startswith("#"):
        raise ValueError(f"not an nccl-tests result row: {line!r}")
    size, count, dtype, redop, root = fields[:5]
    return Result(int(size), int(count), dtype, redop, int(root),
                  _parse_measurement(fields[5:9]), _parse_measurement(fields[9:13]))


# --- tables ---------------------------------------------------------------------------------------------

def to_frame(results: Iterable[Result]) -> pd.DataFrame:
    """One row per printed row; #wrong is a nullable integer so N/A stays missing, not 0."""
    rows = []
    for r in results:
        row = {"size_bytes": r.size_bytes, "count": r.count, "dtype": r.dtype, "redop": r.redop, "root": r.root}
        for prefix, m in (("oop", r.out_of_place), ("ip", r.in_place)):
            row |= {f"{prefix}_time_us": m.time_us, f"{prefix}_algbw_gbps": m.algbw_gbps,
                    f"{prefix}_busbw_gbps": m.busbw_gbps, f"{prefix}_wrong": m.wrong}
        rows.append(row)
    measured = ("time_us", "algbw_gbps", "busbw_gbps", "wrong")
    columns = ["size_bytes", "count", "dtype", "redop", "root",
               *(f"{prefix}_{name}" for prefix in ("oop", "ip") for name in measured)]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"size_bytes": "int64", "count": "int64", "root": "int64",
                         "oop_wrong": "Int64", "ip_wrong": "Int64"})


def save(frame: pd.DataFrame, directory: Path, stem: str) -> list[Path]:
    """<directory>/<stem>.csv for people and spreadsheets, <stem>.parquet for typed reloading."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = directory / f"{stem}.csv", directory / f"{stem}.parquet"
    frame.to_csv(csv_path, index=False)
    frame.to_parquet(parquet_path, index=False)
    return [csv_path, parquet_path]
