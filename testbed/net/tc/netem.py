"""netem through pyroute2, with every impairment stated explicitly on each change.

The kernel's netem keeps its previous reorder, corruption, correlation and rate settings when a change
request omits their attributes, and pyroute2's netem encoder omits them whenever they are zero.  Together
that makes an impairment impossible to reset to zero on a live link (a weakness Mininet's TCLink shares).
This plugin wraps pyroute2's encoder and always sends those attributes, zeros included.  The delay and
jitter are rounded to whole scheduler ticks, which the kernel's 32-bit fields require.

Bursty loss: ``loss_gemodel={"p": ..., "r": ..., "h": ..., "k1": ...}`` (percent, as iproute2's ``loss
gemodel``) sends netem's Gilbert-Elliott model as TCA_NETEM_LOSS / NETEM_LOSS_GE, which pyroute2 cannot
encode.  Its fields are the kernel's struct tc_netem_gemodel: ``p`` good -> bad and ``r`` bad -> good
transition probabilities, ``h`` the probability that the bad state lets a packet through, ``k1`` the
probability that the good state loses one.  Loss models need no zero: netem_change() goes back to plain
random loss (``loss``) whenever a request carries no TCA_NETEM_LOSS.
"""

import sys

from pyroute2.netlink import nla
from pyroute2.netlink.rtnl.tcmsg import plugins, sched_netem
from pyroute2.netlink.rtnl.tcmsg.common import percent2u32
from pyroute2.netlink.rtnl.tcmsg.sched_netem import parent  # noqa: F401  (plugin interface)

ZERO_ATTRS = {
    "TCA_NETEM_CORR": {"delay_corr": 0, "loss_corr": 0, "dup_corr": 0},
    "TCA_NETEM_REORDER": {"prob_reorder": 0, "corr_reorder": 0},
    "TCA_NETEM_CORRUPT": {"prob_corrupt": 0, "corr_corrupt": 0},
    "TCA_NETEM_RATE": {"rate": 0, "packet_overhead": 0, "cell_size": 0, "cell_overhead": 0},
}


def get_parameters(kwarg):
    """pyroute2's netem options, plus a zero for every optional attribute the caller left at zero."""
    opts = sched_netem.get_parameters(kwarg)
    opts.update(delay=round(opts["delay"]), jitter=round(opts["jitter"]))
    present = {name for name, _ in opts["attrs"]}
    opts["attrs"].extend([name, dict(value)] for name, value in ZERO_ATTRS.items() if name not in present)
    if "loss_gemodel" in kwarg:
        gemodel = {name: percent2u32(pct) for name, pct in kwarg["loss_gemodel"].items()}
        opts["attrs"].append(["TCA_NETEM_LOSS", {"attrs": [["NETEM_LOSS_GE", gemodel]]}])
    return opts


def fix_request(request):
    """Drop ``rate`` from the request itself: it belongs in TCA_OPTIONS, not in the top-level TCA_RATE.

    (pyroute2's netem plugin lacks this, so any netem ``rate`` fails to encode; its htb plugin has it.)
    """
    request.pop("rate", None)


class options(sched_netem.options):
    """pyroute2's netem options, with TCA_NETEM_LOSS decoded and encoded instead of left as raw bytes."""

    nla_map = tuple(("TCA_NETEM_LOSS", "netem_loss") if name == "TCA_NETEM_LOSS" else (name, kind)
                    for name, kind in sched_netem.options.nla_map)

    class netem_loss(nla):
        """The nested loss model (the kernel's NETEM_LOSS_* attributes)."""

        nla_map = (
            ("NETEM_LOSS_UNSPEC", "none"),
            ("NETEM_LOSS_GI", "none"),  # the 4-state model, unused here
            ("NETEM_LOSS_GE", "netem_gemodel"),
        )

        class netem_gemodel(nla):
            """struct tc_netem_gemodel: probabilities scaled to u32 (0 -> never, 2**32 - 1 -> always)."""

            fields = (("p", "I"), ("r", "I"), ("h", "I"), ("k1", "I"))


def register() -> None:
    """Make ``ipr.tc(..., 'netem', ...)`` use this encoder (idempotent)."""
    plugins["netem"] = sys.modules[__name__]
