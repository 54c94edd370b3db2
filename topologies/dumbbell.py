#!/usr/bin/env python3
"""A dumbbell: senders in one site, receivers in the other, one long-haul bottleneck between them.

The experiment congestion-control papers run (DCQCN, Swift, Annulus): N senders into M receivers through one
link that is narrower than any of theirs, so the queue, its marks and its drops are the bottleneck's alone.
Here the bottleneck is a DCI (``distance_km``, ``dci_bw_mbps``, every DCI field such as ``buffer_bytes``
or ``loss_pct``); each side is one leaf and one spine under its border.  The senders' side carries all of
them at once: its leaf uplink, spine and border links run at ``senders`` times the hosts' rate, so an incast
meets its first and only queue at the DCI egress (at the hosts' rate, two senders would fill the leaf
uplink first, and the DCI would see a second bottleneck's output).  The cost: ``--dilation auto`` sizes k
by the busiest declared link, here that aggregate, so wall time grows with ``senders``.

    sudo .venv/bin/testbed run dumbbell --senders 2 --receivers 1 --distance-km 1000
"""

from testbed.model.fabric import TopologyError
from testbed.net.topo import FabricTopo


class Dumbbell(FabricTopo):
    """west (``senders`` hosts) <-- DCI bottleneck (distance_km, dci_bw_mbps) --> east (``receivers`` hosts)."""

    def build(self, senders: int = 2, receivers: int = 1, distance_km: float = 1000.0, host_bw_mbps: float = 100.0,
              dci_bw_mbps: float = 50.0, **dci):
        if not dci_bw_mbps < host_bw_mbps:
            raise TopologyError(f"dumbbell: dci_bw_mbps {dci_bw_mbps:g} must be below host_bw_mbps "
                                f"{host_bw_mbps:g}: the long haul is the bottleneck")
        self.addSite("west", hosts=senders, leaves=1, spines=1, host_bw_mbps=host_bw_mbps,
                     fabric_bw_mbps=host_bw_mbps * senders)
        self.addSite("east", hosts=receivers, leaves=1, spines=1, host_bw_mbps=host_bw_mbps,
                     fabric_bw_mbps=host_bw_mbps)  # it carries at most the DCI's rate
        self.addDci("west", "east", distance_km=distance_km, bw_mbps=dci_bw_mbps, **dci)


topos = {"dumbbell": Dumbbell}

if __name__ == "__main__":
    from testbed.cli import run_script

    run_script(Dumbbell)
