"""DCQCN against the paper's update equations on synthetic event sequences.

Every expected value is computed here from the equations (iterating the recurrences), not by the code under
test.  Times are ns, rates bits/s.
"""

import dataclasses
import math
import re

import pytest

from controllers.dcqcn import CnpPacer, Dcqcn, DcqcnParams

P = DcqcnParams()
G, K, T, B, F = P.rp_dce_tcp_g, P.rp_dce_tcp_rtt_ns, P.rp_time_reset_ns, P.rp_byte_reset_bytes, P.rp_threshold
LINE, AI, HAI = P.rp_max_rate_bps, P.rp_ai_rate_bps, P.rp_hai_rate_bps
US = 1_000


def approx(value):
    return pytest.approx(value, rel=1e-12)


def cut(rc: float, alpha: float) -> tuple[float, float, float]:
    """Equation (1): the new (RC, RT, alpha) after a CNP."""
    return max(P.rp_min_rate_bps, rc * (1 - alpha / 2)), rc, (1 - G) * alpha + G


def test_defaults_are_the_published_values():
    assert (G, K, F, B) == (1 / 256, 55 * US, 5, 10_000_000)  # paper
    assert P.np_min_time_between_cnps_ns == 50 * US and P.rp_initial_alpha_value == 1.0  # paper
    assert (T, AI, HAI, P.rp_min_rate_bps) == (300 * US, 5e6, 50e6, 1e6)  # mlx5
    assert P.rp_rate_reduce_monitor_period_ns == 4 * US and LINE == 40e9


def test_a_flow_is_unthrottled_until_its_first_cnp():
    flow = Dcqcn()
    flow.on_send(0, 50 * B)
    flow.on_timer(10**9)
    assert (flow.rate_bps, flow.target_rate_bps, flow.next_timer_ns) == (LINE, LINE, None)
    assert flow.alpha_at(10**9) == 1.0


def test_a_cnp_cuts_rc_by_alpha_over_two_and_sets_rt_to_the_old_rc():
    flow = Dcqcn(DcqcnParams(rp_initial_alpha_value=0.5))
    flow.on_cnp(1_000)
    assert flow.target_rate_bps == LINE
    assert flow.rate_bps == approx(LINE * (1 - 0.25))
    assert flow.alpha_at(1_000) == approx((1 - G) * 0.5 + G)
    assert flow.next_timer_ns == 1_000 + T


def test_alpha_rises_with_each_cnp_and_every_cut_uses_the_alpha_before_it():
    flow = Dcqcn(DcqcnParams(rp_initial_alpha_value=0.1))
    rc, alpha = LINE, 0.1
    for i in range(20):  # 10 us apart: past the 4 us monitor period, inside one 55 us alpha period
        now = i * 10 * US
        flow.on_cnp(now)
        previous_alpha = alpha
        rc, rt, alpha = cut(rc, alpha)
        assert alpha > previous_alpha
        assert (flow.rate_bps, flow.target_rate_bps, flow.alpha_at(now)) == (approx(rc), approx(rt), approx(alpha))


def test_alpha_decays_once_per_alpha_period_without_a_cnp():
    flow = Dcqcn(DcqcnParams(rp_initial_alpha_value=0.5, rp_time_reset_ns=10**9))  # keep the increase timer out
    flow.on_cnp(0)
    rc, _, alpha = cut(LINE, 0.5)
    assert flow.alpha_at(K - 1) == approx(alpha)
    decayed = alpha
    for period in range(1, 8):
        decayed *= 1 - G
        assert flow.alpha_at(period * K) == approx(decayed)
        assert flow.alpha_at(period * K + K - 1) == approx(decayed)
    flow.on_cnp(7 * K + 3)  # the cut uses the decayed alpha, then raises it
    rc, rt, alpha = cut(rc, decayed)
    assert (flow.rate_bps, flow.target_rate_bps, flow.alpha_at(7 * K + 3)) == (approx(rc), approx(rt), approx(alpha))


def test_a_repeat_cnp_within_the_monitor_period_is_ignored():
    flow = Dcqcn()
    flow.on_cnp(0)
    state = (flow.rate_bps, flow.target_rate_bps, flow.alpha_at(0), flow.next_timer_ns)
    flow.on_cnp(P.rp_rate_reduce_monitor_period_ns - 1)
    assert (flow.rate_bps, flow.target_rate_bps, flow.alpha_at(0), flow.next_timer_ns) == state
    flow.on_cnp(P.rp_rate_reduce_monitor_period_ns)
    assert flow.rate_bps == approx(LINE / 4)


def two_cuts() -> tuple[Dcqcn, float, float]:
    """A flow cut twice (so RT < line rate), with its RC and RT."""
    flow = Dcqcn()
    flow.on_cnp(0)
    flow.on_cnp(10 * US)
    rc, _, alpha = cut(LINE, 1.0)
    rc, rt, _ = cut(rc, alpha)
    return flow, rc, rt


def test_fast_recovery_halves_the_gap_to_rt_for_f_timer_events_then_additive_increase():
    flow, rc, rt = two_cuts()
    start, gap = 10 * US, rt - rc
    for event in range(1, F + 1):
        flow.on_timer(start + event * T)
        assert flow.target_rate_bps == rt
        assert rt - flow.rate_bps == approx(gap / 2**event)
    rc = flow.rate_bps
    for event in range(F + 1, F + 20):  # the timer alone never reaches hyper increase
        flow.on_timer(start + event * T)
        rt += AI
        rc = (rt + rc) / 2
        assert (flow.rate_bps, flow.target_rate_bps) == (approx(rc), approx(rt))


def test_hyper_increase_once_both_timer_and_byte_counter_pass_f():
    flow, rc, rt = two_cuts()
    start = 10 * US
    for byte_event in range(1, F + 2):  # byte-counter events 1..F recover fast, event F + 1 adds R_AI
        flow.on_send(start + 1, B)
        rt += AI if byte_event > F else 0
        rc = (rt + rc) / 2
    assert (flow.rate_bps, flow.target_rate_bps) == (approx(rc), approx(rt))
    timer_events, byte_events, steps = 0, F + 1, []
    for timer_event in range(1, F + 5):  # then timer and byte counter take turns
        for counter in ("timer", "bytes"):
            if counter == "timer":
                timer_events += 1
                flow.on_timer(start + timer_event * T)
            else:
                byte_events += 1
                flow.on_send(start + timer_event * T + 1, B)
            least = min(timer_events, byte_events)
            steps.append(AI if least <= F else (least - F) * HAI)
            rt += steps[-1]
            rc = (rt + rc) / 2
            assert (flow.rate_bps, flow.target_rate_bps) == (approx(rc), approx(rt))
    assert steps == [AI] * 10 + [HAI] * 2 + [2 * HAI] * 2 + [3 * HAI] * 2 + [4 * HAI] * 2


def test_bytes_sent_before_a_cut_do_not_count_after_it():
    flow = Dcqcn()
    flow.on_cnp(0)
    flow.on_send(1, B - 1)
    flow.on_cnp(10 * US)
    rc, rt = flow.rate_bps, flow.target_rate_bps
    flow.on_send(10 * US + 1, 1)
    assert flow.rate_bps == rc
    flow.on_send(10 * US + 2, B - 1)
    assert flow.rate_bps == approx((rt + rc) / 2)


def test_a_late_timer_call_applies_every_missed_expiry_in_order():
    flow = Dcqcn()
    flow.on_cnp(0)
    rc, rt, _ = cut(LINE, 1.0)
    flow.on_timer(3 * T + 5)
    for _ in range(3):
        rc = (rt + rc) / 2
    assert flow.rate_bps == approx(rc) and flow.next_timer_ns == 4 * T


def test_a_cnp_first_applies_the_increases_and_alpha_decay_due_before_it():
    flow = Dcqcn()
    flow.on_cnp(0)
    rc, rt, alpha = cut(LINE, 1.0)
    for _ in range(2):
        rc = (rt + rc) / 2
    now = 2 * T + 1
    flow.on_cnp(now)
    rc, rt, alpha = cut(rc, alpha * (1 - G) ** (now // K))
    assert (flow.rate_bps, flow.target_rate_bps, flow.alpha_at(now)) == (approx(rc), approx(rt), approx(alpha))
    assert flow.next_timer_ns == now + T


def test_the_rate_never_leaves_min_and_max():
    params = DcqcnParams().scaled_to(100e6)
    flow = Dcqcn(params)
    floor = params.rp_min_rate_bps
    for i in range(200):
        flow.on_cnp(i * 10 * US)
        assert flow.rate_bps >= floor
    assert flow.rate_bps == floor
    now = 200 * 10 * US
    for _ in range(3000):
        now += params.rp_time_reset_ns
        flow.on_send(now, params.rp_byte_reset_bytes)
        flow.on_timer(now)
        assert floor <= flow.rate_bps <= flow.target_rate_bps <= params.rp_max_rate_bps
    assert flow.target_rate_bps == params.rp_max_rate_bps
    assert flow.rate_bps == pytest.approx(params.rp_max_rate_bps)


def test_many_ce_packets_within_the_interval_yield_one_cnp():
    pacer = CnpPacer(P.np_min_time_between_cnps_ns)
    assert pacer.min_interval_ns == 50 * US
    sent = [now for now in range(0, 200 * US, 500) if pacer.on_ce(now)]  # a CE-marked packet every 0.5 us
    assert sent == [0, 50 * US, 100 * US, 150 * US]
    assert not pacer.on_ce(150 * US + 1)


def test_a_zero_interval_pacer_sends_a_cnp_per_ce_packet_and_a_negative_one_is_refused():
    pacer = CnpPacer(0)
    assert all(pacer.on_ce(now) for now in (0, 0, 1, 2))
    with pytest.raises(ValueError, match="min_interval_ns must be >= 0, got -1"):
        CnpPacer(-1)


def test_scaled_to_scales_rates_and_byte_counter_and_keeps_times():
    scaled = DcqcnParams().scaled_to(100e6)
    share = 100e6 / 40e9
    assert scaled.rp_max_rate_bps == 100e6
    assert (scaled.rp_min_rate_bps, scaled.rp_ai_rate_bps, scaled.rp_hai_rate_bps) == (
        approx(1e6 * share), approx(5e6 * share), approx(50e6 * share))
    assert scaled.rp_byte_reset_bytes == 25_000
    assert (scaled.rp_time_reset_ns, scaled.rp_dce_tcp_rtt_ns, scaled.np_min_time_between_cnps_ns) == (T, K, 50 * US)
    assert (scaled.rp_dce_tcp_g, scaled.rp_threshold) == (G, F)
    with pytest.raises(ValueError, match="line_rate_bps must be a positive finite number, got 0"):
        DcqcnParams().scaled_to(0)


def test_stretched_multiplies_every_time_knob_and_the_byte_counter_and_nothing_else():
    """Scaled to 10 Mbit/s and stretched by 40 Gbit/s / 10 Mbit/s, the byte counter is the NIC's 10 MB
    again: as many packets per increase event as at 40 Gbit/s."""
    base = DcqcnParams().scaled_to(10e6)
    stretched = base.stretched(4000)
    assert (stretched.rp_time_reset_ns, stretched.rp_dce_tcp_rtt_ns, stretched.np_min_time_between_cnps_ns,
            stretched.rp_rate_reduce_monitor_period_ns) == (4000 * T, 4000 * K, 4000 * 50 * US, 4000 * 4 * US)
    assert base.rp_byte_reset_bytes == 2_500 and stretched.rp_byte_reset_bytes == B == 10_000_000
    assert dataclasses.replace(stretched, rp_time_reset_ns=T, rp_dce_tcp_rtt_ns=K, np_min_time_between_cnps_ns=50 * US,
                               rp_rate_reduce_monitor_period_ns=4 * US, rp_byte_reset_bytes=2_500) == base
    with pytest.raises(ValueError, match="factor must be a positive finite number, got 0"):
        base.stretched(0)


@pytest.mark.parametrize(("fields", "message"), [
    (dict(rp_min_rate_bps=2e6, rp_max_rate_bps=1e6), "rp_min_rate_bps (2000000.0) exceeds rp_max_rate_bps"),
    (dict(rp_dce_tcp_g=0), "rp_dce_tcp_g must be in (0, 1], got 0"),
    (dict(rp_initial_alpha_value=1.5), "rp_initial_alpha_value must be in [0, 1], got 1.5"),
    (dict(rp_time_reset_ns=0), "rp_time_reset_ns must be > 0, got 0"),
    (dict(rp_ai_rate_bps=-1), "rp_ai_rate_bps must be a finite number >= 0, got -1"),
    (dict(rp_hai_rate_bps=math.nan), "rp_hai_rate_bps must be a finite number >= 0, got nan"),
])
def test_bad_parameters_are_refused_in_one_line(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DcqcnParams(**fields)
