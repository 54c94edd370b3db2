"""Collectives across sites: a rank process per GPU host, data over the emulated fabric, results checked
element by element by the ranks, and nccl-tests' output for a sweep.

(Three sites: test_collectives_three_sites.py.)
"""

import pytest
from collective_checks import CHUNKED, HIERARCHICAL, PACED, wrong

from testbed.collective import nccl_tests
from testbed.collective.runner import start_ranks, sweep
from testbed.collective.schedules.model import COLLECTIVES

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def ranks(two_sites):
    with start_ranks(two_sites, nchannels=2, cc=PACED) as ranks:
        yield ranks


@pytest.mark.parametrize("collective", COLLECTIVES)
def test_every_collective_is_exact_across_the_dci(two_sites, ranks, collective):
    root = 5 if collective in ("broadcast", "reduce") else 0  # a root other than rank 0
    for count in (1024, 1001):  # a multiple of the 8 ranks, and not
        for in_place in (False, True):
            got = wrong(two_sites, ranks, collective, count, root=root, algorithm=CHUNKED, in_place=in_place)
            assert got == [0] * 8, (count, in_place, got)


def test_hierarchical_all_reduce_is_exact_and_max_reduces_too(two_sites, ranks):
    for count in (1024, 1001):
        assert wrong(two_sites, ranks, "all_reduce", count, algorithm=HIERARCHICAL) == [0] * 8
    assert wrong(two_sites, ranks, "all_reduce", 1001, op="max", dtype="int32", algorithm=CHUNKED) == [0] * 8


def test_every_collective_stays_exact_with_one_percent_dci_loss(two_sites, ranks):
    link = two_sites.dci("west", "east")
    link.set(loss_pct=1)
    try:
        for collective in COLLECTIVES:
            count = 2048 if collective == "alltoall" else 16_384  # 64 KB: a few hundred packets cross
            assert wrong(two_sites, ranks, collective, count, root=5, algorithm=CHUNKED) == [0] * 8, collective
        assert wrong(two_sites, ranks, "all_reduce", 16_384, algorithm=HIERARCHICAL) == [0] * 8
    finally:
        link.set(loss_pct=0)


def test_a_sweep_prints_nccl_tests_rows_that_parse_back_exact(two_sites, ranks):
    options = nccl_tests.parse_args("all_reduce", ["-b", "4K", "-e", "16K", "-f", "2", "-n", "2", "-w", "1"])
    lines: list[str] = []
    results = sweep(two_sites, ranks, options, CHUNKED, print_line=lines.append)
    rows = [nccl_tests.parse_row(line) for line in lines if line and not line.startswith("#")]
    assert [r.size_bytes for r in rows] == [4096, 8192, 16384] == [r.size_bytes for r in results]
    for row in rows:
        assert row.out_of_place.wrong == row.in_place.wrong == 0
        assert row.out_of_place.time_us > 0
        assert row.out_of_place.busbw_gbps == pytest.approx(row.out_of_place.algbw_gbps * 2 * 7 / 8, abs=0.011)
    assert any(line.startswith("# Avg bus bandwidth") for line in lines)
