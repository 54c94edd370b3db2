"""Time dilation on a real kernel: the kernel holds the links dilated and the probes report them declared; a
declared scenario gives the same declared results at two k (the proof that dilation is right); a k too small
is caught by the fidelity monitor.

One small fabric serves the module (``Testbed.set_dilation`` changes k in place): ``dilated.SCENARIO`` at the
k ``--dilation auto`` picks here.
"""

import pytest
from dilated import SCENARIO, auto_dilation

from testbed.collective import nccl_tests
from testbed.experiments.checks import measure_rtts
from testbed.experiments.invariance import deviations, measure_at
from testbed.net.link import netlink
from testbed.net.network import Testbed
from testbed.net.tc.qdisc import read_config
from testbed.topologies import load_topology

pytestmark = pytest.mark.kernel

SWEEP = ["-b", "1M", "-e", "1M", "-n", "3", "-w", "1"]
# declared results at k and 2k agree within this (the 10 %): see test_results_do_not_depend_on_k
TOLERANCE_PCT = 10.0


@pytest.fixture(scope="module")
def dilated():
    """The fabric at the k ``--dilation auto`` picks for it here, and that k."""
    k = auto_dilation()
    with Testbed(load_topology("two_sites")(**SCENARIO), k) as tb:
        yield tb, k


def test_the_kernel_holds_the_links_dilated_and_the_probes_report_them_declared(dilated):
    tb, k = dilated
    dci = tb.egress("westb", "eastb")
    held = read_config(netlink(dci.node), dci.index)
    assert held["rate_bytes_per_s"] == pytest.approx(500e6 / 8 / k, rel=1e-3)
    assert held["netem_delay_us"] == pytest.approx(500 * k, rel=1e-3)  # 100 km: 0.5 ms one way
    assert (held["ecn_kmin_bytes"], held["ecn_kmax_bytes"], held["buffer_bytes"]) == (
        dci.shape.ecn_kmin_bytes, dci.shape.ecn_kmax_bytes, dci.shape.buffer_bytes)  # bytes: unchanged
    (rtt,) = measure_rtts(tb)
    print(f"k {k:g}: RTT {rtt.min_ms:.4f} ms declared, fixed cost {rtt.fixed_ms:.4f} ms, error {rtt.error_ms:+.4f}")
    assert rtt.expected_ms == pytest.approx(1.0) and rtt.ok, rtt


def test_results_do_not_depend_on_k(dilated):
    """busbw, completion time and the DCI's queueing delay p50 in declared units, at k and 2k."""
    tb, k = dilated
    options = nccl_tests.parse_args("all_reduce", SWEEP, nranks=4)
    try:
        runs = [measure_at(tb, factor * k, options) for factor in (1, 2)]
    finally:
        tb.set_dilation(k)
    frame = deviations(runs)
    print(frame.to_string())
    assert [run.wrong for run in runs] == [0, 0]
    assert all(run.verdict.faithful for run in runs), [run.verdict.text for run in runs]
    for name in ("busbw_gbps", "time_us", "queue_p50_ms"):
        assert frame[f"{name}_dev_pct"].abs().max() <= TOLERANCE_PCT, name


def test_a_k_too_small_is_caught_as_emulator_limited(dilated):
    """A tenth of the k auto picks asks the transport for five times its packet budget."""
    tb, k = dilated
    options = nccl_tests.parse_args("all_reduce", ["-b", "256K", "-e", "256K", "-n", "1", "-w", "0"], nranks=4)
    try:
        run = measure_at(tb, max(1.0, k / 10), options)
    finally:
        tb.set_dilation(k)
    print(run.verdict.line)
    assert run.wrong == 0
    assert not run.verdict.faithful and run.verdict.text.startswith("emulator-limited: ")
    assert run.verdict.needed_dilation > run.dilation
