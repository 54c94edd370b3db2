"""Swift against the paper's update equations (``controllers.swift``'s docstring) on synthetic ACK sequences.

Expected values are iterated here from the equations, not taken from the code under test.  Times are ns,
rates bits/s, sizes bytes.
"""

import dataclasses
import math
import re

import pytest

from controllers.adaptive import AdaptiveParams, Path
from controllers.base import CongestionControl
from controllers.swift import Swift, SwiftParams

FRAME = 4096 + 44 + 14  # IB payload + IPv4, UDP, BTH, ICRC + Ethernet
MS = 1_000_000
LINE = 100e6
PATH = Path(base_rtt_ns=20 * MS, bottleneck_bps=10e6, line_rate_bps=LINE, frame_bytes=FRAME)
RTT, TQ = 20 * MS, 6_646_400  # two frames at 10 Mbit/s > RTT / 20
TARGET = RTT + TQ
P = SwiftParams.for_path(PATH)
CWND0 = 25_000 + 2 * FRAME  # BDP at 10 Mbit/s over 20 ms, plus the target queue at the share


def approx(value):
    return pytest.approx(value, rel=1e-12)


def srtt_after(srtt: float, sample: int) -> float:
    return srtt + (sample - srtt) / 8


def test_knobs_for_20_ms_at_10_mbit_s():
    assert (P.base_rtt_ns, P.target_queue_ns, P.target_delay_ns) == (RTT, TQ, TARGET)
    assert (P.line_rate_bps, P.frame_bytes, P.ai_bytes, P.beta, P.max_mdf) == (LINE, FRAME, FRAME, 0.8, 0.5)
    assert (P.initial_cwnd_bytes, P.min_cwnd_bytes) == (CWND0, 25.0)
    assert P.max_cwnd_bytes == math.ceil(100e6 * TARGET / 8e9) == 333_080  # line rate over the target delay


def test_the_target_rule_is_adaptives_and_can_be_overridden():
    short = Path(500_000, 20e6, LINE, FRAME, flows=2)
    params = SwiftParams.for_path(short)
    assert params.target_queue_ns == AdaptiveParams.for_path(short).target_queue_ns == 3_323_200
    assert (params.initial_cwnd_bytes, params.min_cwnd_bytes, params.max_cwnd_bytes) == (2 * FRAME, 0.625, 47_790)
    given = SwiftParams.for_path(PATH, target_queue_ns=MS)
    assert (given.target_queue_ns, given.initial_cwnd_bytes) == (MS, 25_000 + 1_250)


def test_a_flow_starts_with_its_window_paced_over_the_base_rtt():
    flow = Swift(P)
    assert isinstance(flow, CongestionControl)
    assert (flow.cwnd_bytes, flow.srtt_ns, flow.next_timer_ns) == (CWND0, RTT, None)
    assert flow.rate_bps == approx(CWND0 * 8e9 / RTT)


def test_additive_increase_adds_about_one_ai_per_window_acknowledged():
    flow = Swift(P)
    cwnd, acked = float(CWND0), 0
    now = 0
    while acked < CWND0 - FRAME:  # one window's worth of ACKs, a frame each, all below the target
        now += MS
        flow.on_ack(now, FRAME, RTT)
        cwnd += FRAME * FRAME / cwnd
        acked += FRAME
    assert flow.cwnd_bytes == math.ceil(cwnd)
    assert flow.rate_bps == approx(cwnd * 8e9 / RTT) and flow.srtt_ns == RTT
    assert 0.95 * FRAME * acked / CWND0 < cwnd - CWND0 < FRAME * acked / CWND0


def test_below_one_frame_the_increase_is_ai_per_frame_acknowledged():
    params = dataclasses.replace(P, initial_cwnd_bytes=1_000, ai_bytes=500)
    flow = Swift(params)
    flow.on_ack(1, 1_000, RTT)
    assert flow.cwnd_bytes == 1_000 + math.ceil(500 * 1_000 / FRAME)


def test_srtt_is_an_eighth_weighted_average_and_the_rate_is_the_window_over_it():
    flow = Swift(P)
    srtt, cwnd = float(RTT), float(CWND0)
    for i, sample in enumerate([RTT + MS, RTT + 3 * MS, RTT + 5 * MS, RTT + 2 * MS], start=1):
        flow.on_ack(i, FRAME, sample)
        srtt = srtt_after(srtt, sample)
        cwnd += FRAME * FRAME / cwnd
        assert flow.srtt_ns == approx(srtt)
        assert flow.rate_bps == approx(cwnd * 8e9 / srtt)


def test_delay_above_target_cuts_by_the_swift_factor_once_per_srtt():
    flow = Swift(P)
    delay = TARGET + 10 * MS
    factor = 1 - 0.8 * 10 * MS / delay
    flow.on_ack(1_000, FRAME, delay)
    srtt, cwnd = srtt_after(RTT, delay), CWND0 * factor
    assert flow.rate_bps == approx(cwnd * 8e9 / srtt)
    srtt = srtt_after(srtt, delay)
    flow.on_ack(1_000 + math.floor(srtt) - 1, FRAME, delay)  # within the (updated) srtt: no second cut
    assert flow.rate_bps == approx(cwnd * 8e9 / srtt)
    srtt = srtt_after(srtt, delay)
    flow.on_ack(1_000 + math.ceil(srtt), FRAME, delay)
    cwnd *= factor
    assert flow.rate_bps == approx(cwnd * 8e9 / srtt) and flow.cwnd_bytes == math.ceil(cwnd)


def test_one_cut_takes_at_most_max_mdf():
    flow = Swift(P)
    flow.on_ack(1, FRAME, 10 * TARGET)  # 1 - 0.8 * 0.9 = 0.28, clamped to 0.5
    assert flow.cwnd_bytes == CWND0 // 2


def test_a_sample_at_the_target_neither_grows_nor_blocks_the_next_cut():
    flow = Swift(P)
    flow.on_ack(1, FRAME, TARGET)  # factor 1: no decrease, so no decrease time either
    assert flow.cwnd_bytes == CWND0
    flow.on_ack(2, FRAME, 10 * TARGET)
    assert flow.cwnd_bytes == CWND0 // 2


def test_a_timeout_halves_the_window_once_per_srtt_down_to_min_cwnd():
    flow = Swift(P)
    flow.on_timeout(1)
    flow.on_timeout(2)
    assert flow.cwnd_bytes == CWND0 // 2
    flow.on_timeout(1 + RTT)
    assert flow.cwnd_bytes == CWND0 // 4
    for i in range(2, 40):
        flow.on_timeout(1 + i * RTT)
    assert flow.cwnd_bytes == 25 and flow.rate_bps == approx(25 * 8e9 / RTT)


def test_the_window_stops_at_max_cwnd_and_the_rate_at_line_rate():
    flow = Swift(P)
    for i in range(1, 5_000):
        flow.on_ack(i, FRAME, RTT)
        assert flow.cwnd_bytes <= P.max_cwnd_bytes and flow.rate_bps <= LINE
    assert flow.cwnd_bytes == 333_080 and flow.rate_bps == LINE  # the window would pace at 133 Mbit/s


def test_cnps_naks_and_acks_without_a_sample_change_nothing():
    flow = Swift(P)
    for now in range(0, 10 * RTT, RTT // 2):
        flow.on_cnp(now)
        flow.on_loss(now)
        flow.on_send(now, FRAME)
        flow.on_ack(now, FRAME, None)
    assert (flow.cwnd_bytes, flow.srtt_ns, flow.rate_bps) == (CWND0, RTT, approx(CWND0 * 8e9 / RTT))


@pytest.mark.parametrize(("fields", "message"), [
    (dict(ai_bytes=0), "ai_bytes must be a positive finite number, got 0"),
    (dict(base_rtt_ns=-1), "base_rtt_ns must be a positive finite number, got -1"),
    (dict(line_rate_bps=math.nan), "line_rate_bps must be a positive finite number, got nan"),
    (dict(beta=1.5), "beta must be in (0, 1], got 1.5"),
    (dict(max_mdf=1), "max_mdf must be in (0, 1), got 1"),
    (dict(initial_cwnd_bytes=10), "initial_cwnd_bytes 10 is outside [min_cwnd_bytes, max_cwnd_bytes] = [25.0, 333080]"),
])
def test_bad_parameters_are_refused_in_one_line(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(P, **fields)


def test_a_bad_target_is_refused_in_one_line():
    with pytest.raises(ValueError, match=re.escape("target_queue_ns must be a positive finite number, got -5")):
        SwiftParams.for_path(PATH, target_queue_ns=-5)
