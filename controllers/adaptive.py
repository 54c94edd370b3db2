"""Distance-adaptive congestion control: DCQCN's reaction point with every knob derived from the measured path,
plus a delay signal and a window.

Why: in a scale-across fabric the DCI loop is one base RTT (5-20 ms for 500-2000 km of fibre, 5 us/km each
way), a thousand times DCQCN's design RTT.  A reaction shows at the bottleneck only one RTT after it was
taken, so any timer shorter than an RTT acts on stale feedback: an increase timer of 300 us stacks ~60
steps before their effect is seen, a 4 us CNP guard cuts again for congestion already reacted to.  Every
time constant below is therefore the base RTT (or a fixed fraction of it), and every rate a fraction of the
flow's fair share of the measured bottleneck.

Inputs (``Path``, measured by the fabric controller): base RTT (min RTT), bottleneck rate C, the sender's
line rate, a full data frame on the wire, and the N flows of the job sharing the bottleneck that way.

  share        S   = C / N
  bdp              = S * RTT / 8                                  bytes one flow keeps in flight
  target queue Q_t = max(RTT / 20, 2 frames / C)                  ``target_queue_for``
                   A queueing delay of a twentieth of the propagation delay (Swift, Kumar et al.
                   SIGCOMM'20, holds the delay at a target a little above the path's base delay; over a
                   long path a fixed fraction of it keeps the queueing small relative to the loop), but
                   never below two frames at C: at emulated rates one 4 KB frame takes milliseconds, and a
                   queue cannot be held shorter than a packet or two.
  start rate       = min(line rate, S)                            no slow start over a 20 ms loop, no
                                                                  line-rate burst into the DCI buffer
  window           = ceil(bdp + S * Q_t / 8), >= 2 frames         ``window_bytes``: with feedback one RTT
                   late it is the window, not the rate, that bounds the queue: in flight never exceeds
                   BDP plus the target queue whatever the rate says.

DCQCN knobs (Zhu et al. SIGCOMM'15; names as in ``controllers.dcqcn``):
  rp_max_rate = line rate;  rp_min_rate = S / 1000
  rp_time_reset = RTT         one increase step per round trip: a step is judged one RTT later
  rp_dce_tcp_rtt (K) = RTT    alpha is an estimate of marks per window, updated per window as in DCTCP
  rp_dce_tcp_g = 1/16         DCTCP's g (Alizadeh et al. SIGCOMM'10), for an alpha updated once per RTT
  rp_rate_reduce_monitor_period = RTT
                              a CNP within one RTT of the last cut reports congestion from before the cut:
                              react at most once per RTT, as DCTCP does
  rp_byte_reset = max(frame, bdp)   one byte-counter event per window sent, i.e. per RTT at the share
  rp_ai_rate = 0.02 S;  rp_hai_rate = 0.1 S   2 % and 10 % of the share per step (hyper: up to the share, below)
  rp_threshold = 5 (DCQCN's F);  rp_initial_alpha = 0.5 (a first cut of 25 %: the flow starts at its
  share, so the first overshoot is small)
  np_min_time_between_cnps = RTT / 8   the receiver sends a few CNPs per RTT, not one per 50 us

Delay signal (TIMELY, Mittal et al. SIGCOMM'15: delay is a congestion signal; Swift: decrease in proportion
to the excess over a target).  The receiver measures the forward path's standing queueing delay q from
one-way delays (the smallest of the last half base RTT over the flow's smallest, LEDBAT's and Copa's
filters) and reports it, while q > Q_t, in a CNP (``controllers.forward_delay``, which says why).  With
base = the flow's smallest RTT sample:

  q > Q_t  ->  RC <- RC * max(1 - beta * (q - Q_t) / (base + q), 1 - max_decrease)

which is TIMELY's T_high rule and Swift's MD with target delay base + Q_t (beta 0.8, max_decrease 0.5 as
Swift's beta and max_mdf), with the forward queueing delay in place of the RTT's excess.  One way, not the
round trip: every DCI carries both directions, and an RTT sample carries the queue the flow's ACKs waited
in behind the other direction's data, which no cut of this flow drains (issue 14: senders whose own queue
was empty were cut by a quarter and two fifths with no CNP at all; measured after the change in the
README).  The standing minimum, not single samples: Q_t is 5 % of the RTT, and an end host's event-loop
lateness reaches a good part of that at p99 in a faithful run (issue 14, 100 km, k 470: 1.5 % of the RTT
per loop); cut by single samples, a sender under no CNP was reset every few round trips and never reached
hyper increase.  A delay cut is booked as a DCQCN cut (RT <- RC before it, stage counters and byte count
reset, increase timer restarted) except that alpha, an ECN estimate, is left as it is.  A delay cut comes
at most one base RTT after the previous cut of any kind (Swift's guard), also when ``timers`` is off and
CNPs follow the firmware's 4 us guard.  RTT samples still set the base and widen the window (below); they
cut nothing.

No increase while idle: DCQCN's timer raises the rate every rp_time_reset whether the flow sends or not, so
a flow that waited a few round trips for its next chunk (a collective's steps do) resumes well above the
rate the path last allowed and its first window overshoots the DCI queue: at 100 km (issue 14) the
adaptive senders came back from pauses of a few RTTs at 2.5-3.1 Gbit/s into a 2 Gbit/s DCI, their RTT rose
by 0.4-0.9 ms, and the marks and delay cuts that followed left them below their share for tens of RTTs.
As TCP's congestion window validation (RFC 7661: a window not used is not validated, so it does not grow),
a timer period in which the flow sent nothing raises nothing (nor counts towards fast recovery's stages):
the rate a flow resumes at is one the path carried.

Above the share, additive increase only.  DCQCN's hyper increase adds i * R_HAI per event once both
counters pass F, i growing with each event: at 100 km (issue 14) an adaptive sender that had held its
2 Gbit/s share for F round trips reached 2.56, 2.90, then 3.12 Gbit/s within about one RTT, and before the
first mark came back its in-flight bytes filled the window, a DCI queue of a full BDP (~1 ms, the measured
p99).  The share is measured, so the flow knows where the path's capacity is: hyper increase, the fast
climb back from far below it, stops at the share, and above it each event adds R_AI (2 % of the share), as
Swift's additive increase and CUBIC's slow growth near the last known maximum.  The queue p99 fell from
0.91-1.03 to 0.23-0.28 ms and the ratio to baseline rose from 0.97x to 0.99x (README).  The cost: a flow
whose share was underestimated (flows of the job idle) takes about 25 RTTs to double it.

A round trip's cut is the deeper of its signals.  The first CNPs of an episode cut by alpha / 2, with
alpha decayed to a few percent over the calm round trips before; such a cut would take the round trip's
only cut and the same round trip's delay report (a cut of a third for a queue of a BDP) would be lost.  So a
report that follows a CNP's cut within the guard lowers the rate to what its own cut from the rate before
(RT) gives, if that is lower, once.

Mechanisms, each switchable on its own (``AdaptiveParams.mechanisms``, the spec's ``mechanisms``; all by default),
so an ablation can measure what each buys (issue 14):

  timers   the DCQCN knobs above, derived from the path; without it the mlx5 firmware defaults
           (``dcqcn.MLX5_FIRMWARE``), what the baseline runs
  window   start at the share, keep in flight at most the window, raise the rate only for round trips in
           which the flow sent, and above the share only additively (below); without it the flow starts
           unthrottled at line rate, as DCQCN does, has no window, its timer raises the rate while it has
           nothing to send, and it hyper-increases past its share
  delay    the delay signal; without it only CNPs cut (the fabric controller then asks the receivers for no
           delay reports, and a report that came anyway cuts nothing)
With none of them the flow makes DCQCN's decisions exactly (a property test holds them to it).  The fabric's
mechanisms, the DCI thresholds below and the latency loop (``controllers.latency``), are switched by the mode
(``testbed.experiments.modes``).

ECN marking on the DCI egress (``ecn_thresholds``): Kmin = Q_t * C / 8, marking starts at the target queue;
Kmax = Kmin + max(2 frames, C * RTT / 8 / 7).  DCTCP (its section 3.4) bounds the queue swing of flows that
cut once per RTT: its threshold K > C * RTT / 7 is the headroom that keeps the link busy through a round of
cuts.  The ramp spans that swing, so marking reaches Pmax only once the queue has overshot the target by
as much as one round of cuts takes back: small overshoots draw proportionally few marks, and the ramp
widens with the loop's length.  With a buffer of one BDP (the fabric's DCI default) and RTT / 20
setting the target, Kmax = (1/20 + 1/7) BDP, under a fifth of it: Pmax is reached well before tail drop.
A smaller buffer clamps Kmax to it and Kmin to at most half of it, so a ramp remains.  Inside sites the
fabric keeps its shallow defaults.
"""

import math
from dataclasses import dataclass, fields

from controllers.dcqcn import MLX5_FIRMWARE, Dcqcn, DcqcnParams

TARGET_RTT_FRACTION = 20  # target queue >= RTT / 20
MIN_QUEUE_FRAMES = 2  # ... and >= 2 frames, as are the window and Kmin
DCTCP_G = 1 / 16
DCTCP_HEADROOM = 7  # K > C * RTT / 7
INITIAL_ALPHA = 0.5
AI_SHARE, HAI_SHARE, MIN_RATE_SHARE = 0.02, 0.1, 1e-3
CNPS_PER_RTT = 8
WINDOW_GAIN = 2  # the flow's window: twice BDP + target queue (see Adaptive)
MECHANISMS = ("timers", "window", "delay")  # the sender's, each switchable (module docstring)


def check_positive(name: str, value: float) -> None:
    """Raise a one-line ValueError naming ``name`` unless ``value`` is a positive finite number."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")


@dataclass(frozen=True)
class Path:
    """What the fabric controller measured for one sender -> receiver path."""

    base_rtt_ns: int  # minimum RTT
    bottleneck_bps: float
    line_rate_bps: float  # the sender NIC's
    frame_bytes: int  # one full data frame on the wire
    flows: int = 1  # flows of the same job sharing the bottleneck in this direction

    def __post_init__(self) -> None:
        for item in fields(self):
            check_positive(item.name, getattr(self, item.name))

    @property
    def share_bps(self) -> float:
        return self.bottleneck_bps / self.flows

    @property
    def bdp_bytes(self) -> float:
        """Bytes one flow keeps in flight at its share over the base RTT."""
        return self.share_bps * self.base_rtt_ns / 8e9


def target_queue_for(path: Path, target_queue_ns: int | None = None) -> int:
    """``target_queue_ns`` if given, else the default: max(RTT / 20, 2 frames at the bottleneck rate)."""
    if target_queue_ns is not None:
        return target_queue_ns
    two_frames_ns = math.ceil(MIN_QUEUE_FRAMES * path.frame_bytes * 8e9 / path.bottleneck_bps)
    return max(path.base_rtt_ns // TARGET_RTT_FRACTION, two_frames_ns)


def window_bytes(path: Path, target_queue_ns: int) -> int:
    """BDP at the share plus the target queue at the share, at least 2 frames."""
    window = math.ceil(path.bdp_bytes + path.share_bps * target_queue_ns / 8e9)
    return max(MIN_QUEUE_FRAMES * path.frame_bytes, window)


def ecn_thresholds(bottleneck_bps: float, base_rtt_ns: int, target_queue_ns: int, frame_bytes: int,
                   buffer_bytes: int) -> tuple[int, int]:
    """(Kmin, Kmax) in bytes for RED on a DCI egress; see the module docstring for the rule."""
    for name, value in (("bottleneck_bps", bottleneck_bps), ("base_rtt_ns", base_rtt_ns),
                        ("target_queue_ns", target_queue_ns), ("frame_bytes", frame_bytes)):
        check_positive(name, value)
    if not (math.isfinite(buffer_bytes) and buffer_bytes >= 2):
        raise ValueError(f"buffer_bytes must be at least 2 (room for Kmin < Kmax), got {buffer_bytes}")
    kmin = max(MIN_QUEUE_FRAMES * frame_bytes, math.ceil(bottleneck_bps * target_queue_ns / 8e9))
    ramp = max(MIN_QUEUE_FRAMES * frame_bytes, math.ceil(bottleneck_bps * base_rtt_ns / 8e9 / DCTCP_HEADROOM))
    if kmin + ramp <= buffer_bytes:
        return kmin, kmin + ramp
    return min(kmin, buffer_bytes // 2), buffer_bytes


@dataclass(frozen=True)
class AdaptiveParams:
    """Knobs of ``Adaptive``; ``for_path`` derives them from a measured path."""

    dcqcn: DcqcnParams
    start_rate_bps: float
    cwnd_bytes: int
    base_rtt_ns: int
    target_queue_ns: int
    delay_beta: float = 0.8
    max_decrease: float = 0.5
    mechanisms: frozenset[str] = frozenset(MECHANISMS)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mechanisms) - set(MECHANISMS))
        if unknown:
            raise ValueError(f"unknown mechanism {', '.join(unknown)} (mechanisms: {', '.join(MECHANISMS)})")
        for name in ("start_rate_bps", "cwnd_bytes", "base_rtt_ns", "target_queue_ns", "delay_beta",
                     "max_decrease"):
            check_positive(name, getattr(self, name))
        if self.delay_beta > 1:  # so that 1 - beta * (rtt - base - target) / rtt stays positive
            raise ValueError(f"delay_beta must be in (0, 1], got {self.delay_beta}")
        if self.max_decrease >= 1:
            raise ValueError(f"max_decrease must be in (0, 1), got {self.max_decrease}")
        if not self.dcqcn.rp_min_rate_bps <= self.start_rate_bps <= self.dcqcn.rp_max_rate_bps:
            raise ValueError(f"start_rate_bps {self.start_rate_bps} is outside [rp_min_rate_bps, rp_max_rate_bps]"
                             f" = [{self.dcqcn.rp_min_rate_bps}, {self.dcqcn.rp_max_rate_bps}]")

    @classmethod
    def for_path(cls, path: Path, target_queue_ns: int | None = None, delay_beta: float = 0.8,
                 max_decrease: float = 0.5, mechanisms=MECHANISMS) -> "AdaptiveParams":
        """The knobs for ``path`` (formulas in the module docstring), with ``mechanisms`` on."""
        target = target_queue_for(path, target_queue_ns)
        share, rtt, mechanisms = path.share_bps, path.base_rtt_ns, frozenset(mechanisms)
        dcqcn = DcqcnParams(
            rp_max_rate_bps=path.line_rate_bps, rp_min_rate_bps=share * MIN_RATE_SHARE,
            rp_ai_rate_bps=share * AI_SHARE, rp_hai_rate_bps=share * HAI_SHARE, rp_time_reset_ns=rtt,
            rp_byte_reset_bytes=max(path.frame_bytes, math.ceil(path.bdp_bytes)), rp_threshold=5,
            rp_dce_tcp_g=DCTCP_G, rp_dce_tcp_rtt_ns=rtt, rp_initial_alpha_value=INITIAL_ALPHA,
            rp_rate_reduce_monitor_period_ns=rtt, np_min_time_between_cnps_ns=rtt // CNPS_PER_RTT,
        ) if "timers" in mechanisms else MLX5_FIRMWARE.at_line_rate(path.line_rate_bps)
        start = min(path.line_rate_bps, share) if "window" in mechanisms else path.line_rate_bps
        return cls(dcqcn=dcqcn, start_rate_bps=start, cwnd_bytes=window_bytes(path, target),
                   base_rtt_ns=rtt, target_queue_ns=target, delay_beta=delay_beta, max_decrease=max_decrease,
                   mechanisms=mechanisms)


class Adaptive(Dcqcn):
    """DCQCN from ``AdaptiveParams``, with a window and a delay signal.

    Unlike ``Dcqcn`` the flow starts at ``start_rate_bps`` and throttled: its first send counts as a cut to
    that rate (RT = RC, stage counters at zero, increase timer and alpha decay running from there), so it
    climbs towards line rate while the path allows.  No CNP can arrive within one base RTT of the first
    send, so the cut guard this sets costs nothing.  CNPs are DCQCN's; a receiver's report of a forward
    queueing delay above the target cuts by Swift's factor.
    Timeouts and NAKs leave the rate, as in DCQCN: go-back-N repairs them, and a timeout on a loaded end
    host is often spurious (the ECN and delay signals report congestion earlier than any timeout).  A delay
    cut comes at most once per base RTT; a CNP cut once per rp_rate_reduce_monitor_period (the base RTT
    with ``timers``, the firmware's 4 us without).

    The base RTT is the flow's own smallest sample, not the probe's: the transport's loop includes both end
    hosts' processing, which a ping does not see.  The window is a safety bound, twice
    ``window_bytes`` at the larger of the two RTTs: the paced rate holds the queue, the window only stops
    it growing past a BDP if the rate is wrong for a round trip (and it must exceed the receiver's ACK
    batch, or the flow stalls between ACKs).

    Each of these is one of the mechanisms (module docstring): without ``window`` the flow starts unthrottled
    and has no window, without ``delay`` queueing-delay reports cut nothing.

    Spec: ``path`` (``Path``'s fields), ``target_queue_ns`` (None: the default target) and ``mechanisms`` (a
    list; all when absent).
    """

    kind = "adaptive"

    def __init__(self, params: AdaptiveParams) -> None:
        super().__init__(params.dcqcn)
        self.adaptive_params = params
        self._windowed = "window" in params.mechanisms
        self._delay_cuts = "delay" in params.mechanisms
        if self._windowed:
            self._rc = self._rt = params.start_rate_bps
        self._min_rtt_ns: int | None = None
        self._last_send_ns: int | None = None
        self._cnp_cut = False  # the last cut was a CNP's, and no delay report has deepened it
        self._cwnd = WINDOW_GAIN * params.cwnd_bytes

    @classmethod
    def from_spec(cls, spec: dict) -> "Adaptive":
        return cls(AdaptiveParams.for_path(Path(**spec["path"]), spec.get("target_queue_ns"),
                                           mechanisms=spec.get("mechanisms", MECHANISMS)))

    @property
    def cwnd_bytes(self) -> int | None:
        return self._cwnd if self._windowed else None

    @property
    def base_rtt_ns(self) -> int | None:
        """The flow's smallest RTT sample so far (None before the first)."""
        return self._min_rtt_ns

    def on_send(self, now_ns: int, nbytes: int) -> None:
        if self._last_cut_ns is None and self._windowed:
            self._last_cut_ns, self._timer_due_ns = now_ns, now_ns + self.params.rp_time_reset_ns
        super().on_send(now_ns, nbytes)
        self._last_send_ns = now_ns

    def _counts(self, due_ns: int) -> bool:
        """With the window, only a timer period in which the flow sent raises the rate (module docstring)."""
        if not self._windowed:
            return True
        return self._last_send_ns is not None and self._last_send_ns >= due_ns - self.params.rp_time_reset_ns

    def _step(self, low: int) -> float:
        """With the window, hyper increase stops at the share and the flow probes above it additively."""
        step, share = super()._step(low), self.adaptive_params.start_rate_bps
        if not self._windowed:
            return step
        return min(step, share - self._rt) if self._rt < share else self.params.rp_ai_rate_bps

    def on_ack(self, now_ns: int, acked_bytes: int, rtt_ns: int | None) -> None:
        self._advance(now_ns)
        if rtt_ns is not None and (self._min_rtt_ns is None or rtt_ns < self._min_rtt_ns):
            self._min_rtt_ns = rtt_ns
            p = self.adaptive_params
            scale = max(1.0, rtt_ns / p.base_rtt_ns)
            self._cwnd = max(WINDOW_GAIN * p.cwnd_bytes, math.ceil(WINDOW_GAIN * p.cwnd_bytes * scale))

    def on_cnp(self, now_ns: int) -> None:
        last_cut_ns = self._last_cut_ns
        super().on_cnp(now_ns)
        self._cnp_cut = self._last_cut_ns != last_cut_ns

    def on_queue_delay(self, now_ns: int, queue_delay_ns: int) -> None:
        self._advance(now_ns)
        p = self.adaptive_params
        excess_ns = queue_delay_ns - p.target_queue_ns
        if not (self._delay_cuts and excess_ns > 0):
            return
        rtt_ns = (self._min_rtt_ns or p.base_rtt_ns) + queue_delay_ns
        factor = max(1 - p.delay_beta * excess_ns / rtt_ns, 1 - p.max_decrease)
        if self._may_cut(now_ns):
            self._cut_to(now_ns, self._rc * factor)
        elif self._cnp_cut:  # this RTT's cut was a CNP's: it becomes the deeper of the two
            self._rc = max(self.params.rp_min_rate_bps, min(self._rc, self._rt * factor))
            self._cnp_cut = False

    def _may_cut(self, now_ns: int) -> bool:
        """No cut of any kind in the last base RTT, whatever the DCQCN timers (Swift's one decrease per RTT).

        The receiver reports up to eight times per RTT, each about a queue the last cut has not yet reached;
        under the firmware's 4 us rp_rate_reduce_monitor_period (``delay`` without ``timers``) each report cut
        again: at 100 km that mechanism alone ran at 0.43x of baseline (issue 14's ablation, README).  With
        ``timers`` the period is the base RTT, so the guard is the one ``Dcqcn.on_cnp`` applies to CNPs.
        """
        period = max(self.params.rp_rate_reduce_monitor_period_ns, self.adaptive_params.base_rtt_ns)
        return self._last_cut_ns is None or now_ns - self._last_cut_ns >= period

    def _cut_to(self, now_ns: int, rate_bps: float) -> None:
        """A cut with a CNP's bookkeeping, but alpha (an ECN estimate) kept at its value decayed to now."""
        self._alpha = self.alpha_at(now_ns)
        self._rt = self._rc
        self._rc = max(self.params.rp_min_rate_bps, rate_bps)
        self._last_cut_ns = now_ns
        self._cnp_cut = False
        self._timer_events = self._byte_events = self._bytes = 0
        self._timer_due_ns = now_ns + self.params.rp_time_reset_ns
