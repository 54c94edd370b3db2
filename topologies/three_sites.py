#!/usr/bin/env python3
"""Three sites in a triangle with unequal distances (defaults 1000, 1500 and 3000 km).

Routing prefers the direct DCI link between two sites over the two-hop detour, even where the detour is
shorter in kilometres (west-south: 3000 km direct against 2500 km via east), as hop-count IGPs do.
"""

from testbed.net.topo import FabricTopo


class ThreeSites(FabricTopo):
    """west, east, south; each pair of border routers joined directly."""

    def build(self, west_east_km: float = 1000.0, east_south_km: float = 1500.0, west_south_km: float = 3000.0,
              hosts: int = 2, leaves: int = 1, spines: int = 1, host_bw_mbps: float = 100.0,
              dci_bw_mbps: float = 50.0, **dci):
        for site in ("west", "east", "south"):
            self.addSite(site, hosts=hosts, leaves=leaves, spines=spines,
                         host_bw_mbps=host_bw_mbps, fabric_bw_mbps=host_bw_mbps)
        self.addDci("west", "east", distance_km=west_east_km, bw_mbps=dci_bw_mbps, **dci)
        self.addDci("east", "south", distance_km=east_south_km, bw_mbps=dci_bw_mbps, **dci)
        self.addDci("west", "south", distance_km=west_south_km, bw_mbps=dci_bw_mbps, **dci)


topos = {"three_sites": ThreeSites}

if __name__ == "__main__":
    from testbed.cli import run_script

    run_script(ThreeSites)
