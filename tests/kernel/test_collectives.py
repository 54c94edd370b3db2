"""Collectives across sites: a rank process per GPU host, data over the emulated fabric, results checked
element by element by the ranks, and nccl-tests' output for a sweep.

(Three sites: test_collectives_three_sites.py.)
"""

import pytest
from collective_checks import CHUNKED, HIERARCHICAL, PACED, answers, wrong

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
    """Exact although packets were lost on the DCI (netem counted them) and the senders recovered them."""
    link = two_sites.dci("west", "east")
    egresses = [two_sites.egress("westb", "eastb"), two_sites.egress("eastb", "westb")]
    lost_before = sum(egress.stats()["netem_drops"] for egress in egresses)
    recovery = {"retransmitted_packets": 0, "naks_received": 0, "timeouts": 0}
    link.set(loss_pct=1)
    try:
        runs = [(collective, 2048 if collective == "alltoall" else 16_384, 5, CHUNKED)  # 64 KB: hundreds of packets
                for collective in COLLECTIVES] + [("all_reduce", 16_384, 0, HIERARCHICAL)]
        for collective, count, root, algorithm in runs:
            got = answers(two_sites, ranks, collective, count, root=root, algorithm=algorithm)
            assert [a["wrong"] for a in got] == [0] * 8, (collective, algorithm)
            for counter in recovery:
                recovery[counter] += sum(a["counters"][counter] for a in got)
    finally:
        link.set(loss_pct=0)
    lost = sum(egress.stats()["netem_drops"] for egress in egresses) - lost_before
    assert lost > 0, "no packet was lost: the test would not show recovery"
    assert recovery["retransmitted_packets"] > 0 and recovery["naks_received"] + recovery["timeouts"] > 0, \
        (lost, recovery)


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
