"""Time dilation: the declared fabric, run k times slower, so that the emulator's CPU is never what is measured.

A user declares a real fabric (400 Gbit/s NICs, a 10 km DCI).  No emulator moves 400 Gbit/s of 4 KB packets
in Python, and when the host cannot keep up, what a run measures is the host's CPU, not the network (under
TCG the ranks' transport moves ~2,000 packets/s per vCPU; a scheduling stall of a few milliseconds is as
long as a short DCI's whole round trip).  So the testbed runs the fabric ``k`` times slower in every respect
the model has, as time-dilated emulators do (Gupta et al., "To Infinity and Beyond: Time-Warped Network
Emulation", NSDI 2006; DieCast, NSDI 2008; VT-Mininet; SELENA, ANCS 2014):

    divided by k        link rates (HTB), every congestion-control rate (line rate, AI, HAI, minimum rate,
                        pacing caps)
    multiplied by k     propagation delay and jitter (netem), every protocol timer (RTO initial/min/max, ACK
                        delay, DCQCN's rp_time_reset, alpha period, rate-reduce monitor period, CNP guard,
                        Swift's targets), the controller's probes and loop, telemetry timestamps
    unchanged           bytes and packets (buffers, netem limits, RED/ECN thresholds, byte counters,
                        windows, message sizes), probabilities (loss, burst length, reordering, duplication,
                        corruption), and so every dimensionless quantity the dynamics depend on: BDP in bytes
                        and in packets, buffer / BDP, thresholds in bytes, timer / RTT, message / BDP

The one thing not dilated is the CPU's own cost per packet, which is the point: relative to the network it
shrinks k-fold.  VT-Mininet's users found that tc's rates and delays were not dilated with the processes;
here the testbed owns every knob, so each layer converts at one boundary:

- kernel links: ``LinkConfig.dilated`` when a link is built or changed (``testbed.net.link``);
- transport and congestion control: the rank process (``testbed.collective.rank``) and the queue-pair API
  (``testbed.roce.queue_pair``) run ``TransportConfig.dilated`` and ``controllers.dilated.Dilated``; the
  algorithms themselves stay in declared units (DCQCN's knobs are the firmware's);
- what is measured is converted back once, where it is measured (rank timings, probes, telemetry, capture
  analysis), so everything a user reads is in declared units.

``dilation`` is k, a float >= 1; 1 is real time.
"""

import math

MAX_DILATION = 1e6  # beyond this a declared microsecond lasts a second: nothing the testbed measures needs more


def check(dilation: float) -> float:
    """``dilation`` if it is a usable k, else a one-line ValueError naming it."""
    if isinstance(dilation, bool) or not isinstance(dilation, (int, float)) or not math.isfinite(dilation) \
            or not 1 <= dilation <= MAX_DILATION:
        raise ValueError(f"dilation {dilation!r} must be a number from 1 (real time) to {MAX_DILATION:g}")
    return float(dilation)


def header(dilation: float) -> str:
    """The line a run prints first and its report repeats, so no figure is read in the wrong time."""
    if dilation == 1:
        return "# dilation 1: real time"
    return f"# dilation {dilation:g}: emulated {dilation:g}x slower; every figure in declared time"


# the busiest link may need at most this share of the measured packet budget: at 0.41 (k 6,800) the default
# comparison's DCI dequeued 0.89-0.92 of its rate while backlogged under TCG, and its verdicts asked for k
# 7,100-7,300 (0.38-0.39); the forwarding kernel shares the vCPUs with the ranks
AUTO_SHARE = 0.3
# a rank's event loop may wake at most this share of the fabric's shortest base RTT (wall time) late, at p99:
# beyond, RTT samples and control loops see the emulator's delays (``testbed.observe.fidelity``)
MAX_LATE_RTT = 0.1
# the run's lateness against the calibration's: paced ranks on loopback measured 1.9-10.1 ms at p99 under TCG
# (four ranks, 2026-12-07), a distance sweep's runs 5-16 ms (the kernel's forwarding, the telemetry sampler
# and the controller share the vCPUs with the ranks there); 3x keeps the largest run below the bound from a
# typical calibration (3-5 ms), and the verdict still judges every run
LATE_MARGIN = 3.0
E6 = (1.0, 1.5, 2.2, 3.3, 4.7, 6.8)  # the preferred numbers k is rounded up to: stable across calibrations


def auto(budget_pps: float, busiest_pps: float, share: float = AUTO_SHARE, late_p99_s: float = 0.0,
         shortest_rtt_s: float | None = None) -> float:
    """The smallest k, rounded up to a number of the E6 series (so two calibrations a few percent apart pick
    the same k, and k never exceeds what is needed by 1.5x), at which both (1) the busiest link's declared
    packet rate, divided by k, is at most ``share`` of the transport's measured budget (packets/s per rank),
    and (2) the event loop's measured lateness ``late_p99_s`` (wall time, which k does not shrink), times
    ``LATE_MARGIN``, is at most ``MAX_LATE_RTT`` of the fabric's shortest base RTT between sites times k (no
    such bound for ``shortest_rtt_s`` None: one site)."""
    for name, value in (("budget_pps", budget_pps), ("busiest_pps", busiest_pps), ("share", share)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}")
    return rounded_up(max(busiest_pps / (share * budget_pps), late_dilation(late_p99_s, shortest_rtt_s)))


def late_dilation(late_p99_s: float, shortest_rtt_s: float | None) -> float:
    """The k the lateness asks for alone (0 without an RTT between sites): see ``auto``."""
    if not shortest_rtt_s:
        return 0.0
    if not (math.isfinite(late_p99_s) and late_p99_s >= 0 and math.isfinite(shortest_rtt_s) and shortest_rtt_s > 0):
        raise ValueError(f"lateness {late_p99_s} s and RTT {shortest_rtt_s} s must be finite, >= 0 and > 0")
    return LATE_MARGIN * late_p99_s / (MAX_LATE_RTT * shortest_rtt_s)


def rounded_up(needed: float) -> float:
    """The smallest k of the E6 series (and at least 1) that is at least ``needed``."""
    if needed <= 1:
        return 1.0
    decade = 10 ** math.floor(math.log10(needed))
    for step in (*E6, 10.0):
        if step * decade >= needed * (1 - 1e-9):
            return check(round(step * decade, 9))
    raise AssertionError("unreachable: 10 x decade exceeds needed")
