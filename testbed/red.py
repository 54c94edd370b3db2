"""RED qdisc encoder for pyroute2, which ships none.

DCQCN-style switches mark ECN between Kmin and Kmax with a probability rising to Pmax; Linux RED with the
``ecn`` flag is that marker.  This module is a pyroute2 tc plugin (same interface as its ``sched_*``
modules): ``register()`` it, then ``ipr.tc('add', 'red', index=..., limit=..., min=..., max=...,
avpkt=..., burst=..., probability=..., bandwidth=..., ecn=True)``, sizes in bytes and rates in bytes/s.
The arithmetic is iproute2's q_red.c, so the kernel gets what ``tc qdisc add ... red`` would send.
"""

import struct
import sys

from pyroute2.netlink import nla, nla_string
from pyroute2.netlink.rtnl import TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg import plugins
from pyroute2.netlink.rtnl.tcmsg.common import red_eval_ewma, red_eval_idle_damping, red_eval_P
from pyroute2.netlink.rtnl.tcmsg.common import stats2 as c_stats2

parent = TC_H_ROOT
TC_RED_ECN = 1
TC_RED_HARDDROP = 2
DEFAULT_BANDWIDTH = 10_000_000 // 8  # tc's default of 10 Mbit/s, in bytes/s


def get_parameters(kwarg):
    """Options for a RED qdisc; raises ValueError on thresholds the kernel would reject."""
    limit, qmin, qmax = int(kwarg["limit"]), int(kwarg["min"]), int(kwarg["max"])
    avpkt = int(kwarg.get("avpkt", 1000))
    probability = float(kwarg.get("probability", 0.02))
    if not 0 < qmin < qmax:
        raise ValueError(f"red: min {qmin} must be > 0 and below max {qmax}")
    if qmax > limit:
        raise ValueError(f"red: max {qmax} must not exceed limit {limit}")
    if not 0 < probability <= 1:
        raise ValueError(f"red: probability {probability} must be in (0, 1]")
    # RED's EWMA needs qmin above one average packet: thresholds of a couple of 4 KB RoCE packets under a
    # jumbo-frame avpkt mean the traffic's packets are the smaller ones
    avpkt = min(avpkt, qmin // 2)
    # tc's default burst, raised where the EWMA equation has no solution (a burst of packets must be able
    # to exceed qmin: thresholds of two or three jumbo frames, as at emulated rates, would fail otherwise)
    burst = int(kwarg.get("burst") or max((2 * qmin + qmax) // (3 * avpkt), qmin // avpkt + 2))
    wlog = red_eval_ewma(qmin, burst, avpkt)
    plog = red_eval_P(qmin, qmax, probability)
    scell_log, stab = red_eval_idle_damping(wlog, avpkt, int(kwarg.get("bandwidth") or DEFAULT_BANDWIDTH))
    if wlog < 0 or plog < 0 or scell_log < 0:
        raise ValueError(f"red: cannot derive EWMA/probability/idle damping from {kwarg}")
    flags = (TC_RED_ECN if kwarg.get("ecn") else 0) | (TC_RED_HARDDROP if kwarg.get("harddrop") else 0)
    qopt = {"limit": limit, "qth_min": qmin, "qth_max": qmax, "Wlog": wlog, "Plog": plog,
            "Scell_log": scell_log, "flags": flags}
    return {"attrs": [["TCA_RED_PARMS", qopt], ["TCA_RED_STAB", stab],
                      ["TCA_RED_MAX_P", int(probability * 2**32) if probability < 1 else 2**32 - 1]]}


class options(nla):
    nla_map = (
        ("TCA_RED_UNSPEC", "none"),
        ("TCA_RED_PARMS", "qopt"),
        ("TCA_RED_STAB", "stab"),
        ("TCA_RED_MAX_P", "uint32"),
    )

    class qopt(nla):
        fields = (
            ("limit", "I"),
            ("qth_min", "I"),
            ("qth_max", "I"),
            ("Wlog", "B"),
            ("Plog", "B"),
            ("Scell_log", "B"),
            ("flags", "B"),
        )

    class stab(nla_string):
        def encode(self):
            self["value"] = struct.pack("256B", *(int(x) for x in self.value))
            nla_string.encode(self)


class stats(nla):
    """struct tc_red_xstats: early drops, overlimit drops, other drops, ECN marks."""

    fields = (("early", "I"), ("pdrop", "I"), ("other", "I"), ("marked", "I"))


class stats2(c_stats2):
    class stats_app(stats):
        pass


def register() -> None:
    """Make ``ipr.tc(..., 'red', ...)`` use this encoder (idempotent)."""
    plugins.setdefault("red", sys.modules[__name__])
