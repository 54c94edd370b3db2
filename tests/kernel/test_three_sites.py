"""Three sites at unequal distances (1000 / 1500 / 3000 km): every collective exact, and the fabric controller
measures the distances and sizes the DCI thresholds by them.

A module of its own: one fabric runs per process, and the two-site fixture lives until its module ends.
"""

import pytest
from collective_checks import CHUNKED, HIERARCHICAL, PACED, wrong

from testbed.collective.runner import start_ranks
from testbed.collective.schedules.builder import flows
from testbed.collective.schedules.model import COLLECTIVES, Algorithm
from testbed.experiments.checks import REFERENCE_KM, RTT_TOLERANCE_MS, RTT_TOLERANCE_PCT, dci_at_reference_distance
from testbed.experiments.discovery import border_rtt_ms, discover
from testbed.experiments.fabric_controller import FabricController
from testbed.model.units import propagation_delay_ms
from testbed.net.network import Testbed
from testbed.net.routing import path_delay_ms
from testbed.topologies import load_topology

pytestmark = pytest.mark.kernel

PROBE_DILATION = 4.0


@pytest.fixture(scope="module")
def three_sites():
    with Testbed(load_topology("three_sites")()) as tb:
        yield tb


def test_the_controller_measures_every_site_pair_and_gives_a_longer_dci_larger_thresholds(three_sites):
    """Border-to-border probes against the configured propagation RTT plus the emulator's fixed cost,
    measured as ``testbed run`` measures it (the same probes with every DCI at the reference distance):
    under a loaded TCG guest that cost alone reached 1.1 ms on a 10 ms path, so the probes run dilated by 4,
    where it is a quarter of that in declared time.  Thresholds from the BDP."""
    tb = three_sites
    tb.set_dilation(PROBE_DILATION)
    try:
        paths = discover(tb)
        reference_ms = propagation_delay_ms(REFERENCE_KM)
        with dci_at_reference_distance(tb):
            fixed = [border_rtt_ms(tb, path.dcis) - 2 * path_delay_ms(tb.graph, path.dcis[0][0], path.dcis[-1][1],
                                                                      reference_ms) for path in paths]
    finally:
        tb.set_dilation(1)
    assert len(paths) == 6  # both directions of each of the three pairs
    for path, fixed_ms in zip(paths, fixed):
        propagation = 2 * path_delay_ms(tb.graph, path.dcis[0][0], path.dcis[-1][1])
        error = path.rtt_ms - propagation - fixed_ms
        print(f"{path.src_site}->{path.dst_site}: border RTT {path.rtt_ms:.3f} ms, propagation {propagation} ms, "
              f"fixed cost {fixed_ms:.3f} ms ({100 * error / propagation:+.1f} % beyond both), host RTT "
              f"{path.host_rtt_ms:.3f}, {path.bottleneck_mbps} Mbit/s")
        assert path.rtt_ms >= propagation
        assert abs(error) <= RTT_TOLERANCE_PCT / 100 * propagation + RTT_TOLERANCE_MS / PROBE_DILATION
        assert 45 <= path.bottleneck_mbps <= 51, path  # the 50 Mbit/s DCIs, not the 100 Mbit/s host links
    plan = FabricController(tb, paths, "adaptive").plan(tb.hosts(), flows("all_reduce", 6, Algorithm()))
    short, long = plan.egresses[("westb", "eastb")], plan.egresses[("westb", "southb")]
    print(f"1000 km: ECN {short.kmin_bytes}-{short.kmax_bytes} B, 3000 km: {long.kmin_bytes}-{long.kmax_bytes} B")
    assert long.kmin_bytes > short.kmin_bytes and long.kmax_bytes > short.kmax_bytes
    baseline = FabricController(tb, paths, "baseline").plan(tb.hosts(), flows("all_reduce", 6, Algorithm()))
    assert len({(e.kmin_bytes, e.kmax_bytes) for e in baseline.egresses.values()}) == 1  # plain: one size for all


def test_every_collective_is_exact_across_three_sites(three_sites):
    tb = three_sites
    with start_ranks(tb, nchannels=2, cc=PACED) as ranks:
        for collective in COLLECTIVES:
            for count in (1024, 1001):  # a multiple of the 6 ranks, and not
                got = wrong(tb, ranks, collective, count, root=4, algorithm=CHUNKED)
                assert got == [0] * 6, (collective, count, got)
        for count in (1024, 1001):
            assert wrong(tb, ranks, "all_reduce", count, algorithm=HIERARCHICAL) == [0] * 6, count
