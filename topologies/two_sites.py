#!/usr/bin/env python3
"""Two sites of four GPU hosts each, joined by one DCI link (1000 km by default).

    sudo .venv/bin/python topologies/two_sites.py --distance-km 1000
    sudo mn --custom topologies/two_sites.py --topo two_sites ...   (Mininet's own loader works too)
"""

from testbed.net.topo import FabricTopo


class TwoSites(FabricTopo):
    """west <-- DCI (distance_km) --> east, each site a leaf-spine fabric under a border router."""

    def build(self, distance_km: float = 1000.0, hosts: int = 4, leaves: int = 2, spines: int = 1,
              host_bw_mbps: float = 100.0, dci_bw_mbps: float = 50.0, **dci):
        for site in ("west", "east"):
            self.addSite(site, hosts=hosts, leaves=leaves, spines=spines,
                         host_bw_mbps=host_bw_mbps, fabric_bw_mbps=host_bw_mbps)
        self.addDci("west", "east", distance_km=distance_km, bw_mbps=dci_bw_mbps, **dci)


topos = {"two_sites": TwoSites}

if __name__ == "__main__":
    from testbed.cli import run_script

    run_script(TwoSites)
