"""Repeat statistics of a comparison: medians, the spread of the paired ratios, the bootstrap interval and the
verdict, on numbers worked out by hand."""

import math

import pytest

from testbed.experiments.repeats import ratio_summary


def test_a_clear_win_is_faster_with_an_interval_above_one():
    summary = ratio_summary([100, 110, 90], [180, 200, 170])
    assert summary["ratio"] == pytest.approx(180 / 100)  # medians 100 and 180
    assert (summary["ratio_min"], summary["ratio_max"]) == pytest.approx((180 / 100, 170 / 90))  # pairs 1.8 1.82 1.89
    assert 1 < summary["ci_low"] <= summary["ratio"] <= summary["ci_high"]
    assert summary["verdict"] == "faster"


def test_a_clear_loss_is_slower():
    summary = ratio_summary([100, 110, 90, 105, 95], [50, 60, 55, 52, 58])
    assert summary["ci_high"] < 1 and summary["verdict"] == "slower"


def test_overlapping_runs_are_no_significant_difference():
    summary = ratio_summary([100, 140, 90], [120, 95, 110])
    assert summary["ci_low"] < 1 < summary["ci_high"]
    assert summary["verdict"] == "no significant difference"


def test_the_interval_is_reproducible_and_lies_within_what_resamples_can_form():
    reference, other = [100, 110, 90], [130, 120, 150]
    first, again = ratio_summary(reference, other), ratio_summary(reference, other)
    assert first == again  # a fixed seed: the same measurements give the same interval
    # a resample's median is one of the values, so the ratio of medians lies within these extremes
    assert min(other) / max(reference) <= first["ci_low"] and first["ci_high"] <= max(other) / min(reference)


def test_one_run_has_no_interval_and_no_verdict():
    summary = ratio_summary([100], [150])
    assert summary["ratio"] == summary["ratio_min"] == summary["ratio_max"] == pytest.approx(1.5)
    assert math.isnan(summary["ci_low"]) and math.isnan(summary["ci_high"]) and summary["verdict"] == "one run"


def test_unpaired_or_empty_repeats_are_refused():
    with pytest.raises(ValueError, match="paired repeats"):
        ratio_summary([1, 2], [1])
    with pytest.raises(ValueError, match="paired repeats"):
        ratio_summary([], [])


def test_a_zero_reference_gives_no_ratio():
    summary = ratio_summary([0, 0, 0], [1, 2, 3])
    assert math.isnan(summary["ratio"]) and summary["verdict"] == "no ratio"
