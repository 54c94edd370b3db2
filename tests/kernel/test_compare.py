"""The comparison end to end on a small dilated scenario: discovery, the three modes' sweeps exact and faithful
(the baseline, the network-only adaptive mode and the full stack, whose collective the controller chose from
the measured paths), the adaptive mode's latency loop acting on the DCI queue, every table and file written.

The scenario is the dilated kernel tests' (``dilated.SCENARIO``: 500 Mbit/s NICs into a 250 Mbit/s DCI at
1000 km), at the k a short run says is faithful here (``dilated.faithful_dilation``): the network, not the
emulated CPU, decides both modes (before dilation, under a loaded TCG host, the ranks were CPU-starved and
the test failed on speed, not behaviour).
"""

import pytest
from dilated import SCENARIO, TELEMETRY_S, faithful_dilation

from testbed.collective import nccl_tests
from testbed.collective.schedules.builder import flows
from testbed.collective.schedules.model import Algorithm
from testbed.experiments.comparison import compare, save
from testbed.experiments.fabric_controller import FabricController
from testbed.model import dilation
from testbed.net.network import Testbed
from testbed.observe.telemetry import Telemetry
from testbed.topologies import load_topology

pytestmark = pytest.mark.kernel

MODES = ["baseline", "adaptive", "scale-across"]


def test_baseline_adaptive_and_the_full_stack_run_end_to_end_with_exact_results(tmp_path):
    options = nccl_tests.parse_args("all_reduce", ["-b", "1M", "-e", "1M", "-n", "2", "-w", "0"], nranks=4)
    with Testbed(load_topology("two_sites")(**SCENARIO)) as tb:
        k = faithful_dilation(tb)
        comparison = compare_at(tb, k, options)
        if not all(run.fidelity.faithful for run in comparison.runs):
            # as a user reading the verdict would: once more at the k it names (a rank's CPU demand varies
            # 2x between runs at one k here, and the latency loop adds to the probe's load)
            k = dilation.rounded_up(max(run.fidelity.needed_dilation for run in comparison.runs))
            comparison = compare_at(tb, k, options)
        plan = FabricController(tb, comparison.paths, "adaptive").plan(tb.hosts(), flows("all_reduce", 4, Algorithm()))
    baseline, adaptive = comparison.runs[:2]
    assert [r.wrong_elements for run in comparison.runs for r in run.results] == [0, 0, 0]
    assert [run.fidelity.text for run in comparison.runs] == ["faithful"] * 3, k
    ratios, summary = comparison.ratios(), comparison.summaries()
    print(ratios.to_string(), summary.to_string(), sep="\n")
    assert list(summary["mode"]) == MODES and len(ratios) == 1
    assert ratios["bound_mbps"][0] > 0 and ratios["adaptive_x"][0] > 0 and ratios["scale-across_x"][0] > 0
    # the network-only modes ran NCCL's default; the full stack what the bound chose for this 250 Mbit/s DCI
    # under two 500 Mbit/s hosts per site (tests/unit/test_tuning.py holds the choice itself)
    assert [run.summary["algorithm"].split(",")[0] for run in comparison.runs] == \
        ["flat ring", "flat ring", "hierarchical"]
    # the controller sized the adaptive DCI thresholds from the measured path, and the loop sampled the queues
    assert adaptive.samples and all(s["mode"] == "adaptive" for s in adaptive.samples)
    assert baseline.summary["cnps"] >= 0 and adaptive.summary["completion_p50_ms"] > 0
    busy = sorted(s["queue_delay_ms"] for s in adaptive.samples if s["busy"])
    target_ms = max(e.target_ns for e in plan.egresses.values()) / 1e6
    p90 = busy[int(0.9 * len(busy))]
    print(f"adaptive: {len(busy)} busy samples, p90 queue {p90:.2f} ms, {len(adaptive.actions)} actions, "
          f"target {target_ms:.2f} ms")
    # the latency loop saw the congested DCI queue and acted on it: it marked earlier or paced the crossing
    # flows when the queue stood above its target, and eased off only below it.  How well it holds the target
    # is a figure, not a test: here its p90 ranged 0.5-2.6 ms and its p99 from under half of DCQCN's to 0.85x
    assert len(busy) >= 10 and busy[-1] > 1.5 * target_ms
    tightened = [a for a in adaptive.actions if a["queue_delay_ms"] > 1.5 * a["target_ms"]]
    eased = [a for a in adaptive.actions if a["queue_delay_ms"] < 0.5 * a["target_ms"]]
    assert tightened and len(tightened) + len(eased) == len(adaptive.actions), adaptive.actions
    # how much of the bound adaptive reaches is a figure for the README, not a test
    save(comparison, tmp_path)
    for name in ("compare-results.csv", "compare-results.parquet", "compare-ratios.csv", "compare-summary.csv",
                 "discovery.csv", "dci-queue-samples.parquet", "latency-actions.csv"):
        assert (tmp_path / name).stat().st_size > 0, name


def compare_at(tb, k: float, options):
    """Both modes' sweeps at dilation ``k``, with the telemetry their fidelity verdicts come from."""
    tb.set_dilation(k)
    with Telemetry(tb, TELEMETRY_S) as telemetry:
        return compare(tb, options, MODES, telemetry=telemetry)
