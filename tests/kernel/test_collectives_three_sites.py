"""all_reduce across three sites (1000 / 1500 / 3000 km), flat and hierarchical, checked element by element.

A module of its own: one fabric runs per process, and the two-site fixture lives until its module ends.
"""

import pytest
from collective_checks import CHUNKED, HIERARCHICAL, PACED, wrong

from testbed.cli import load_topology
from testbed.collectives import start_ranks
from testbed.network import Testbed

pytestmark = pytest.mark.kernel


def test_three_sites_all_reduce_flat_and_hierarchical():
    with Testbed(load_topology("three_sites")()) as tb, start_ranks(tb, nchannels=2, cc=PACED) as ranks:
        for algorithm in (CHUNKED, HIERARCHICAL):
            for count in (1024, 1001):
                assert wrong(tb, ranks, "all_reduce", count, algorithm=algorithm) == [0] * 6, (algorithm, count)
