"""The qdisc tree that emulates one direction of a link, as a plan of pyroute2 calls, and its statistics.

    root 1:  netem     delay / jitter / loss / reorder / duplication / corruption   (a pure delay line)
     1:1 ->  10: htb   class 10:1 at the link rate                                   (the bottleneck)
    10:1 ->  20: red   ECN marking between Kmin and Kmax                             (the marker)
    20:1 ->  30: bfifo tail drop at the buffer                                       (the queue)

Why this order, unlike Mininet's (htb -> netem, RED measuring the delay line): packets leave netem when
their delay has passed and only then wait for the rate, so the backlog that builds at the bottleneck is
RED's own queue, which is what marks; the packets in flight on the wire never count as queue, and the delay
does not take from the rate.  netem's packet limit is sized for everything that can be in flight during the
delay (netem's default of 1000 packets caps a 1000 km link at about 3 Gbit/s with 1500-byte frames).  With
jitter, netem's ``rate`` is set far above the link rate: netem then computes each packet's departure from
the previous one, so jitter varies the delay without reordering, as a FIFO fibre path does; reordering
happens only when ``reorder_pct`` asks for it.  With ``loss_burst_pkts``, netem's Gilbert-Elliott model
decides the losses instead of independent draws (see ``simple_gilbert``).

Why RED's queue is an explicit bfifo: RED keeps its packets in a child fifo, and the kernel's ``red_change``
(net/sched/sch_red.c) replaces that child whenever a change names a limit, flushing its backlog and counting
every packet in it as dropped (by the tree; RED's own counters do not see them).  A switch re-setting its WRED
thresholds loses nothing, and the latency loop re-sets a DCI's thresholds many times a run: 45 changes in one
1 MB all_reduce flushed 333 queued packets and cost the adaptive mode 9 retransmission timeouts, where the
baseline, which never changes thresholds, lost none.  So RED gets its limit only when it is built (the
kernel needs one to create a child at all), then the explicit bfifo replaces that child, and changes send
RED a limit of 0 (keep the child) and the bfifo its buffer (a fifo's change keeps its queue).
"""

import math
from dataclasses import dataclass

from pyroute2.netlink.rtnl.tcmsg.common import tick_in_usec, time2tick

from testbed.model.fabric import LinkConfig, TopologyError
from testbed.model.units import frame_bytes
from testbed.net.tc import bfifo, netem, red

NETEM, HTB, RED, QUEUE = "1:", "10:", "20:", "30:"
HTB_CLASS, RED_CLASS = "10:1", "20:1"
MIN_PACKET_BYTES = 64
FAN_IN_HEADROOM = 4  # arrivals at a switch egress may exceed the link rate this many times over
ORDER_KEEPING_RATE_FACTOR = 16  # netem rate used only to serialise departures, never to limit
U32_MAX = 2**32 - 1


@dataclass(frozen=True)
class TcCall:
    """One pyroute2 ``ipr.tc`` call: ``kind`` at ``handle`` under ``parent``; a class if ``is_class``."""

    kind: str
    handle: str
    parent: str | None
    params: dict
    is_class: bool = False

    def send(self, ipr, index: int, change: bool) -> None:
        command = ("change" if change else "add") + ("-class" if self.is_class else "")
        parent = {} if self.parent is None else {"parent": self.parent}
        ipr.tc(command, self.kind, index=index, handle=self.handle, **parent, **self.params)


def rate_bytes(config: LinkConfig) -> int:
    return round(config.bw_mbps * 1e6 / 8)


def simple_gilbert(loss_pct: float, burst_pkts: float) -> dict:
    """netem Gilbert-Elliott parameters, in percent, for ``loss_pct`` average loss in bursts of ``burst_pkts``.

    Simple Gilbert: the bad state loses every packet (h = 0), the good state none (k1 = 0).  Each packet
    in the bad state ends the burst with probability r, so bursts last 1 / r packets on average; gaps last
    1 / p, and the average loss is p / (p + r).  Hence r = 1 / burst and p = r * loss / (1 - loss), which
    ``LinkConfig.check`` keeps at most 1.
    """
    loss, r = loss_pct / 100, 1 / burst_pkts
    return {"p": 100 * r * loss / (1 - loss), "r": 100 * r, "h": 0, "k1": 0}


def netem_params(config: LinkConfig) -> dict:
    """netem keyword arguments for pyroute2: times in microseconds, probabilities in percent.

    Bursty loss goes to the Gilbert-Elliott model with netem's own ``loss`` at 0, so the model alone
    decides; at 100 % loss there are no bursts to shape and plain loss drops everything.
    """
    in_flight_s = (config.delay_ms + 4 * config.jitter_ms) / 1000
    limit = max(1000, math.ceil(FAN_IN_HEADROOM * rate_bytes(config) * in_flight_s / MIN_PACKET_BYTES))
    params = {
        "delay": round(config.delay_ms * 1000),
        "jitter": round(config.jitter_ms * 1000),
        "loss": config.loss_pct,
        "duplicate": config.duplicate_pct,
        "prob_reorder": config.reorder_pct,
        "prob_corrupt": config.corrupt_pct,
        "limit": limit,
        "rate": 0,
    }
    if config.jitter_ms and not config.reorder_pct:
        params["rate"] = min(U32_MAX, ORDER_KEEPING_RATE_FACTOR * rate_bytes(config))
    if config.loss_burst_pkts and 0 < config.loss_pct < 100:
        params.update(loss=0, loss_gemodel=simple_gilbert(config.loss_pct, config.loss_burst_pkts))
    return params


def htb_class_params(config: LinkConfig, mtu: int) -> dict:
    """HTB class at the link rate; 64-bit rates above 34 Gbit/s are handled by pyroute2 (TCA_HTB_RATE64).

    The burst is a millisecond at line rate (at least two frames), so timer granularity does not cut the
    rate of fast links; the quantum is one frame, as HTB needs at least an MTU.
    """
    rate = rate_bytes(config)
    burst = max(2 * frame_bytes(mtu), rate // 1000)
    return {"rate": rate, "ceil": rate, "burst": burst, "cburst": burst, "quantum": frame_bytes(mtu)}


def red_params(config: LinkConfig, change: bool = False) -> dict:
    """RED with ECN between Kmin and Kmax (bytes, instantaneous queue); the buffer is its hard limit when it is
    built, a limit of 0 (keep the queue) when it is changed."""
    return {
        "limit": 0 if change else config.buffer_bytes,
        "min": config.ecn_kmin_bytes,
        "max": config.ecn_kmax_bytes,
        "probability": config.ecn_pmax,
        "ecn": True,
    }


def check_emulable(declared: LinkConfig, mtu: int, where: str, dilation: float = 1.0) -> None:
    """Raise TopologyError naming ``where`` unless the kernel can hold the resolved link ``declared`` run
    ``dilation`` times slower (``LinkConfig.dilated``), by the arithmetic of the encoders that write it: a
    rate of at least one byte per second; netem's delay and jitter, and HTB's burst, in scheduler ticks within
    their u32 fields (netem's delay tops out at 274.9 s); netem's packet limit and RED's byte thresholds
    within theirs.  What is checked here never fails mid-build (a 400 Gbit/s DCI at 10,000 km once did, after
    221 s of boot and build)."""
    config = declared.dilated(dilation)
    slower = f" x dilation {dilation:g}" if dilation != 1 else ""
    rate = rate_bytes(config)
    if rate < 1:
        raise TopologyError(f"{where}: bw_mbps {declared.bw_mbps:.3g}{slower} is below one byte per second")
    netem = netem_params(config)
    for name in ("delay", "jitter"):
        if time2tick(netem[name]) > U32_MAX:
            raise TopologyError(f"{where}: {name}_ms {getattr(declared, name + '_ms'):g}{slower} is beyond "
                                f"netem's {U32_MAX / tick_in_usec / 1e3:.0f} ms")
    if netem["limit"] > U32_MAX:
        raise TopologyError(f"{where}: netem's packet limit {netem['limit']} (the in-flight packets) exceeds u32")
    burst = htb_class_params(config, mtu)["burst"]
    if time2tick(1e6 * burst / rate) > U32_MAX:
        raise TopologyError(f"{where}: HTB's burst of {burst} B lasts {burst / rate:.0f} s at {config.bw_mbps:.3g} "
                            f"Mbit/s, beyond its {U32_MAX / tick_in_usec / 1e6:.0f} s")
    for name in ("buffer_bytes", "ecn_kmin_bytes", "ecn_kmax_bytes"):
        if (getattr(config, name) or 0) > U32_MAX:
            raise TopologyError(f"{where}: {name} {getattr(config, name)} exceeds RED's u32 (4.29 GB)")


def plan(config: LinkConfig, mtu: int, change: bool = False) -> list[TcCall]:
    """The calls that build (or, with ``change``, update) the tree for a resolved ``config``."""
    return [
        TcCall("netem", NETEM, None, netem_params(config)),
        TcCall("htb", HTB, "1:1", {"default": 1}),
        TcCall("htb", HTB_CLASS, HTB, htb_class_params(config, mtu), is_class=True),
        TcCall("red", RED, HTB_CLASS, red_params(config, change)),
        TcCall("bfifo", QUEUE, RED_CLASS, {"limit": config.buffer_bytes}),
    ]


def apply(ipr, index: int, config: LinkConfig, mtu: int, change: bool = False) -> None:
    """Build the tree on interface ``index`` or, with ``change``, update it in place (no packet lost)."""
    netem.register()
    red.register()
    bfifo.register()
    for call in plan(config, mtu, change):
        if change and call.kind == "htb" and not call.is_class:
            continue  # the htb qdisc itself has nothing that changes
        call.send(ipr, index, change)


def read_stats(ipr, index: int) -> dict:
    """Counters of the tree on ``index`` as plain data.

    ``sent_*`` count what left the bottleneck, ``backlog_*`` what waits in the queue now, ``drops`` every
    packet the tree discarded, ``netem_drops`` those lost to the loss impairment, ``ecn_marks`` the
    packets RED marked CE on enqueue (as the kernel counts them: a marked packet that then meets a full
    buffer is also counted in ``red_overlimit_drops``).
    """
    by_handle = _qdiscs_by_handle(ipr, index)
    queue = _queue_stats(by_handle[RED])
    xstats = by_handle[RED].get_attr("TCA_XSTATS") or {}
    tree_drops = _queue_stats(by_handle[NETEM])["drops"]  # a parent counts its children's drops again
    return {
        "sent_bytes": queue["bytes"],
        "sent_packets": queue["packets"],
        "backlog_bytes": queue["backlog"],
        "backlog_packets": queue["qlen"],
        "drops": tree_drops,
        "netem_drops": tree_drops - _queue_stats(by_handle[HTB])["drops"],
        "ecn_marks": xstats.get("marked", 0),
        "red_early_drops": xstats.get("early", 0),
        "red_overlimit_drops": xstats.get("pdrop", 0),
    }


def read_config(ipr, index: int) -> dict:
    """What the kernel holds for the tree on ``index``, read back (not what was asked for).

    Probabilities are in percent; ``netem_loss_gemodel_pct`` is None while netem draws losses independently.
    """
    netem.register()  # decodes TCA_NETEM_LOSS, which pyroute2's own netem plugin leaves undecoded
    bfifo.register()
    by_handle = _qdiscs_by_handle(ipr, index)
    htb_class = next(c for c in ipr.get_classes(index=index) if _handle(c["handle"]) == HTB_CLASS)
    htb = htb_class.get_attr("TCA_OPTIONS")
    netem_opts = by_handle[NETEM].get_attr("TCA_OPTIONS")
    red_opts = by_handle[RED].get_attr("TCA_OPTIONS").get_attr("TCA_RED_PARMS")
    return {
        "rate_bytes_per_s": htb.get_attr("TCA_HTB_RATE64") or htb.get_attr("TCA_HTB_PARMS")["rate"],
        "netem_delay_us": round(netem_opts["delay"] / tick_in_usec),
        "netem_jitter_us": round(netem_opts["jitter"] / tick_in_usec),
        "netem_limit_packets": netem_opts["limit"],
        "netem_loss_pct": _percent(netem_opts["loss"]),
        "netem_loss_gemodel_pct": _gemodel_pct(netem_opts),
        "buffer_bytes": by_handle[QUEUE].get_attr("TCA_OPTIONS")["limit"],
        "ecn_kmin_bytes": red_opts["qth_min"],
        "ecn_kmax_bytes": red_opts["qth_max"],
    }


def _gemodel_pct(netem_opts) -> dict | None:
    """The Gilbert-Elliott parameters netem holds, in percent, or None under plain random loss."""
    model = netem_opts.get_attr("TCA_NETEM_LOSS")
    gemodel = None if model is None else model.get_attr("NETEM_LOSS_GE")
    return None if gemodel is None else {name: _percent(gemodel[name]) for name, _ in gemodel.fields}


def _percent(u32: int) -> float:
    """A kernel probability (0 never .. 2**32 - 1 always) in percent, the inverse of pyroute2's percent2u32."""
    return 100 * u32 / U32_MAX


def _qdiscs_by_handle(ipr, index: int) -> dict:
    """The qdiscs on interface ``index`` keyed by handle ("1:", "10:", "20:")."""
    return {_handle(q["handle"]): q for q in ipr.get_qdiscs(index=index)}


def _queue_stats(msg) -> dict:
    stats = dict(msg.get_attr("TCA_STATS2").get_attr("TCA_STATS_BASIC") or {})
    stats.update(msg.get_attr("TCA_STATS2").get_attr("TCA_STATS_QUEUE") or {})
    return stats


def _handle(value: int) -> str:
    return f"{value >> 16:x}:" if value & 0xFFFF == 0 else f"{value >> 16:x}:{value & 0xFFFF:x}"
