"""nccl-tests' options, counts, bandwidths and text, checked against nccl-tests' source and real logs (native)."""

import math

import numpy as np
import pandas as pd
import pytest

from testbed.collective import nccl_tests as nt

# A real all_reduce_perf log: 16 H100s on two nodes, `all_reduce_perf -b 8 -e 8G -f 2 -g 1`, published in
# github.com/lessizzmore/create-a3mega-ztan-fork, file ztan-NCCL-test-result.  Lines ending in blanks are
# quoted one by one so that no editor trims them.
ZTAN_ARGV = ["-b", "8", "-e", "8G", "-f", "2", "-g", "1"]
ZTAN_HEADER = """\
# nThread 1 nGpus 1 minBytes 8 maxBytes 8589934592 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid   6899 on ztan-mig-235z device  0 [0000:04:00] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid   6900 on ztan-mig-235z device  1 [0000:05:00] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid   6901 on ztan-mig-235z device  2 [0000:0b:00] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid   6902 on ztan-mig-235z device  3 [0000:0c:00] NVIDIA H100 80GB HBM3
#  Rank  4 Group  0 Pid   6903 on ztan-mig-235z device  4 [0000:84:00] NVIDIA H100 80GB HBM3
#  Rank  5 Group  0 Pid   6904 on ztan-mig-235z device  5 [0000:85:00] NVIDIA H100 80GB HBM3
#  Rank  6 Group  0 Pid   6905 on ztan-mig-235z device  6 [0000:8b:00] NVIDIA H100 80GB HBM3
#  Rank  7 Group  0 Pid   6906 on ztan-mig-235z device  7 [0000:8c:00] NVIDIA H100 80GB HBM3
#  Rank  8 Group  0 Pid   6733 on ztan-mig-gq73 device  0 [0000:04:00] NVIDIA H100 80GB HBM3
#  Rank  9 Group  0 Pid   6734 on ztan-mig-gq73 device  1 [0000:05:00] NVIDIA H100 80GB HBM3
#  Rank 10 Group  0 Pid   6735 on ztan-mig-gq73 device  2 [0000:0b:00] NVIDIA H100 80GB HBM3
#  Rank 11 Group  0 Pid   6736 on ztan-mig-gq73 device  3 [0000:0c:00] NVIDIA H100 80GB HBM3
#  Rank 12 Group  0 Pid   6737 on ztan-mig-gq73 device  4 [0000:84:00] NVIDIA H100 80GB HBM3
#  Rank 13 Group  0 Pid   6738 on ztan-mig-gq73 device  5 [0000:85:00] NVIDIA H100 80GB HBM3
#  Rank 14 Group  0 Pid   6739 on ztan-mig-gq73 device  6 [0000:8b:00] NVIDIA H100 80GB HBM3
#  Rank 15 Group  0 Pid   6740 on ztan-mig-gq73 device  7 [0000:8c:00] NVIDIA H100 80GB HBM3""".splitlines()
ZTAN_COLUMNS = [
    "#",
    "#                                                              out-of-place                       in-place          ",
    "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong",
    "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)       ",
]
ZTAN_ROWS = """\
           8             2     float     sum      -1    135.8    0.00    0.00      0    123.5    0.00    0.00      0
          16             4     float     sum      -1    123.2    0.00    0.00      0    122.3    0.00    0.00      0
          32             8     float     sum      -1    123.3    0.00    0.00      0    122.7    0.00    0.00      0
          64            16     float     sum      -1    123.4    0.00    0.00      0    122.9    0.00    0.00      0
         128            32     float     sum      -1    123.0    0.00    0.00      0    122.7    0.00    0.00      0
         256            64     float     sum      -1    123.6    0.00    0.00      0    122.7    0.00    0.00      0
         512           128     float     sum      -1    126.6    0.00    0.01      0    123.4    0.00    0.01      0
        1024           256     float     sum      -1    147.1    0.01    0.01      0    123.1    0.01    0.02      0
        2048           512     float     sum      -1    125.8    0.02    0.03      0    124.6    0.02    0.03      0
        4096          1024     float     sum      -1    126.9    0.03    0.06      0    125.6    0.03    0.06      0
        8192          2048     float     sum      -1    131.6    0.06    0.12      0    130.6    0.06    0.12      0
       16384          4096     float     sum      -1    138.6    0.12    0.22      0    137.6    0.12    0.22      0
       32768          8192     float     sum      -1    155.2    0.21    0.40      0    153.1    0.21    0.40      0
       65536         16384     float     sum      -1    159.4    0.41    0.77      0    157.6    0.42    0.78      0
      131072         32768     float     sum      -1    159.3    0.82    1.54      0    169.0    0.78    1.45      0
      262144         65536     float     sum      -1    167.1    1.57    2.94      0    163.9    1.60    3.00      0
      524288        131072     float     sum      -1    174.2    3.01    5.64      0    171.0    3.07    5.75      0
     1048576        262144     float     sum      -1    203.2    5.16    9.68      0    207.2    5.06    9.49      0
     2097152        524288     float     sum      -1    254.0    8.26   15.48      0    252.9    8.29   15.55      0
     4194304       1048576     float     sum      -1    364.6   11.50   21.57      0    356.6   11.76   22.05      0
     8388608       2097152     float     sum      -1    571.9   14.67   27.50      0    563.5   14.89   27.91      0
    16777216       4194304     float     sum      -1    977.6   17.16   32.18      0    951.6   17.63   33.06      0
    33554432       8388608     float     sum      -1   1059.9   31.66   59.36      0   1054.0   31.84   59.69      0
    67108864      16777216     float     sum      -1   1261.6   53.20   99.74      0   1270.2   52.83   99.06      0
   134217728      33554432     float     sum      -1   1652.2   81.24  152.32      0   1636.7   82.01  153.76      0
   268435456      67108864     float     sum      -1   2360.9  113.70  213.19      0   2359.9  113.75  213.28      0
   536870912     134217728     float     sum      -1   3817.5  140.63  263.69      0   3828.0  140.25  262.97      0
  1073741824     268435456     float     sum      -1   6759.0  158.86  297.86      0   6737.4  159.37  298.82      0
  2147483648     536870912     float     sum      -1    12646  169.81  318.40      0    12641  169.88  318.52      0
  4294967296    1073741824     float     sum      -1    24361  176.31  330.58      0    24365  176.27  330.51      0
  8589934592    2147483648     float     sum      -1    47535  180.71  338.82      0    47743  179.92  337.35      0""".splitlines()
ZTAN_FOOTER = ["# Out of bounds values : 0 OK", "# Avg bus bandwidth    : 70.742 "]
ZTAN_NRANKS = 16

# A real alltoall_perf log: 4 H20s on two VMs, `alltoall_perf -b 1M -e 16G -f 2 -g 1 -n 200`, from
# https://github.com/NVIDIA/nccl-tests/issues/321 (an older build: the device is printed as [0x33]).
A2A_ARGV = ["-b", "1M", "-e", "16G", "-f", "2", "-g", "1", "-n", "200"]
A2A_HEADER = """\
# nThread 1 nGpus 1 minBytes 1048576 maxBytes 17179869184 step: 2(factor) warmup iters: 5 iters: 200 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid  34001 on  vm-host40 device  0 [0x33] NVIDIA H20-3e
#  Rank  1 Group  0 Pid  34002 on  vm-host40 device  1 [0x23] NVIDIA H20-3e
#  Rank  2 Group  0 Pid  33957 on  vm-host38 device  0 [0x33] NVIDIA H20-3e
#  Rank  3 Group  0 Pid  33958 on  vm-host38 device  1 [0x23] NVIDIA H20-3e""".splitlines()
A2A_ROWS = """\
     1048576         65536     float    none      -1    52.94   19.81   14.85      0    53.47   19.61   14.71    N/A
     8388608        524288     float    none      -1    156.4   53.63   40.22      0    155.6   53.90   40.43    N/A
  1073741824      67108864     float    none      -1    16035   66.96   50.22      0    16110   66.65   49.99    N/A""".splitlines()
A2A_NRANKS = 4


def ranks_of(header: list[str]) -> list[nt.RankInfo]:
    """The (rank, host, ip, site, pid) a device line shows, reading the bus id as the IP and the GPU as site."""
    ranks = []
    for line in header[3:]:
        words = line.split()
        bracket = line.index("[")
        ip, site = line[bracket + 1:line.index("]")], line[line.index("]") + 2:]
        ranks.append(nt.RankInfo(int(words[2]), words[8], ip, site, int(words[6])))
    return ranks


# --- bandwidth ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nranks", [2, 4, 8])
@pytest.mark.parametrize("collective, factor", [
    ("all_reduce", lambda n: 2 * (n - 1) / n),
    ("reduce_scatter", lambda n: (n - 1) / n),
    ("all_gather", lambda n: (n - 1) / n),
    ("alltoall", lambda n: (n - 1) / n),
    ("broadcast", lambda n: 1.0),
    ("reduce", lambda n: 1.0),
])
def test_bus_factor_is_the_one_of_performance_md(collective, factor, nranks):
    assert nt.bus_factor(collective, nranks) == pytest.approx(factor(nranks))
    assert nt.bus_bandwidth(collective, nranks, 10.0) == pytest.approx(10.0 * factor(nranks))


def test_bus_factor_values_at_eight_ranks():
    assert [nt.bus_factor(c, 8) for c in nt.COLLECTIVES] == [1.75, 0.875, 0.875, 1.0, 1.0, 0.875]


def test_algbw_is_bytes_over_1e9_per_second():
    assert nt.algorithm_bandwidth(2_000_000_000, 1_000_000.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="must be > 0"):
        nt.algorithm_bandwidth(8, 0.0)


@pytest.mark.parametrize("collective, nranks, lines", [
    ("all_reduce", ZTAN_NRANKS, ZTAN_ROWS), ("alltoall", A2A_NRANKS, A2A_ROWS)])
def test_real_rows_are_reproduced_from_size_and_time(collective, nranks, lines):
    """Every bandwidth nccl-tests printed follows from the printed size and time, to print precision."""
    for line in lines:
        row = nt.parse_row(line)
        for printed in (row.out_of_place, row.in_place):
            computed = nt.measure(collective, nranks, row.size_bytes, printed.time_us, printed.wrong)
            assert computed.algbw_gbps == pytest.approx(printed.algbw_gbps, abs=0.02), line
            assert computed.busbw_gbps == pytest.approx(printed.busbw_gbps, abs=0.02), line


# --- sizes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("1K", 1024), ("32M", 32 * 1024 ** 2), ("1G", 1024 ** 3), ("100", 100),
    ("1k", 1024), ("1.5K", 1536), ("8 G", 8 * 1024 ** 3), ("1KB", 1024), ("0", 0)])
def test_parsesize_reads_like_nccl_tests(text, size):
    assert nt.parsesize(text) == size


@pytest.mark.parametrize("text", ["", "abc", "10X", "M", "-1K"])
def test_parsesize_rejects_what_nccl_tests_rejects(text):
    with pytest.raises(ValueError, match="invalid size"):
        nt.parsesize(text)


def test_sizes_by_factor():
    options = nt.parse_args("all_reduce", ["-b", "8", "-e", "128M", "-f", "2"])
    assert options.sizes == [2 ** k for k in range(3, 28)]


def test_sizes_by_step_bytes():
    megabyte = 1 << 20
    options = nt.parse_args("all_reduce", ["-b", "1M", "-e", "4M", "-i", "1M"])
    assert options.sizes == [megabyte, 2 * megabyte, 3 * megabyte, 4 * megabyte]
    assert nt.sizes(10, 35, 1, 10) == [10, 20, 30]


def test_default_sweep_is_one_size_of_32M():
    assert nt.parse_args("all_reduce", []).sizes == [32 * 1024 ** 2]


def test_sizes_refuses_a_sweep_that_never_ends():
    with pytest.raises(ValueError, match="never grows"):
        nt.sizes(0, 1024, 2, 1)
    with pytest.raises(ValueError, match="never advances"):
        nt.sizes(8, 1024, 1, 0)


# --- counts ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("collective, size, dtype, nranks, printed_size, count", [
    ("all_reduce", 1000, "float", 3, 1000, 250),
    ("broadcast", 1001, "double", 3, 1000, 125),
    ("reduce", 1000, "int8", 3, 1000, 1000),
    ("all_gather", 1000, "float", 3, 960, 80),      # 250 elements / 3 = 83 -> 80 (16 bytes = 4 floats)
    ("reduce_scatter", 1000, "float", 3, 960, 80),
    ("alltoall", 1000, "float", 3, 960, 80),
    ("all_gather", 1000, "half", 4, 960, 120),      # 500 / 4 = 125 -> 120 (16 bytes = 8 halves)
    ("all_gather", 1000, "double", 8, 896, 14),     # 125 / 8 = 15 -> 14 (16 bytes = 2 doubles)
    ("reduce_scatter", 100, "int8", 3, 96, 32),     # 100 / 3 = 33 -> 32
    ("all_gather", 8, "float", 8, 0, 0),            # less than a chunk per rank
])
def test_counts_follow_get_coll_byte_count(collective, size, dtype, nranks, printed_size, count):
    counts = nt.coll_counts(collective, size, dtype, nranks)
    assert (counts.size_bytes, counts.param_count) == (printed_size, count)


def test_gather_and_scatter_buffers():
    def buffers(counts):
        return counts.send_count, counts.recv_count, counts.send_inplace_offset, counts.recv_inplace_offset
    assert buffers(nt.coll_counts("all_gather", 1024, "float", 4)) == (64, 256, 64, 0)
    assert buffers(nt.coll_counts("reduce_scatter", 1024, "float", 4)) == (256, 64, 0, 64)


@pytest.mark.parametrize("collective, argv, nranks, lines", [
    ("all_reduce", ZTAN_ARGV, ZTAN_NRANKS, ZTAN_ROWS), ("alltoall", A2A_ARGV, A2A_NRANKS, A2A_ROWS)])
def test_real_size_and_count_columns(collective, argv, nranks, lines):
    options = nt.parse_args(collective, argv)
    printed = {nt.parse_row(line).size_bytes: nt.parse_row(line).count for line in lines}
    computed = {c.size_bytes: c.param_count
                for c in (nt.coll_counts(collective, size, "float", nranks) for size in options.sizes)}
    assert printed.items() <= computed.items()


# --- text -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("collective, argv, header", [
    ("all_reduce", ZTAN_ARGV, ZTAN_HEADER), ("alltoall", A2A_ARGV, A2A_HEADER)])
def test_header_is_the_real_one(collective, argv, header):
    assert nt.header_lines(nt.parse_args(collective, argv), ranks_of(header)) == header


def test_header_with_step_bytes_and_plain_rank_tuples():
    options = nt.parse_args("broadcast", ["-c", "0", "-w", "1"])
    assert nt.header_lines(options, [(0, "h1", "10.0.1.1", "west"), (1, "h2", "10.0.2.1", "east")]) == [
        "# nThread 1 nGpus 1 minBytes 33554432 maxBytes 33554432 step: 1048576(bytes) warmup iters: 1 iters: 20 "
        "agg iters: 1 validation: 0 graph: 0",
        "#",
        "# Using devices",
        "#  Rank  0 Group  0 Pid      0 on         h1 device  0 [10.0.1.1] west",
        "#  Rank  1 Group  0 Pid      0 on         h2 device  0 [10.0.2.1] east",
    ]


def test_column_header_is_the_real_one():
    assert nt.column_header_lines() == ZTAN_COLUMNS


@pytest.mark.parametrize("line", ZTAN_ROWS + A2A_ROWS)
def test_real_rows_print_back_identically(line):
    assert nt.format_row(nt.parse_row(line)) == line


def test_one_row_exactly():
    row = nt.Result(2147483648, 536870912, "float", "sum", -1,
                    nt.Measurement(12646.0, 169.81, 318.40, 0), nt.Measurement(12641.0, 169.88, 318.52, 0))
    assert nt.format_row(row) == ZTAN_ROWS[28]


def test_report_of_the_real_run_is_the_real_text():
    options = nt.parse_args("all_reduce", ZTAN_ARGV)
    results = [nt.parse_row(line) for line in ZTAN_ROWS]
    text = (nt.header_lines(options, ranks_of(ZTAN_HEADER)) + nt.column_header_lines()
            + [nt.format_row(r) for r in results] + nt.footer_lines(results, 0))
    assert text[:-3] == ZTAN_HEADER + ZTAN_COLUMNS + ZTAN_ROWS + ZTAN_FOOTER[:1]
    assert text[-2:] == ["#", ""]
    # nccl-tests averaged unrounded bandwidths; the printed ones (rounded to 0.01) agree to 0.005
    assert nt.average_bus_bandwidth(results) == pytest.approx(70.742, abs=0.005)


@pytest.mark.parametrize("time_us, text", [
    (1.234, "   1.23"), (99.994, "  99.99"), (100.0, "  100.0"), (9999.94, " 9999.9"), (10000.0, "  10000"),
    (1234567.0, "1234567")])
def test_time_column_drops_decimals_as_it_grows(time_us, text):
    assert nt.format_time(time_us) == text


def _row(oop_busbw=0.0, oop_wrong=0, ip_busbw=0.0):
    """An 8-byte all_reduce row with the given out-of-place busbw and #wrong and in-place busbw."""
    return nt.Result(8, 2, "float", "sum", -1,
                     nt.Measurement(1.0, 0.0, oop_busbw, oop_wrong), nt.Measurement(1.0, 0.0, ip_busbw, 0))


def test_wrong_column():
    """Right-aligned in 5 after two blanks; %5g of a double, so a million wrong elements print as 1e+06."""
    assert nt.format_row(_row(oop_wrong=None))[77:84] == "    N/A"
    assert nt.format_row(_row(oop_wrong=3))[77:84] == "      3"
    assert nt.format_row(_row(oop_wrong=1234567)).split()[8] == "1.23457e+06"


def test_wrong_is_na_without_check_and_for_in_place_alltoall():
    assert nt.wrong_is_reported("all_reduce", in_place=True, check=1)
    assert not nt.wrong_is_reported("all_reduce", in_place=False, check=0)
    assert nt.wrong_is_reported("alltoall", in_place=False, check=1)
    assert not nt.wrong_is_reported("alltoall", in_place=True, check=1)


def test_formatted_row_parses_back_to_the_same_numbers():
    out_of_place = nt.measure("all_reduce", 8, 4 * 1024 ** 2, 1234.5678, 0)
    in_place = nt.measure("all_reduce", 8, 4 * 1024 ** 2, 56.789, None)
    row = nt.Result(4 * 1024 ** 2, 1024 ** 2, "float", "max", -1, out_of_place, in_place)
    parsed = nt.parse_row(nt.format_row(row))
    labels = (parsed.size_bytes, parsed.count, parsed.dtype, parsed.redop, parsed.root)
    assert labels == (4 << 20, 1 << 20, "float", "max", -1)
    for before, after, decimals in ((out_of_place, parsed.out_of_place, 1), (in_place, parsed.in_place, 2)):
        assert after.time_us == pytest.approx(before.time_us, abs=0.5 * 10 ** -decimals)
        assert after.algbw_gbps == pytest.approx(before.algbw_gbps, abs=0.005)
        assert after.busbw_gbps == pytest.approx(before.busbw_gbps, abs=0.005)
        assert after.wrong == before.wrong


def test_large_wrong_count_parses_back_to_print_precision():
    parsed = nt.parse_row(nt.format_row(_row(oop_wrong=1234567)))
    assert parsed.out_of_place.wrong == pytest.approx(1234567, rel=1e-5)


@pytest.mark.parametrize("line", ["#", ZTAN_COLUMNS[2], "# Out of bounds values : 0 OK", "", "8 2 float sum"])
def test_parse_row_refuses_other_lines(line):
    with pytest.raises(ValueError, match="not an nccl-tests result row"):
        nt.parse_row(line)


def test_footer():
    row = _row(oop_busbw=70.7, ip_busbw=70.784)
    assert nt.footer_lines([row], 0) == ZTAN_FOOTER + ["#", ""]
    assert nt.footer_lines([row], 2)[0] == "# Out of bounds values : 2 FAILED"
    assert nt.footer_lines([], 0)[1] == "# Avg bus bandwidth    : -nan "


# --- options --------------------------------------------------------------------------------------------

def test_defaults_are_nccl_tests_defaults():
    options = nt.parse_args("all_reduce", [])
    sweep = (options.minbytes, options.maxbytes, options.stepbytes, options.stepfactor)
    assert sweep == (32 << 20, 32 << 20, 1 << 20, 1)
    assert (options.iters, options.warmup_iters, options.agg_iters, options.check) == (20, 5, 1, 1)
    assert (options.op, options.dtype, options.root) == ("sum", "float", 0)


def test_long_options():
    options = nt.parse_args("reduce", ["--minbytes", "1K", "--maxbytes", "1M", "--stepfactor", "4", "--iters", "3",
                                       "--warmup_iters", "0", "--check", "0", "--op", "min", "--datatype", "int64",
                                       "--root", "2", "--agg_iters", "2"], nranks=4)
    assert options == nt.Options("reduce", 1024, 1 << 20, 1 << 20, 4, 3, 0, 2, 0, "min", "int64", 2)


def test_what_a_run_iterates():
    assert nt.parse_args("all_gather", ["-o", "prod"]).ops == ("none",)
    assert nt.parse_args("all_reduce", ["-o", "all"]).ops == nt.OPS
    assert nt.parse_args("broadcast", ["-r", "-1"]).roots(3) == (0, 1, 2)
    assert nt.parse_args("reduce", ["-r", "1"]).roots(3) == (1,)
    assert nt.parse_args("all_reduce", ["-r", "1"]).roots(3) == (-1,)
    assert nt.parse_args("all_reduce", ["-d", "float32"]).dtypes == ("float",)
    assert nt.parse_args("all_reduce", ["-d", "all"]).dtypes == (
        "int8", "uint8", "int32", "uint32", "int64", "uint64", "half", "float", "double")


def test_numpy_dtypes():
    assert [nt.numpy_dtype(name) for name in ("float32", "float64", "int32", "int64", "float16")] == [
        np.float32, np.float64, np.int32, np.int64, np.float16]
    assert nt.numpy_dtype("half").itemsize == nt.datatype("half").size
    with pytest.raises(ValueError, match="no numpy dtype"):
        nt.numpy_dtype("bfloat16")


@pytest.mark.parametrize("collective, argv, nranks, message", [
    ("all_reduce", ["-b", "64M", "-e", "32M"], None,
     "invalid sizes for 'minbytes' and 'maxbytes': 67108864 > 33554432"),
    ("all_reduce", ["-b", "32Q"], None, "argument -b/--minbytes: invalid size '32Q'"),
    ("all_reduce", ["-e", "lots"], None, "argument -e/--maxbytes: invalid size 'lots'"),
    ("all_reduce", ["-d", "float8"], None, "argument -d/--datatype: unknown datatype 'float8'"),
    ("all_reduce", ["-d", "bfloat16"], None, "argument -d/--datatype: datatype bfloat16 is not supported"),
    ("all_reduce", ["-o", "mulsum"], None, "argument -o/--op: invalid choice: 'mulsum'"),
    ("all_reduce", ["-n", "0"], None, "argument -n/--iters: must be a whole number >= 1, got '0'"),
    ("all_reduce", ["-w", "x"], None, "argument -w/--warmup_iters: must be a whole number >= 0, got 'x'"),
    ("all_reduce", ["-g", "8"], None, "argument -g/--ngpus: only 1 is supported"),
    ("all_reduce", ["-b", "0", "-e", "1M", "-f", "2"], None, "minbytes 0 never grows by stepfactor 2"),
    ("all_reduce", ["-i", "0"], None, "stepbytes 0 never advances the sizes"),
    ("all_reduce", ["-z", "1"], None, "unrecognized arguments: -z 1"),
    ("broadcast", ["-r", "4"], 4, "root 4 is out of range for 4 ranks (0..3, or -1 for all)"),
    ("reduce", ["-r", "-2"], 4, "argument -r/--root: must be a whole number >= -1, got '-2'"),
])
def test_bad_options_are_one_line_and_exit_2(collective, argv, nranks, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        nt.parse_args(collective, argv, nranks=nranks)
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], error_lines
    assert error_lines[0].startswith(f"{collective}_perf: error: ")


def test_root_is_not_checked_where_nccl_tests_ignores_it():
    assert nt.parse_args("all_reduce", ["-r", "7"], nranks=2).root == 7


def test_unknown_collective_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown collective 'allreduce'"):
        nt.parse_args("allreduce", [])


# --- tables ---------------------------------------------------------------------------------------------

def test_frame_and_files(tmp_path):
    results = [nt.parse_row(line) for line in A2A_ROWS]
    frame = nt.to_frame(results)
    assert list(frame.columns) == [
        "size_bytes", "count", "dtype", "redop", "root",
        "oop_time_us", "oop_algbw_gbps", "oop_busbw_gbps", "oop_wrong",
        "ip_time_us", "ip_algbw_gbps", "ip_busbw_gbps", "ip_wrong"]
    assert frame["size_bytes"].tolist() == [1048576, 8388608, 1073741824]
    assert frame["oop_busbw_gbps"].tolist() == [14.85, 40.22, 50.22]
    assert frame["oop_wrong"].tolist() == [0, 0, 0] and frame["ip_wrong"].isna().all()

    csv_path, parquet_path = nt.save(frame, tmp_path / "out", "alltoall")
    assert (csv_path.name, parquet_path.name) == ("alltoall.csv", "alltoall.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(parquet_path), frame)
    from_csv = pd.read_csv(csv_path)
    assert from_csv["ip_time_us"].tolist() == [53.47, 155.6, 16110.0]
    assert math.isnan(from_csv["ip_wrong"][0])


def test_empty_frame_keeps_its_columns():
    assert nt.to_frame([]).shape == (0, 13)
