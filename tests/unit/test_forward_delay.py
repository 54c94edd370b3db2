"""The receiver's queueing-delay monitor: what it reports, when, and that the two hosts' clock offset cancels.

Expected values are worked out from ``controllers.forward_delay``'s docstring (a brute-force minimum over the
window), not taken from the code under test.  Times are ns.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.forward_delay import REPORTS_PER_RTT, ForwardDelayPoint

MS = 1_000_000
RTT, TARGET = 20 * MS, MS  # half an RTT of window, a report at most every 2.5 ms
BASE = 10 * MS  # the path's one-way delay


def test_a_standing_queue_is_reported_and_a_hiccup_is_not():
    point = ForwardDelayPoint(TARGET, RTT)
    assert point.on_data(0, BASE) is None  # the base
    assert point.on_data(1, BASE + 5 * MS) is None  # one late packet: the base is still in the window
    assert point.on_data(RTT // 2 - 1, BASE + 4 * MS) is None
    assert point.on_data(RTT // 2 + 1, BASE + 6 * MS) == 4 * MS  # half an RTT of nothing below base + 4 ms
    assert point.base_ns == BASE


def test_reports_are_paced_at_eight_per_rtt_and_stop_at_the_target():
    point = ForwardDelayPoint(TARGET, RTT)
    point.on_data(0, BASE)
    times = range(RTT, 2 * RTT, MS // 4)
    reports = [t for t in times if point.on_data(t, BASE + 3 * MS) is not None]
    assert REPORTS_PER_RTT == 8 and reports == list(range(RTT, 2 * RTT, RTT // 8))
    later = 3 * RTT
    assert point.on_data(later, BASE + TARGET) is None  # the window now holds only this: at the target
    assert all(point.on_data(later + i * MS, BASE + 3 * MS) is None for i in range(1, 10))  # base + 1 ms stands


def test_the_clock_offset_between_the_hosts_cancels():
    for offset in (-BASE - 7 * MS, 0, 123_456_789_000):
        point = ForwardDelayPoint(TARGET, RTT)
        point.on_data(0, BASE + offset)
        assert point.on_data(RTT, BASE + 3 * MS + offset) == 3 * MS


@pytest.mark.parametrize("target, rtt", [(0, RTT), (TARGET, 0), (-1, RTT)])
def test_non_positive_settings_are_refused_in_one_line(target, rtt):
    with pytest.raises(ValueError, match=r"^(target_queue_ns|base_rtt_ns) must be a positive finite number"):
        ForwardDelayPoint(target, rtt)


ARRIVALS = st.lists(st.tuples(st.integers(0, 4 * MS), st.integers(0, 8 * MS)), min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(arrivals=ARRIVALS)
def test_a_report_is_the_window_minimum_over_the_base_above_the_target_and_paced(arrivals):
    point = ForwardDelayPoint(TARGET, RTT)
    now, seen, last_report = 0, [], None
    for gap, delay in arrivals:
        now += gap
        seen.append((now, BASE + delay))
        standing = min(d for t, d in seen if t >= now - RTT // 2)
        queue = standing - min(d for _, d in seen)
        due = queue > TARGET and (last_report is None or now - last_report >= RTT // 8)
        report = point.on_data(now, BASE + delay)
        assert report == (queue if due else None)
        if due:
            last_report = now
