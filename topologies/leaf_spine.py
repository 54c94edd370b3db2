#!/usr/bin/env python3
"""N identical leaf-spine sites in a chain of DCI links: the site builder with every size a parameter.

    sudo .venv/bin/python topologies/leaf_spine.py --sites 2 --hosts 8 --leaves 4 --spines 2
"""

from testbed.net.topo import FabricTopo


class LeafSpine(FabricTopo):
    """``sites`` sites named dc1..dcN, each ``hosts`` hosts over ``leaves`` leaves and ``spines`` spines,
    consecutive sites joined by a ``distance_km`` DCI link."""

    def build(self, sites: int = 2, hosts: int = 4, leaves: int = 2, spines: int = 2,
              distance_km: float = 100.0, host_bw_mbps: float = 100.0, fabric_bw_mbps: float = 100.0,
              dci_bw_mbps: float = 50.0, **dci):
        names = [self.addSite(f"dc{i}", hosts=hosts, leaves=leaves, spines=spines,
                              host_bw_mbps=host_bw_mbps, fabric_bw_mbps=fabric_bw_mbps)
                 for i in range(1, sites + 1)]
        for a, b in zip(names, names[1:]):
            self.addDci(a, b, distance_km=distance_km, bw_mbps=dci_bw_mbps, **dci)


topos = {"leaf_spine": LeafSpine}

if __name__ == "__main__":
    from testbed.cli import run_script

    run_script(LeafSpine)
