"""DCQCN, the rate control of RoCEv2 NICs, as published and with the knobs named as mlx5 NICs name them.

Source: Zhu et al., "Congestion Control for Large-Scale RDMA Deployments", SIGCOMM 2015.  Reaction point
(the sender, ``Dcqcn``), with current rate RC, target rate RT and alpha in [0, 1]:

  on a CNP              RT <- RC;  RC <- RC * (1 - alpha / 2);  alpha <- (1 - g) * alpha + g
                        The cut uses alpha before its update.  The stage counters T and BC and the byte
                        count reset and the increase timer restarts.  A CNP within
                        rp_rate_reduce_monitor_period of the previous cut is ignored: it reports the
                        congestion already reacted to.
  alpha timer           for each rp_dce_tcp_rtt (K) that passes without a CNP: alpha <- (1 - g) * alpha
  increase events       every rp_time_reset the timer fires (T <- T + 1) and every rp_byte_reset bytes sent
                        the byte counter does (BC <- BC + 1); each such event raises the rate once, with
                        F = rp_threshold:
    fast recovery         while max(T, BC) <= F:          RC <- (RT + RC) / 2
    additive increase     while min(T, BC) <= F < max:    RT <- RT + R_AI, then RC as above
    hyper increase        once min(T, BC) > F:            RT <- RT + i * R_HAI, then RC as above,
                                                          where i = min(T, BC) - F
  bounds                rp_min_rate <= RC and RT, RC <= rp_max_rate (the line rate)

So a lone timer (BC stuck at 0) gives F fast-recovery steps and then additive increase for ever; hyper
increase needs both counters past F, as in QCN, which DCQCN's increase comes from.  As on mlx5 NICs, a
flow is unthrottled (RC = RT = line rate, no timer) until its first CNP: it has nothing to recover, and
alpha keeps rp_initial_alpha_value rather than decaying from the flow's start.

Notification point (the receiver, ``CnpPacer``): when a CE-marked packet of a flow arrives and no CNP was
sent for that flow in the last np_min_time_between_cnps, send one (the paper's N).

Two sets of knobs (``DcqcnParams``):
  ``MLX5_FIRMWARE``, what ships and what the testbed's NICs run (the baseline, every intra-site path): the
                mlx5 firmware defaults as ``mstconfig -e q`` reports them on a ConnectX-4 Lx (Default =
                Current for every knob; captured in k8snetworkplumbingwg/sriov-network-operator
                pkg/vendors/mellanox/mellanox_test.go) and as NVIDIA's "DCQCN CC parameters" page defines
                them: rpg_time_reset 300 us, rpg_byte_reset 32767 B, rpg_threshold 1, rpg_ai_rate 5 Mbit/s,
                rpg_hai_rate 50 Mbit/s, rpg_min_rate 1 Mbit/s, rate_reduce_monitor_period 4 us,
                initial_alpha_value 1023 (of 1024), dce_tcp_rtt 1 us, dce_tcp_g 1019 (alpha keeps
                1019/1024 of itself per dce_tcp_rtt: g = 5/1024, by NVIDIA's page; an older mstflint
                comment reads it the other way round, which would make alpha forget a CNP within 1 us),
                min_time_between_cnps 4 us.  Rates and times are absolute, as the firmware has them: a
                run declared at real rates (``testbed.model.dilation``) runs them as a NIC does.  The
                line rate (rp_max_rate) is the host's.
  ``PAPER``     the SIGCOMM 2015 paper's: g = 1/256, K = 55 us, F = 5, byte counter 10 MB, N = 50 us,
                initial alpha 1, the mlx5 timer and rates, at the paper's 40 Gbit/s; the testbed's baseline
                until 2026-12-07, kept as the mode ``dcqcn-paper`` (rates ``scaled_to`` the line rate).
mlx5 knobs not implemented here: rpg_gd 11 (the cut is RC * (1 - alpha / 2^11) with alpha in 1/1024ths,
i.e. the paper's RC * (1 - alpha / 2)), rpg_min_dec_fac 50 % (a floor on one cut, which RC * (1 - alpha /
2) never goes below), clamp_tgt_rate 0 with clamp_tgt_rate_after_time_inc 1 (the firmware sets RT <- RC on
a cut only if the timer raised the rate last; here on every cut, as in the paper) and
rate_to_set_on_first_cnp 0 (line rate, as here).

Slow declared fabrics: the firmware's absolute knobs were made for 10-400 Gbit/s NICs.  Its alpha clock
(5/1024 per microsecond) and CNP guard (4 us) count packets: at 400 Gbit/s a 4 KB packet takes 82 ns and
CNPs can come 50 packets apart, while on a link declared at 500 Mbit/s one packet takes 65 us, alpha loses
27 % between two packets and the cuts shrink to about 1 %.  The baseline on such a fabric is weaker than on
the NIC it models; the commands say so (``slow_fabric_note``).  ``PAPER.scaled_to(line_rate)`` keeps every
rate's share of the link instead (times kept): the paper's DCQCN seen at a slower line rate.

``scaled_to`` and ``stretched``: ``scaled_to(line_rate_bps)`` multiplies every rate knob and the byte
counter by line_rate / rp_max_rate, so each keeps the share of the link it has at 40 Gbit/s; times stay, so
their ratio to real propagation delays stays too.  But DCQCN's balance also rests on packet counts: at
40 Gbit/s the 300 us increase timer spans ~370 packets of 4 KB and CNPs come at most every ~60, so under
persistent marking cuts outpace recovery.  At 10 Mbit/s a 4 KB packet takes 3.3 ms: a CNP per marked
packet at most, and ~11 increase steps between two CNPs, so the rate climbs back before every cut and the
queue keeps growing.  ``stretched(factor)`` multiplies every time knob and the byte counter (whose events
are as far apart in time as rp_byte_reset takes to send); ``stretched(40e9 / line_rate)`` restores the
packet counts of the 40 Gbit/s design (a NIC's DCQCN, seen in packets), at the price of
making the emulated propagation delays that much shorter relative to its timers.  Which ratio to keep is
a modelling choice; the distance-adaptive controller derives its times from the measured path instead.
"""

import math
from dataclasses import dataclass, fields, replace

from controllers.base import CongestionControl


@dataclass(frozen=True)
class DcqcnParams:
    """DCQCN knobs; rates in bits/s, times in ns, the byte counter in bytes.  The defaults are the paper's
    (``PAPER``); what ships is ``MLX5_FIRMWARE``."""

    rp_max_rate_bps: float = 40e9
    rp_min_rate_bps: float = 1e6
    rp_ai_rate_bps: float = 5e6
    rp_hai_rate_bps: float = 50e6
    rp_time_reset_ns: int = 300_000
    rp_byte_reset_bytes: int = 10_000_000
    rp_threshold: int = 5
    rp_dce_tcp_g: float = 1 / 256
    rp_dce_tcp_rtt_ns: int = 55_000
    rp_initial_alpha_value: float = 1.0
    rp_rate_reduce_monitor_period_ns: int = 4_000
    np_min_time_between_cnps_ns: int = 50_000

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{item.name} must be a finite number >= 0, got {value}")
        for name in ("rp_min_rate_bps", "rp_time_reset_ns", "rp_byte_reset_bytes", "rp_dce_tcp_rtt_ns"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.rp_min_rate_bps > self.rp_max_rate_bps:
            raise ValueError(f"rp_min_rate_bps ({self.rp_min_rate_bps}) exceeds rp_max_rate_bps"
                             f" ({self.rp_max_rate_bps})")
        if not 0 < self.rp_dce_tcp_g <= 1:
            raise ValueError(f"rp_dce_tcp_g must be in (0, 1], got {self.rp_dce_tcp_g}")
        if self.rp_initial_alpha_value > 1:
            raise ValueError(f"rp_initial_alpha_value must be in [0, 1], got {self.rp_initial_alpha_value}")

    def scaled_to(self, line_rate_bps: float) -> "DcqcnParams":
        """These parameters for a line rate of ``line_rate_bps``: rates and byte counter scaled, times kept."""
        if not (math.isfinite(line_rate_bps) and line_rate_bps > 0):
            raise ValueError(f"line_rate_bps must be a positive finite number, got {line_rate_bps}")
        scale = line_rate_bps / self.rp_max_rate_bps
        return replace(self, rp_max_rate_bps=line_rate_bps, rp_min_rate_bps=self.rp_min_rate_bps * scale,
                       rp_ai_rate_bps=self.rp_ai_rate_bps * scale, rp_hai_rate_bps=self.rp_hai_rate_bps * scale,
                       rp_byte_reset_bytes=max(1, round(self.rp_byte_reset_bytes * scale)))

    def at_line_rate(self, line_rate_bps: float) -> "DcqcnParams":
        """These parameters on a NIC of ``line_rate_bps``: only rp_max_rate changes, as on a real NIC."""
        return replace(self, rp_max_rate_bps=line_rate_bps)

    def stretched(self, factor: float) -> "DcqcnParams":
        """These parameters with every time knob and the byte counter multiplied by ``factor``.

        The byte counter is a clock too: at a given rate its events come every rp_byte_reset / rate.  Kept
        at its rate-scaled size while the times stretch, it fell below one packet at 10 Mbit/s (2.5 KB) and
        fired on every packet sent: five packets of fast recovery after each cut (see the module docstring).
        """
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a positive finite number, got {factor}")
        stretched = {item.name: round(getattr(self, item.name) * factor)
                     for item in fields(self) if item.name.endswith("_ns")}
        return replace(self, **stretched, rp_byte_reset_bytes=max(1, round(self.rp_byte_reset_bytes * factor)))


PAPER = DcqcnParams()

#: mlx5 firmware defaults, each as ``mstconfig`` names it (module docstring for the sources); 40 Gbit/s stands
#: for the host's line rate, which ``at_line_rate`` sets.
MLX5_FIRMWARE = DcqcnParams(
    rp_min_rate_bps=1e6,  # RPG_MIN_RATE 1 (Mbit/s)
    rp_ai_rate_bps=5e6,  # RPG_AI_RATE 5 (Mbit/s)
    rp_hai_rate_bps=50e6,  # RPG_HAI_RATE 50 (Mbit/s)
    rp_time_reset_ns=300_000,  # RPG_TIME_RESET 300 (us)
    rp_byte_reset_bytes=32_767,  # RPG_BYTE_RESET 32767 (bytes)
    rp_threshold=1,  # RPG_THRESHOLD 1
    rp_dce_tcp_g=5 / 1024,  # DCE_TCP_G 1019: alpha keeps 1019/1024 of itself per update
    rp_dce_tcp_rtt_ns=1_000,  # DCE_TCP_RTT 1 (us)
    rp_initial_alpha_value=1023 / 1024,  # INITIAL_ALPHA_VALUE 1023 (of 1024)
    rp_rate_reduce_monitor_period_ns=4_000,  # RATE_REDUCE_MONITOR_PERIOD 4 (us)
    np_min_time_between_cnps_ns=4_000,  # MIN_TIME_BETWEEN_CNPS 4 (us)
)

#: The slowest line rate of the NICs those firmware defaults ship on (ConnectX-4 Lx: 10-50 Gbit/s ports).
MLX5_SLOWEST_LINE_RATE_BPS = 10e9


def slow_fabric_note(line_rate_bps: float) -> str | None:
    """One line for a user whose declared NICs are slower than any that ships these firmware defaults: the
    baseline's absolute knobs then see far fewer packets per alpha update than on the NIC (module docstring)."""
    if line_rate_bps >= MLX5_SLOWEST_LINE_RATE_BPS:
        return None
    return (f"note: the NICs are declared at {line_rate_bps / 1e9:g} Gbit/s, below the "
            f"{MLX5_SLOWEST_LINE_RATE_BPS / 1e9:g} Gbit/s of the slowest NIC shipping mlx5's DCQCN defaults: "
            "the baseline's alpha (5/1024 per us) sees few packets between CNPs and cuts less than on a real "
            "NIC; declare real rates (dilation keeps them affordable) or compare with dcqcn-paper")


class Dcqcn(CongestionControl):
    """DCQCN reaction point of one flow.  It reacts to CNPs only: ACKs, losses and timeouts leave the rate
    alone, as on RoCE NICs, which recover losses by go-back-N without slowing down.

    Spec: ``line_rate_bps``, and ``profile``: ``mlx5`` (the default: ``MLX5_FIRMWARE`` on that line rate) or
    ``paper`` (``PAPER`` ``scaled_to`` it, and ``stretched`` by the optional ``stretch``).
    """

    kind = "dcqcn"

    def __init__(self, params: DcqcnParams = DcqcnParams()) -> None:
        self.params = params
        self._rc = self._rt = params.rp_max_rate_bps
        self._alpha = params.rp_initial_alpha_value
        self._last_cut_ns: int | None = None  # also where alpha's decay steps are counted from
        self._timer_due_ns: int | None = None
        self._timer_events = self._byte_events = self._bytes = 0

    @classmethod
    def from_spec(cls, spec: dict) -> "Dcqcn":
        return cls(params_from_spec(spec))

    @property
    def rate_bps(self) -> float:
        return self._rc

    @property
    def target_rate_bps(self) -> float:
        return self._rt

    @property
    def next_timer_ns(self) -> int | None:
        return self._timer_due_ns

    def alpha_at(self, now_ns: int) -> float:
        """Alpha at ``now_ns``, after the decay steps of the alpha timer since the last cut."""
        if self._last_cut_ns is None:
            return self._alpha
        steps = (now_ns - self._last_cut_ns) // self.params.rp_dce_tcp_rtt_ns
        return self._alpha * (1 - self.params.rp_dce_tcp_g) ** steps

    def on_send(self, now_ns: int, nbytes: int) -> None:
        self._advance(now_ns)
        if self._last_cut_ns is None:
            return  # unthrottled: there is nothing to recover
        self._bytes += nbytes
        while self._bytes >= self.params.rp_byte_reset_bytes:
            self._bytes -= self.params.rp_byte_reset_bytes
            self._byte_events += 1
            self._increase()

    def on_cnp(self, now_ns: int) -> None:
        self._advance(now_ns)
        p = self.params
        if self._last_cut_ns is not None and now_ns - self._last_cut_ns < p.rp_rate_reduce_monitor_period_ns:
            return
        alpha = self.alpha_at(now_ns)
        self._rt = self._rc
        self._rc = max(p.rp_min_rate_bps, self._rc * (1 - alpha / 2))
        self._alpha = (1 - p.rp_dce_tcp_g) * alpha + p.rp_dce_tcp_g
        self._last_cut_ns = now_ns
        self._timer_events = self._byte_events = self._bytes = 0
        self._timer_due_ns = now_ns + p.rp_time_reset_ns

    def on_timer(self, now_ns: int) -> None:
        self._advance(now_ns)

    def _advance(self, now_ns: int) -> None:
        """Fire, in order, every increase-timer expiry up to ``now_ns`` (that ``_counts`` counts)."""
        while self._timer_due_ns is not None and self._timer_due_ns <= now_ns:
            due = self._timer_due_ns
            self._timer_due_ns += self.params.rp_time_reset_ns
            if self._counts(due):
                self._timer_events += 1
                self._increase()

    def _counts(self, due_ns: int) -> bool:
        """Whether the timer period ending at ``due_ns`` raises the rate: always, as the NIC does."""
        return True

    def _increase(self) -> None:
        p = self.params
        low, high = sorted((self._timer_events, self._byte_events))
        if high > p.rp_threshold:
            self._rt = min(p.rp_max_rate_bps, self._rt + self._step(low))
        self._rc = (self._rt + self._rc) / 2

    def _step(self, low: int) -> float:
        """RT's step once a counter has passed F (``low``: the smaller counter): additive, hyper once both have."""
        p = self.params
        return p.rp_ai_rate_bps if low <= p.rp_threshold else (low - p.rp_threshold) * p.rp_hai_rate_bps


def params_from_spec(spec: dict) -> DcqcnParams:
    """The knobs a ``Dcqcn`` spec describes (see ``Dcqcn``); a one-line ValueError for an unknown profile."""
    profile, line = spec.get("profile", "mlx5"), spec["line_rate_bps"]
    if profile == "mlx5":
        return MLX5_FIRMWARE.at_line_rate(line)
    if profile == "paper":
        return PAPER.scaled_to(line).stretched(spec.get("stretch", 1.0))
    raise ValueError(f"unknown DCQCN profile {profile!r} (profiles: mlx5, paper)")


class CnpPacer:
    """DCQCN notification point for one flow: at most one CNP per interval while CE-marked packets arrive.

    An interval of None switches it off: a border answers the flow's marks instead (near-source feedback,
    ``testbed.collective.near_source``)."""

    def __init__(self, min_interval_ns: int | None) -> None:
        if min_interval_ns is not None and min_interval_ns < 0:
            raise ValueError(f"min_interval_ns must be >= 0, got {min_interval_ns}")
        self.min_interval_ns = min_interval_ns
        self._last_cnp_ns: int | None = None

    def on_ce(self, now_ns: int) -> bool:
        """A CE-marked packet of the flow arrived at ``now_ns``: whether to send a CNP now."""
        if self.min_interval_ns is None:
            return False
        if self._last_cnp_ns is not None and now_ns - self._last_cnp_ns < self.min_interval_ns:
            return False
        self._last_cnp_ns = now_ns
        return True
