"""netem through pyroute2, with every impairment stated explicitly on each change.

The kernel's netem keeps its previous reorder, corruption, correlation and rate settings when a change
request omits their attributes, and pyroute2's netem encoder omits them whenever they are zero.  Together
that makes an impairment impossible to reset to zero on a live link (a weakness Mininet's TCLink shares).
This plugin wraps pyroute2's encoder and always sends those attributes, zeros included.  The delay and
jitter are rounded to whole scheduler ticks, which the kernel's 32-bit fields require.
"""

import sys

from pyroute2.netlink.rtnl.tcmsg import plugins, sched_netem
from pyroute2.netlink.rtnl.tcmsg.sched_netem import options, parent  # noqa: F401  (plugin interface)

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
    return opts


def fix_request(request):
    """Drop ``rate`` from the request itself: it belongs in TCA_OPTIONS, not in the top-level TCA_RATE.

    (pyroute2's netem plugin lacks this, so any netem ``rate`` fails to encode; its htb plugin has it.)
    """
    request.pop("rate", None)


def register() -> None:
    """Make ``ipr.tc(..., 'netem', ...)`` use this encoder (idempotent)."""
    plugins["netem"] = sys.modules[__name__]
