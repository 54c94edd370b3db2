"""The comparison's modes as sets of mechanisms, the ablation's modes, and the table an ablation prints (native)."""

import re

import pytest

from controllers.adaptive import Adaptive
from controllers.dcqcn import Dcqcn
from controllers.swift import Swift
from testbed.collective import nccl_tests
from testbed.experiments.comparison import Comparison, ModeRun
from testbed.experiments.modes import MECHANISMS, ablation_modes, lookup
from testbed.results.console import say


def test_a_mode_names_the_adaptive_controller_with_just_its_mechanisms():
    mode = lookup("adaptive:delay+timers")
    assert (mode.dci_cc, mode.mechanisms) == (Adaptive, frozenset({"timers", "delay"}))
    assert not mode.derived_thresholds and not mode.govern
    # the senders get the sender-side mechanisms, in the controller's order
    assert mode.cc_spec(path={}, target_queue_ns=None)["mechanisms"] == ["timers", "delay"]
    fabric_only = lookup("adaptive:thresholds+loop")
    assert fabric_only.derived_thresholds and fabric_only.govern
    assert fabric_only.cc_spec(path={})["mechanisms"] == []


def test_the_named_modes_are_all_mechanisms_none_and_swift_with_its_own():
    assert lookup("adaptive").mechanisms == frozenset(MECHANISMS)
    assert lookup("adaptive").cc_spec(path={})["mechanisms"] == ["timers", "window", "delay"]
    assert (lookup("baseline").dci_cc, lookup("baseline").mechanisms) == (Dcqcn, frozenset())
    assert "mechanisms" not in lookup("swift").cc_spec(path={}) and lookup("swift").dci_cc is Swift


def test_the_ablation_is_the_baseline_each_mechanism_alone_and_all_of_them():
    modes = ablation_modes()
    assert modes == ["baseline", "adaptive:timers", "adaptive:window", "adaptive:delay", "adaptive:thresholds",
                     "adaptive:loop", "adaptive:nearsource", "adaptive", "scale-across"]
    assert [len(lookup(m).mechanisms) for m in modes] == [0, 1, 1, 1, 1, 1, 1, 6, 6]
    assert [m for m in modes if lookup(m).tuned_collective] == ["scale-across"]
    assert lookup("adaptive:nearsource").near_source and not lookup("adaptive:loop").near_source
    # the receivers report forward queueing only for the adaptive senders' delay signal (Swift reads its RTT)
    assert [m for m in modes if lookup(m).delay_reports] == ["adaptive:delay", "adaptive", "scale-across"]
    assert not lookup("swift").delay_reports


@pytest.mark.parametrize("name, message", [
    ("magic", "unknown mode 'magic' (modes: baseline, dcqcn-paper, adaptive, scale-across, swift, or "
              "adaptive:MECHANISM+..."),
    ("swift:delay", "unknown mode 'swift:delay'"),
    ("adaptive:", "unknown mode 'adaptive:'"),
    ("adaptive:delay+speed", "mode 'adaptive:delay+speed': unknown or repeated mechanism speed (mechanisms: timers,"),
    ("adaptive:delay+delay", "unknown or repeated mechanism delay+delay"),
])
def test_a_bad_mode_is_refused_in_one_line(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        lookup(name)


def result(size_bytes: int, time_us: float) -> nccl_tests.Result:
    measured = nccl_tests.measure("all_reduce", 2, size_bytes, time_us, 0)
    return nccl_tests.Result(size_bytes, size_bytes // 4, "float", "sum", -1, measured, measured)


def test_the_ablation_table_holds_each_mode_against_the_first_at_the_largest_size():
    times = {"baseline": [200.0, 220.0, 210.0], "adaptive:delay": [100.0, 105.0, 110.0]}
    runs = [ModeRun(mode, [result(1 << 20, 50.0), result(1 << 22, times[mode][r])],
                    {"mode": mode, "dci_queue_p99_ms": 2.0 * (r + 1), "drops": r, "retransmitted": 10 * r},
                    repeat=r + 1)
            for r in range(3) for mode in times]
    bounds = [{"size_bytes": 1 << 20, "bound_busbw_gbps": 1.0}, {"size_bytes": 1 << 22, "bound_busbw_gbps": 0.04}]
    table = Comparison([], runs, bounds).by_mode().set_index("mode")
    baseline, delay = table.loc["baseline"], table.loc["adaptive:delay"]
    assert (baseline["ratio"], baseline["verdict"], baseline["size_bytes"]) == (1.0, "reference", 1 << 22)
    # busbw is 4 MiB per time (x 2(n-1)/n = 1 for two ranks): the median run of each, in Mbit/s
    assert baseline["busbw_mbps"] == pytest.approx((1 << 22) * 8 / 210.0)
    assert delay["ratio"] == pytest.approx(210.0 / 105.0, rel=1e-3)
    assert delay["of_bound_pct"] == pytest.approx(100 * (1 << 22) * 8 / 105.0 / 320.0)
    assert (delay["dci_queue_p99_ms"], delay["drops"], delay["retransmitted"]) == (4.0, 1.0, 10.0)


def test_every_ablation_mode_prints_by_its_name(capsys):
    for mode in ablation_modes():  # rich would turn ":loop:" into an emoji
        say(f"fidelity {mode}: faithful")
    assert capsys.readouterr().out.splitlines() == [f"fidelity {mode}: faithful" for mode in ablation_modes()]
