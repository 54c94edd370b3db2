"""bfifo qdisc encoder for pyroute2, which registers none: its options are pfifo's (struct tc_fifo_qopt, one
limit, in bytes for bfifo), so pyroute2's ``sched_pfifo`` serves it.

RED's queue is one explicitly (``qdisc``'s tree): RED keeps its packets in a child fifo, and an explicit child
lets the buffer be read back and changed without touching RED (see ``red``'s docstring: RED flushes its queue
whenever a change names a limit).  ``register()`` it, then ``ipr.tc('add', 'bfifo', index=..., handle=...,
parent=..., limit=...)``.
"""

import sys

from pyroute2.netlink.rtnl.tcmsg import plugins, sched_pfifo

options, parent = sched_pfifo.options, sched_pfifo.parent
get_parameters = sched_pfifo.get_parameters


def register() -> None:
    """Make ``ipr.tc(..., 'bfifo', ...)`` encode and decode like pfifo (idempotent)."""
    plugins.setdefault("bfifo", sys.modules[__name__])
