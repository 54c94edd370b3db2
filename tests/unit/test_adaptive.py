"""The distance-adaptive controller: knobs derived from a path, ECN thresholds, and reactions to synthetic events.

Expected values are worked out here from the formulas in ``controllers.adaptive``'s docstring (and DCQCN's
recurrences), not taken from the code under test.  Times are ns, rates bits/s, sizes bytes.
"""

import dataclasses
import math
import re

import pytest
from hypothesis import given, settings
from test_dilation import EVENTS, trace

from controllers.adaptive import Adaptive, AdaptiveParams, Path, ecn_thresholds, target_queue_for
from controllers.base import CongestionControl
from controllers.dcqcn import MLX5_FIRMWARE, Dcqcn

FRAME = 4096 + 44 + 14  # IB payload + IPv4, UDP, BTH, ICRC + Ethernet
MS = 1_000_000
LINE = 100e6

# 20 ms RTT through a 10 Mbit/s DCI: two frames take 6.6464 ms, more than RTT / 20 = 1 ms
PATH_A = Path(base_rtt_ns=20 * MS, bottleneck_bps=10e6, line_rate_bps=LINE, frame_bytes=FRAME)
RTT, S, TQ = 20 * MS, 10e6, 2 * FRAME * 8 * 100  # 8 ns per bit at 10 Mbit/s (exact)
P = AdaptiveParams.for_path(PATH_A)
G, F = 1 / 16, 5


def approx(value):
    return pytest.approx(value, rel=1e-12)


def started() -> Adaptive:
    """A path-A flow whose first packet left at t = 0."""
    flow = Adaptive(P)
    flow.on_send(0, FRAME)
    return flow


def test_knobs_for_20_ms_at_10_mbit_s():
    assert TQ == 6_646_400
    assert (P.base_rtt_ns, P.target_queue_ns, P.start_rate_bps) == (RTT, TQ, S)
    assert P.cwnd_bytes == 25_000 + 8_308  # BDP 10e6 * 0.02 / 8, plus the target queue: 2 frames at the share
    assert (P.delay_beta, P.max_decrease) == (0.8, 0.5)
    d = P.dcqcn
    assert (d.rp_max_rate_bps, d.rp_min_rate_bps) == (LINE, approx(S / 1000))
    assert (d.rp_ai_rate_bps, d.rp_hai_rate_bps) == (approx(0.02 * S), approx(0.1 * S))
    assert (d.rp_time_reset_ns, d.rp_dce_tcp_rtt_ns, d.rp_rate_reduce_monitor_period_ns) == (RTT, RTT, RTT)
    assert (d.rp_byte_reset_bytes, d.np_min_time_between_cnps_ns) == (25_000, 2_500_000)
    assert (d.rp_dce_tcp_g, d.rp_threshold, d.rp_initial_alpha_value) == (1 / 16, 5, 0.5)


def test_knobs_for_half_a_millisecond_at_20_mbit_s_shared_by_two_flows():
    params = AdaptiveParams.for_path(Path(500_000, 20e6, LINE, FRAME, flows=2))
    assert params.target_queue_ns == 2 * FRAME * 8 * 50  # two frames at 20 Mbit/s, far above RTT / 20 = 25 us
    assert params.start_rate_bps == 10e6
    assert params.cwnd_bytes == 2 * FRAME  # BDP 625 + 4154 of queue at the share, raised to two frames
    d = params.dcqcn
    assert (d.rp_byte_reset_bytes, d.rp_time_reset_ns, d.np_min_time_between_cnps_ns) == (FRAME, 500_000, 62_500)
    assert (d.rp_ai_rate_bps, d.rp_min_rate_bps) == (approx(0.2e6), approx(1e4))


def test_at_a_gigabit_rtt_over_20_sets_the_target_and_flows_divide_the_share():
    alone = AdaptiveParams.for_path(Path(20 * MS, 1e9, 25e9, FRAME))
    assert alone.target_queue_ns == 1 * MS  # RTT / 20 > two frames (66 us)
    assert alone.cwnd_bytes == 2_500_000 + 125_000
    assert alone.start_rate_bps == 1e9 and alone.dcqcn.rp_byte_reset_bytes == 2_500_000
    four = AdaptiveParams.for_path(Path(20 * MS, 1e9, 25e9, FRAME, flows=4))
    assert four.target_queue_ns == 1 * MS  # the queue is the bottleneck's: not divided
    assert four.cwnd_bytes == 625_000 + 31_250
    assert (four.start_rate_bps, four.dcqcn.rp_ai_rate_bps) == (250e6, approx(5e6))


def test_start_rate_is_capped_by_the_line_rate_and_the_target_can_be_given():
    params = AdaptiveParams.for_path(Path(20 * MS, 1e9, 400e6, FRAME), target_queue_ns=3 * MS)
    assert params.start_rate_bps == 400e6 and params.dcqcn.rp_max_rate_bps == 400e6
    assert params.target_queue_ns == 3 * MS and params.cwnd_bytes == 2_500_000 + 375_000
    assert target_queue_for(PATH_A, 123) == 123 and target_queue_for(PATH_A) == TQ


def test_ecn_thresholds_start_marking_at_the_target_queue():
    assert ecn_thresholds(10e6, RTT, TQ, FRAME, 10**6) == (2 * FRAME, 4 * FRAME)  # ramp 2 frames > BDP / 7
    kmin, kmax = ecn_thresholds(1e9, 20 * MS, 1 * MS, FRAME, 2_500_000)
    assert kmin == 125_000  # 1 ms at 1 Gbit/s
    assert kmax == 125_000 + math.ceil(2_500_000 / 7)
    assert ecn_thresholds(1e9, 20 * MS, 1_000, FRAME, 10**6)[0] == 2 * FRAME  # never below two frames


def test_ecn_thresholds_clamp_to_the_buffer():
    assert ecn_thresholds(1e9, 20 * MS, 1 * MS, FRAME, 300_000) == (125_000, 300_000)
    assert ecn_thresholds(1e9, 20 * MS, 1 * MS, FRAME, 200_000) == (100_000, 200_000)  # kmin <= buffer / 2
    assert ecn_thresholds(1e9, 20 * MS, 1 * MS, FRAME, 3) == (1, 3)
    with pytest.raises(ValueError, match=re.escape("buffer_bytes must be at least 2 (room for Kmin < Kmax), got 1")):
        ecn_thresholds(1e9, 20 * MS, 1 * MS, FRAME, 1)


def test_longer_paths_get_a_higher_kmax_and_kmin_stays_below_it():
    kmaxes = []
    for rtt in (1 * MS, 5 * MS, 20 * MS, 50 * MS):
        target = target_queue_for(Path(rtt, 1e9, 25e9, FRAME))
        kmin, kmax = ecn_thresholds(1e9, rtt, target, FRAME, buffer_bytes=10**8)
        assert 0 < kmin < kmax <= 10**8 and kmin == max(2 * FRAME, math.ceil(1e9 * target / 8e9))
        kmaxes.append(kmax)
    assert kmaxes == sorted(kmaxes) and len(set(kmaxes)) == 4


def test_a_flow_starts_throttled_at_its_share_with_its_window():
    flow = Adaptive(P)
    assert isinstance(flow, CongestionControl)
    # the window is twice BDP + target queue
    assert (flow.rate_bps, flow.target_rate_bps, flow.next_timer_ns, flow.cwnd_bytes) == (S, S, None, 2 * 33_308)
    flow.on_send(7, FRAME)
    assert flow.next_timer_ns == 7 + RTT  # the increase timer runs from the first send


def test_the_increase_timer_fires_once_per_base_rtt_and_grows_the_rate_towards_line_rate():
    flow = started()
    flow.on_timer(RTT - 1)
    assert (flow.rate_bps, flow.next_timer_ns) == (S, RTT)
    rc = rt = S
    for event in range(1, 3 * F):
        flow.on_send(event * RTT - 1, 1)  # busy in every period: an idle one raises nothing (below)
        flow.on_timer(event * RTT + RTT // 2)
        assert flow.next_timer_ns == (event + 1) * RTT
        rt += 0.02 * S if event > F else 0  # F fast-recovery steps (nothing to recover), then additive
        rc = (rt + rc) / 2
        assert (flow.rate_bps, flow.target_rate_bps) == (approx(rc), approx(rt))
    assert flow.rate_bps > S


def busy_round_trips(flow: Adaptive, first: int, count: int) -> list[tuple[float, float]]:
    """(RC, RT) after each event of ``count`` round trips from ``first``, each sending a byte counter's worth
    of bytes (one byte event) before its timer step, as a flow at its share does."""
    trace = []
    for trip in range(first, first + count):
        flow.on_send(trip * RTT - 1, P.dcqcn.rp_byte_reset_bytes)
        trace.append((flow.rate_bps, flow.target_rate_bps))
        flow.on_timer(trip * RTT + RTT // 2)
        trace.append((flow.rate_bps, flow.target_rate_bps))
    return trace


def test_at_its_share_a_busy_flow_probes_additively_where_the_nic_would_hyper_increase():
    flow = started()
    rc = rt = S
    expected = []
    for event in range(1, 6 * F + 1):  # byte and timer events alternate: both counters pass F together
        high = (event + 1) // 2  # the byte counter leads by one
        rt += 0.02 * S if high > F else 0  # additive from the first step past F, never i * R_HAI
        rc = (rt + rc) / 2
        expected.append((approx(rc), approx(rt)))
    assert busy_round_trips(flow, 1, 3 * F) == expected
    nic = Adaptive(AdaptiveParams.for_path(PATH_A, mechanisms=["timers", "delay"]))  # the same knobs, no window
    nic.on_send(0, FRAME)
    nic.on_cnp(RTT // 2)
    busy_round_trips(nic, 1, 3 * F)
    assert nic.target_rate_bps > flow.target_rate_bps + 5 * 0.1 * S  # hyper increase: i * 10 % of S per event


def test_below_its_share_a_flow_hyper_increases_up_to_the_share_and_no_further():
    flow = started()
    flow.on_cnp(RTT + 1)
    flow.on_cnp(2 * RTT + 2)  # two cuts: RT is now below the share
    assert flow.target_rate_bps < S
    trace = busy_round_trips(flow, 3, 3 * F)
    targets = [rt for _, rt in trace]
    assert targets == sorted(targets) and S in targets  # the hyper steps stop at the share exactly...
    beyond = targets[targets.index(S):]
    assert beyond == [approx(S + 0.02 * S * i) for i in range(len(beyond))]  # ...then one AI step per event


def test_round_trips_in_which_the_flow_sent_nothing_raise_nothing():
    flow = started()
    flow.on_cnp(RTT + 1)  # a cut, so that there is something to recover
    rc = flow.rate_bps
    flow.on_timer(10 * RTT)  # nine periods without a packet
    assert (flow.rate_bps, flow.next_timer_ns) == (rc, 10 * RTT + 1)
    flow.on_send(10 * RTT, 1)
    flow.on_timer(10 * RTT + 1)  # the first period with a packet: the first fast-recovery step
    assert flow.rate_bps == approx((S + rc) / 2)
    nic = Adaptive(AdaptiveParams.for_path(PATH_A, mechanisms=["timers", "delay"]))  # no window: as the NIC
    nic.on_send(0, FRAME)
    nic.on_cnp(1)
    cut = nic.rate_bps
    nic.on_timer(5 * RTT + 1)
    assert nic.rate_bps > cut  # DCQCN's timer raises it whether the flow sends or not


def test_a_cnp_burst_within_one_rtt_cuts_once_and_one_a_rtt_later_cuts_again():
    flow = started()
    flow.on_cnp(RTT - 1)  # within one RTT of the start: none of this flow's marks can be back yet
    assert flow.rate_bps == S
    for i in range(20):
        flow.on_cnp(RTT + i * MS)  # the timer's first step at RTT changes nothing: RC = RT
    alpha = 0.5 * (1 - G)  # decayed once since the first send
    rc, rt, alpha = S * (1 - alpha / 2), S, (1 - G) * alpha + G
    assert (flow.rate_bps, flow.target_rate_bps, flow.alpha_at(RTT)) == (approx(rc), rt, approx(alpha))
    flow.on_send(2 * RTT - 1, 1)
    flow.on_cnp(2 * RTT)  # the timer step due then comes first, then the cut with alpha decayed once
    rc = (rt + rc) / 2
    alpha *= 1 - G
    rc, rt, alpha = rc * (1 - alpha / 2), rc, (1 - G) * alpha + G
    assert (flow.rate_bps, flow.target_rate_bps, flow.alpha_at(2 * RTT)) == (approx(rc), approx(rt), approx(alpha))
    assert flow.next_timer_ns == 3 * RTT


def test_a_reported_queue_above_the_target_cuts_by_the_swift_factor_at_most_once_per_rtt():
    flow = started()
    excess = 10 * MS
    factor = 1 - 0.8 * excess / (RTT + TQ + excess)  # base RTT + the reported queue
    flow.on_ack(RTT // 2, FRAME, RTT)  # the flow's smallest sample: its base
    now = RTT + 5
    flow.on_queue_delay(now, TQ + excess)
    rc, rt = S * factor, S
    assert (flow.rate_bps, flow.target_rate_bps, flow.next_timer_ns) == (approx(rc), rt, now + RTT)
    assert flow.alpha_at(now) == approx(0.5 * (1 - G))  # a delay cut is no ECN mark: alpha untouched
    flow.on_queue_delay(now + RTT - 1, TQ + excess)
    flow.on_cnp(now + RTT // 2)  # no CNP cut within one RTT of a delay cut
    flow.on_send(now + RTT // 2, 1)
    assert flow.rate_bps == approx(rc)
    flow.on_queue_delay(now + RTT, TQ + excess)  # the timer step due then, then the cut
    rc = (rt + rc) / 2
    rc, rt = rc * factor, rc
    assert (flow.rate_bps, flow.target_rate_bps) == (approx(rc), approx(rt))


def test_a_report_after_a_shallower_cnp_cut_in_the_same_rtt_deepens_that_cut_once():
    flow = started()
    flow.on_ack(RTT // 2, FRAME, RTT)
    flow.on_cnp(RTT + 1)  # alpha decayed once: a cut of 23 %
    rt = flow.target_rate_bps
    assert rt == S and flow.rate_bps == approx(S * (1 - 0.5 * (1 - G) / 2))
    excess = 20 * MS
    factor = 1 - 0.8 * excess / (RTT + TQ + excess)  # 0.66: deeper
    flow.on_queue_delay(RTT + 2, TQ + excess)  # the round trip's cut is the deeper of the two, from RT
    assert (flow.rate_bps, flow.target_rate_bps) == (approx(rt * factor), rt)
    flow.on_queue_delay(RTT + 3, TQ + 2 * excess)  # once per RTT: no deeper again
    assert flow.rate_bps == approx(rt * factor)
    flow.on_cnp(RTT + 4)  # nor does a CNP cut again
    assert flow.rate_bps == approx(rt * factor)
    shallow = started()
    shallow.on_ack(RTT // 2, FRAME, RTT)
    shallow.on_cnp(RTT + 1)
    cut = shallow.rate_bps
    shallow.on_queue_delay(RTT + 2, TQ + MS // 10)  # a report whose cut is shallower than the CNP's: none
    assert shallow.rate_bps == cut


def test_one_delay_cut_takes_at_most_max_decrease():
    flow = started()
    flow.on_ack(RTT // 2, FRAME, RTT)
    flow.on_queue_delay(RTT + 1, 9 * RTT)  # 1 - 0.8 * (180 - 6.6) / 200 = 0.31, clamped to 0.5
    assert flow.rate_bps == approx(S / 2)


def test_rtt_samples_cut_nothing_however_long():
    flow = started()
    rate = flow.rate_bps
    flow.on_ack(RTT // 2, FRAME, RTT)
    for i in range(1, 40):  # the round trip 10 ms over the target for 20 RTTs: ACKs queued on the way back
        flow.on_send(i * RTT // 2, 1)
        flow.on_ack(i * RTT // 2 + 1, FRAME, RTT + TQ + 10 * MS)
        assert flow.rate_bps >= rate
        rate = flow.rate_bps
    assert rate > S


def test_reports_at_or_below_the_target_never_cut():
    flow = started()
    rate = flow.rate_bps
    for i in range(1, 400):
        flow.on_send(i * RTT // 4, 1)
        flow.on_queue_delay(i * RTT // 4, TQ - (i % 4) * MS)
        assert flow.rate_bps >= rate
        rate = flow.rate_bps
    assert rate > 2 * S


def test_the_base_rtt_is_the_smallest_sample_and_before_any_the_probes():
    flow = started()
    flow.on_queue_delay(RTT + 1, TQ + 2 * MS)  # no sample yet: the probed RTT is the base
    assert flow.rate_bps == approx(S * (1 - 0.8 * 2 * MS / (RTT + TQ + 2 * MS)))
    flow = started()
    flow.on_ack(RTT // 2, FRAME, RTT - 2 * MS)
    assert flow.base_rtt_ns == RTT - 2 * MS and flow.rate_bps == S
    flow.on_queue_delay(RTT + 1, TQ + 2 * MS)
    assert flow.rate_bps == approx(S * (1 - 0.8 * 2 * MS / (RTT + TQ)))


def test_timeouts_and_naks_leave_the_rate_and_a_longer_loop_than_probed_widens_the_window():
    flow = started()
    flow.on_loss(RTT // 2)
    flow.on_timeout(RTT // 2 + 1)
    assert flow.rate_bps == S and flow.cwnd_bytes == 2 * P.cwnd_bytes
    flow.on_ack(RTT // 2 + 2, FRAME, 2 * RTT)  # the end hosts add a probe's RTT again: the window doubles
    assert flow.base_rtt_ns == 2 * RTT and flow.cwnd_bytes == 4 * P.cwnd_bytes
    flow.on_ack(RTT // 2 + 3, FRAME, RTT // 2)  # shorter than probed: back to 2x, never below
    assert flow.base_rtt_ns == RTT // 2 and flow.cwnd_bytes == 2 * P.cwnd_bytes


def test_the_rate_stays_between_min_rate_and_line_rate_and_the_window_moves_only_with_rtt_samples():
    flow = started()
    floor = P.dcqcn.rp_min_rate_bps  # S / 1000, checked above
    now = 0
    for _ in range(40):
        now += RTT
        flow.on_cnp(now)
        assert flow.rate_bps >= floor and flow.cwnd_bytes == 2 * P.cwnd_bytes
    assert floor <= flow.rate_bps < S / 100
    for _ in range(3000):
        now += RTT
        flow.on_send(now, P.dcqcn.rp_byte_reset_bytes)
        flow.on_timer(now)
        assert flow.rate_bps <= flow.target_rate_bps <= LINE and flow.cwnd_bytes == 2 * P.cwnd_bytes
    assert flow.target_rate_bps == LINE and flow.rate_bps == pytest.approx(LINE)


@pytest.mark.parametrize(("fields", "message"), [
    (dict(base_rtt_ns=0), "base_rtt_ns must be a positive finite number, got 0"),
    (dict(bottleneck_bps=math.nan), "bottleneck_bps must be a positive finite number, got nan"),
    (dict(line_rate_bps=math.inf), "line_rate_bps must be a positive finite number, got inf"),
    (dict(frame_bytes=-1), "frame_bytes must be a positive finite number, got -1"),
    (dict(flows=0), "flows must be a positive finite number, got 0"),
])
def test_a_bad_path_is_refused_in_one_line(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(PATH_A, **fields)


@pytest.mark.parametrize(("options", "message"), [
    (dict(target_queue_ns=0), "target_queue_ns must be a positive finite number, got 0"),
    (dict(delay_beta=1.5), "delay_beta must be in (0, 1], got 1.5"),
    (dict(max_decrease=1), "max_decrease must be in (0, 1), got 1"),
    (dict(max_decrease=-0.1), "max_decrease must be a positive finite number, got -0.1"),
])
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AdaptiveParams.for_path(PATH_A, **options)


def test_a_start_rate_outside_the_dcqcn_bounds_and_bad_ecn_inputs_are_refused():
    with pytest.raises(ValueError, match=re.escape("start_rate_bps 200000000.0 is outside [rp_min_rate_bps")):
        dataclasses.replace(P, start_rate_bps=200e6)
    with pytest.raises(ValueError, match=re.escape("base_rtt_ns must be a positive finite number, got -1")):
        ecn_thresholds(1e9, -1, MS, FRAME, 10**6)


# -- each mechanism switchable on its own (issue 14's ablation) ----------------------------------------------

@settings(max_examples=60, deadline=None)
@given(events=EVENTS)
def test_with_no_mechanism_the_flow_decides_exactly_as_dcqcn(events):
    bare = Adaptive(AdaptiveParams.for_path(PATH_A, mechanisms=()))
    assert trace(bare, events, 1.0) == trace(Dcqcn(MLX5_FIRMWARE.at_line_rate(LINE)), events, 1.0)


def test_timers_alone_derive_the_knobs_but_start_unthrottled_without_a_window():
    flow = Adaptive(AdaptiveParams.for_path(PATH_A, mechanisms=["timers"]))
    assert flow.params == P.dcqcn  # every DCQCN knob from the path
    flow.on_send(0, FRAME)
    assert (flow.rate_bps, flow.cwnd_bytes, flow.next_timer_ns) == (LINE, None, None)  # as DCQCN before a CNP
    flow.on_queue_delay(MS, 10 * RTT)  # queueing far above the target: no delay signal without "delay"
    assert flow.rate_bps == LINE


def test_window_alone_starts_at_the_share_with_the_window_under_the_nics_timers():
    flow = Adaptive(AdaptiveParams.for_path(PATH_A, mechanisms=["window"]))
    assert flow.params == MLX5_FIRMWARE.at_line_rate(LINE)
    flow.on_send(0, FRAME)
    assert (flow.rate_bps, flow.cwnd_bytes) == (S, 2 * P.cwnd_bytes)
    assert flow.next_timer_ns == MLX5_FIRMWARE.rp_time_reset_ns  # the firmware's 300 us, not one RTT


def test_delay_alone_cuts_on_reported_queueing_from_line_rate_at_most_once_per_rtt():
    flow, twin = (Adaptive(AdaptiveParams.for_path(PATH_A, mechanisms=["delay"])) for _ in range(2))
    excess = 10 * MS
    for f in (flow, twin):
        f.on_send(0, FRAME)
        f.on_ack(RTT, FRAME, RTT)  # the base
        f.on_queue_delay(RTT + 1, TQ + excess)  # 10 ms above the target
    assert flow.rate_bps == approx(LINE * (1 - 0.8 * excess / (RTT + TQ + excess)))
    assert flow.cwnd_bytes is None
    for i in range(1, 8):  # the receiver's other reports of that round trip, one per RTT / 8, cut nothing,
        now = RTT + 1 + i * RTT // 8  # although the firmware's CNP guard (4 us) has long passed: the flow
        flow.on_queue_delay(now, TQ + excess)  # moves as its twin, which hears only of a queue at the target
        twin.on_queue_delay(now, TQ)
        assert (flow.rate_bps, flow.target_rate_bps) == (twin.rate_bps, twin.target_rate_bps)
    flow.on_queue_delay(2 * RTT + 1, TQ + excess)  # one RTT after the cut, the next
    twin.on_queue_delay(2 * RTT + 1, TQ)
    assert flow.rate_bps == approx(twin.rate_bps * (1 - 0.8 * excess / (RTT + TQ + excess)))


def test_an_unknown_mechanism_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^unknown mechanism pacing \(mechanisms: timers, window, delay\)$"):
        AdaptiveParams.for_path(PATH_A, mechanisms=["timers", "pacing"])
