"""RED qdisc encoder for pyroute2, which ships none.

DCQCN-style switches mark ECN between Kmin and Kmax with a probability rising to Pmax; Linux RED with the
``ecn`` flag is that marker.  This module is a pyroute2 tc plugin (same interface as its ``sched_*``
modules): ``register()`` it, then ``ipr.tc('add', 'red', index=..., limit=..., min=..., max=...,
probability=..., ecn=True)``, sizes in bytes.  The probability arithmetic is iproute2's (tc_red.c).

Unlike ``tc qdisc add ... red``, the marker sees the **instantaneous** queue (Wlog 0), as the switches of
the DCQCN and DCTCP papers do, not an EWMA.  Linux RED decays its average over idle time only when a dequeue
finds it empty, and under HTB (our parent) that never happens: after a congestion episode the average stayed
above Kmax, and every Not-ECT packet (ACKs, NAKs, pings, TCP) was dropped for seconds on an empty queue
(20 pings in a row, 0.2 s apart, measured; an iperf3 control connection hung for 30 s in CI).

``limit`` 0 keeps RED's child queue as it is: the kernel's ``red_change`` replaces the child, flushing its
packets, whenever it is given any other limit (``qdisc``'s docstring says what that cost).  The kernel then
reports a limit of 0 for RED itself.
"""

import struct
import sys

from pyroute2.netlink import nla, nla_string
from pyroute2.netlink.rtnl import TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg import plugins
from pyroute2.netlink.rtnl.tcmsg.common import red_eval_P
from pyroute2.netlink.rtnl.tcmsg.common import stats2 as c_stats2

parent = TC_H_ROOT
TC_RED_ECN = 1
TC_RED_HARDDROP = 2
INSTANTANEOUS_WLOG = 0  # average += backlog - average: the queue as each packet finds it
IDLE_STAB = [31] * 256  # should the kernel ever see an idle period, the average after it is 0 (>> 31)


def get_parameters(kwarg):
    """Options for a RED qdisc (``limit`` 0: a change that keeps the queue and its buffer); raises ValueError
    on thresholds the kernel would reject."""
    limit, qmin, qmax = int(kwarg["limit"]), int(kwarg["min"]), int(kwarg["max"])
    probability = float(kwarg.get("probability", 0.02))
    if not 0 < qmin < qmax:
        raise ValueError(f"red: min {qmin} must be > 0 and below max {qmax}")
    if limit and qmax > limit:
        raise ValueError(f"red: max {qmax} must not exceed limit {limit}")
    if not 0 < probability <= 1:
        raise ValueError(f"red: probability {probability} must be in (0, 1]")
    plog = red_eval_P(qmin, qmax, probability)
    if plog < 0:
        raise ValueError(f"red: cannot derive the marking probability from {kwarg}")
    flags = (TC_RED_ECN if kwarg.get("ecn") else 0) | (TC_RED_HARDDROP if kwarg.get("harddrop") else 0)
    qopt = {"limit": limit, "qth_min": qmin, "qth_max": qmax, "Wlog": INSTANTANEOUS_WLOG, "Plog": plog,
            "Scell_log": 0, "flags": flags}
    return {"attrs": [["TCA_RED_PARMS", qopt], ["TCA_RED_STAB", IDLE_STAB],
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
