"""The rate check's verdict from synthetic probe results: ok, off, or not measurable here (why, and the k)."""

import math

import pytest

from testbed.commands.run import checks_status
from testbed.experiments.checks import CHUNK_FRAMES, RateCheck, reading_s, too_short
from testbed.model.units import frame_bytes
from testbed.results.tables import rate_table

EXPECTED = 49.77  # a 50 Mbit/s DCI's UDP goodput in 9000-byte frames


def probe(measured: float, sent: float = 1.2 * EXPECTED, delivered: float | None = 1.0, k: float = 4.0) -> RateCheck:
    return RateCheck("west-east", "westh1", "easth1", 50.0, EXPECTED, measured, 0.0, 0, k, sent_mbps=sent,
                     delivered=delivered)


def test_a_faithful_probe_within_tolerance_passes_and_outside_fails():
    assert probe(EXPECTED * 0.95).verdict == "ok" and probe(EXPECTED * 0.95).ok is True
    low = probe(EXPECTED * 0.75)  # its sender drove the rate, its receiver took what the DCI sent: the link
    assert low.probe.faithful and low.ok is False and low.verdict == "off"


def test_a_sender_that_could_not_drive_the_rate_is_not_measurable_with_the_k_that_would_be():
    check = probe(EXPECTED * 0.72, sent=EXPECTED * 0.8)
    assert check.ok is None
    assert check.verdict.startswith("not measurable here (emulator-limited: the probe's sender reached")
    assert check.probe.needed_dilation == pytest.approx(4.0 / 0.8)  # its packets per second scale as 1 / k
    assert f"k >= {4.0 / 0.8:.3g} would make it measurable" in check.verdict


def test_a_receiver_that_lost_what_the_dci_sent_is_not_measurable():
    check = probe(EXPECTED * 0.8, delivered=0.8)
    assert check.ok is None and "receiver took, of what the DCI sent 0.8" in check.verdict
    assert check.probe.needed_dilation == pytest.approx(4.0 * 0.95 / 0.8)
    assert probe(EXPECTED * 0.8, delivered=0.0).probe.needed_dilation == math.inf


def test_a_high_reading_fails_whatever_the_probe_did():
    """A probe that cannot keep up reads low, never high: too much rate is the link's fault."""
    check = probe(EXPECTED * 1.3, sent=EXPECTED * 0.5, delivered=0.5)
    assert not check.probe.faithful and check.ok is False


def test_readings_hold_enough_frames_at_any_k():
    assert reading_s(50.0, 9000, 1.0) == 0.5  # 347 frames per 0.5 s
    frames_per_s = 50e6 / 8 / frame_bytes(9000)
    for k in (10.0, 100.0, 1000.0):
        assert reading_s(50.0, 9000, k) * frames_per_s / k >= CHUNK_FRAMES * (1 - 1e-9)


def test_a_probe_too_short_for_a_reading_names_the_seconds_and_the_k_that_would_do():
    reading = reading_s(50.0, 9000, 100.0)  # 5.8 s of wall time for 40 frames at k 100
    why = too_short(1.0, reading, 100.0)
    assert f"--seconds {2 * reading:.3g}" in why and f"k <= {100.0 * 0.5 / reading:.3g}" in why  # 0.5 s readings
    assert too_short(2 * reading, reading, 100.0) == ""
    assert "k <=" not in too_short(0.5, 0.5, 1.0)  # a reading is 0.5 s at least: only --seconds helps
    beyond = too_short(1e4, reading_s(50.0, 9000, 1e4), 1e4)  # past iperf3's 60 s reading: only a smaller k
    assert beyond.split("; ")[1].startswith("k <= ")


def test_only_real_failures_set_the_exit_status_and_unmeasured_ones_are_said(capsys):
    unmeasured = RateCheck("west-east", "westh1", "easth1", 50.0, EXPECTED, math.nan, math.nan, 0, 100.0,
                           unreadable=too_short(1.0, reading_s(50.0, 9000, 100.0), 100.0))
    rows = [{"dci": c.dci, "src": c.src, "dst": c.dst, "configured_mbps": 50.0, "expected_mbps": EXPECTED,
             "measured_mbps": c.measured_mbps, "error_pct": c.error_pct, "out_of_order": 0, "ok": c.ok,
             "verdict": c.verdict} for c in (unmeasured, probe(EXPECTED * 0.7, sent=EXPECTED * 0.7))]
    assert checks_status({"dci_rate": rows}) == 0
    assert "2 check(s) not measurable on this host" in capsys.readouterr().err
    assert rows[0]["verdict"] in rate_table(rows).caption
    assert checks_status({"dci_rate": [*rows, {**rows[0], "ok": False}]}) == 1
