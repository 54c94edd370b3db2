"""Every collective across three sites (1000 / 1500 / 3000 km), and hierarchical all_reduce, checked exactly.

A module of its own: one fabric runs per process, and the two-site fixture lives until its module ends.
"""

import pytest
from collective_checks import CHUNKED, HIERARCHICAL, PACED, wrong

from testbed.cli import load_topology
from testbed.collectives import start_ranks
from testbed.network import Testbed
from testbed.schedules import COLLECTIVES

pytestmark = pytest.mark.kernel


def test_every_collective_is_exact_across_three_sites():
    with Testbed(load_topology("three_sites")()) as tb, start_ranks(tb, nchannels=2, cc=PACED) as ranks:
        for collective in COLLECTIVES:
            for count in (1024, 1001):  # a multiple of the 6 ranks, and not
                got = wrong(tb, ranks, collective, count, root=4, algorithm=CHUNKED)
                assert got == [0] * 6, (collective, count, got)
        for count in (1024, 1001):
            assert wrong(tb, ranks, "all_reduce", count, algorithm=HIERARCHICAL) == [0] * 6, count
