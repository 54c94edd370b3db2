"""The fidelity verdict from synthetic telemetry: each bound, what breaks it, and the k it asks for."""

import pandas as pd
import pytest

from testbed.observe.fidelity import CHECKS, Verdict, dci_rate, verdicts
from testbed.observe.telemetry import QUEUE_COLUMNS, RANK_COLUMNS
from testbed.roce.nic import Lateness

FRAME = 4154
RATE = 400e9  # declared


def queues(mode: str, sent_share: float, backlog: int = 10 * FRAME, samples: int = 20, every_s: float = 1e-5,
           start_s: float = 0.0) -> list[list]:
    """A DCI egress sampled every ``every_s`` declared (10 us: the 10 ms asked, at k 1000), sending
    ``sent_share`` of its rate while ``backlog`` waits."""
    rows, sent = [], 0.0
    for i in range(samples):
        t_s = start_s + i * every_s
        rows.append([t_s, mode, "westb", "eastb", "westb-eth1", "west-east", RATE, backlog, backlog // FRAME,
                     backlog * 8e3 / RATE, round(sent), 0, 0, 0])
        sent += sent_share * RATE / 8 * every_s
    return rows


def ranks(mode: str, demand: float, late_p99_us: float, dwell_max_us: float = 100.0) -> list[list]:
    return [[0.1, mode, 1 << 20, False, rank, 1000.0, 1000.0 * demand, 0.0, demand, 500, 50.0, late_p99_us,
             late_p99_us, 400, 20.0, 50.0, dwell_max_us] for rank in range(4)]


def judge(queue_rows, rank_rows, achieved_ms=10.0, k=1000.0):
    return verdicts(pd.DataFrame(queue_rows, columns=QUEUE_COLUMNS), pd.DataFrame(rank_rows, columns=RANK_COLUMNS),
                    {"interval_ms": 10.0, "achieved_interval_ms": achieved_ms}, base_rtt_s=1e-4, dilation=k,
                    frame_bytes=FRAME)


def test_a_run_that_kept_every_promise_is_faithful():
    (verdict,) = judge(queues("baseline", 0.99), ranks("baseline", 0.3, 2_000))  # 2 ms late of a 100 ms wall RTT
    assert verdict.faithful and verdict.text == "faithful" and verdict.needed_dilation == 1000
    assert verdict.values["dci_rate"] == pytest.approx(0.99)
    assert verdict.values["loop_late"] == pytest.approx(0.02)
    assert verdict.values["host_stall"] == pytest.approx(2e-6 / 0.01)  # 2 ms of wall time at k 1000


@pytest.mark.parametrize("queue_share, demand, late_us, dwell_us, achieved_ms, broken, needed", [
    (0.80, 0.3, 2_000, 100, 10, "DCI rate while backlogged, of its set rate 0.8 (min 0.95)", 1000 * 0.95 / 0.8),
    (0.99, 0.97, 2_000, 100, 10, "rank CPU demand 0.97 (max 0.8)", 1000 * 0.97 / 0.8),
    (0.99, 0.3, 30_000, 100, 10, "event-loop lateness p99, of the base RTT 0.3 (max 0.1)", 3000),
    # a socket left unread 7.5 s of wall time at k 1000: 7.5 ms declared, 0.75 of the 10 ms RTO floor
    (0.99, 0.3, 2_000, 7_500_000, 10, "longest host stall, of the RTO floor 0.75 (max 0.5)", 1500),
    (0.99, 0.3, 2_000, 100, 50, "telemetry interval, of the one asked 5 (max 2)", 2500),
])
def test_each_broken_bound_names_itself_and_the_k_that_would_keep_it(queue_share, demand, late_us, dwell_us,
                                                                     achieved_ms, broken, needed):
    (verdict,) = judge(queues("m", queue_share, every_s=achieved_ms / 1e6), ranks("m", demand, late_us, dwell_us))
    assert not verdict.faithful
    assert verdict.text == f"emulator-limited: {broken}"
    assert verdict.needed_dilation == pytest.approx(needed)


def test_modes_are_judged_apart_in_the_order_they_ran():
    result = judge(queues("baseline", 0.99) + queues("adaptive", 0.5), ranks("baseline", 0.3, 10) +
                   ranks("adaptive", 0.3, 10))
    assert [(v.mode, v.faithful) for v in result] == [("baseline", True), ("adaptive", False)]


def test_each_mode_is_judged_on_its_own_samples_not_on_the_whole_telemetrys_average():
    """A first mode sampled late (4x the interval) and a second on time: the second is not charged with the
    first's lag, whatever the whole telemetry's average; without queue samples that average is what is left."""
    late = queues("baseline", 0.99, every_s=4e-5)
    result = judge(late + queues("adaptive", 0.99, start_s=late[-1][0] + 1e-5), ranks("baseline", 0.3, 10) +
                   ranks("adaptive", 0.3, 10), achieved_ms=25.0)
    assert [(v.mode, v.values["sampler"]) for v in result] == [("baseline", pytest.approx(4)),
                                                                 ("adaptive", pytest.approx(1))]
    (alone,) = judge([], ranks("m", 0.3, 10), achieved_ms=25.0)
    assert alone.values["sampler"] == pytest.approx(2.5) and not alone.faithful


def test_a_queue_that_never_stayed_backlogged_says_nothing_about_the_rate():
    rows = queues("m", 0.2, backlog=FRAME)  # one frame: it may drain between samples, no claim on the rate
    assert dci_rate(pd.DataFrame(rows, columns=QUEUE_COLUMNS), FRAME) is None
    (verdict,) = judge(rows, ranks("m", 0.3, 10))
    assert verdict.values["dci_rate"] is None and verdict.faithful


def test_a_link_at_its_rate_sampled_every_frame_and_a_half_keeps_its_rate():
    """The counter moves whole frames: per interval 1 or 2 frames for 1.5 frame times (a ratio of 0.67 or
    1.33).  Judged over stretches of 40 frames and more, the link that kept its rate is at its rate."""
    rate, interval = 250e6 / 150, 1.5 * FRAME * 8 / (250e6 / 150)  # k 150: a frame takes 20 ms
    rows = [[i * interval, "m", "westb", "eastb", "westb-eth1", "west-east", rate, 10 * FRAME, 10, 0.0,
             FRAME * int(i * 1.5), 0, 0, 0] for i in range(400)]
    assert dci_rate(pd.DataFrame(rows, columns=QUEUE_COLUMNS), FRAME) == pytest.approx(1.0, abs=0.025)
    per_interval = [(FRAME * (int((i + 1) * 1.5) - int(i * 1.5))) / (1.5 * FRAME) for i in range(399)]
    assert sorted(per_interval)[len(per_interval) // 2] == pytest.approx(2 / 3)  # what a median of these said


def test_every_check_has_a_verdict_row():
    row = Verdict("m", 10.0, {name: None for name, *_ in CHECKS}).row()
    assert set(row) == {"mode", "dilation", "dci_rate", "rank_cpu", "loop_late", "host_stall", "sampler", "verdict",
                        "needed_dilation"}


def test_lateness_quantiles_come_from_quarter_octave_buckets():
    late = Lateness()
    for ns in [500] * 90 + [10_000] * 9 + [1_000_000]:
        late.record(ns)
    assert late.quantile(0.5) == 1000  # the first bucket: at most 1 us
    assert 10_000 <= late.quantile(0.99) <= 10_000 * 2 ** 0.25
    summary = late.take()
    assert summary["wakeups"] == 100 and summary["late_max_us"] == 1000.0
    assert late.take()["wakeups"] == 0  # taking starts afresh
    dwell = Lateness("dwell", "reads")
    dwell.record(2_000_000)
    assert dwell.take() == {"reads": 1, "dwell_p50_us": 2000.0, "dwell_p99_us": 2000.0, "dwell_max_us": 2000.0}
