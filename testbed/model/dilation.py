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
E6 = (1.0, 1.5, 2.2, 3.3, 4.7, 6.8)  # the preferred numbers k is rounded up to: stable across calibrations


def auto(budget_pps: float, busiest_pps: float, share: float = AUTO_SHARE) -> float:
    """The k at which the busiest link's declared packet rate, divided by k, is at most ``share`` of the
    transport's measured budget (packets/s per rank), rounded up to a number of the E6 series (so two
    calibrations a few percent apart pick the same k, and k never exceeds what is needed by 1.5x)."""
    for name, value in (("budget_pps", budget_pps), ("busiest_pps", busiest_pps), ("share", share)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}")
    return rounded_up(busiest_pps / (share * budget_pps))


def rounded_up(needed: float) -> float:
    """The smallest k of the E6 series (and at least 1) that is at least ``needed``."""
    if needed <= 1:
        return 1.0
    decade = 10 ** math.floor(math.log10(needed))
    for step in (*E6, 10.0):
        if step * decade >= needed * (1 - 1e-9):
            return check(round(step * decade, 9))
    raise AssertionError("unreachable: 10 x decade exceeds needed")
