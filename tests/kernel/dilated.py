"""What the dilated kernel tests share: a small declared scenario and the k ``--dilation auto`` picks for it here.

Two sites of two hosts, 1 Gbit/s NICs, a 500 Mbit/s DCI at 100 km: the DCI is the bottleneck, its queue fills
and the congestion controls act, while the path holds only ~30 packets, so runs take seconds of wall time at
any k the calibration picks.
"""

from testbed.model import dilation
from testbed.roce.budget import measure as measure_budget
from testbed.roce.rocev2 import data_frame_bytes

SCENARIO = {"hosts": 2, "leaves": 1, "spines": 1, "distance_km": 100, "host_bw_mbps": 1000, "dci_bw_mbps": 500}


def auto_dilation() -> float:
    """The k auto picks for SCENARIO on this host (its four ranks, its 1 Gbit/s NICs)."""
    return dilation.auto(measure_budget(4), SCENARIO["host_bw_mbps"] * 1e6 / 8 / data_frame_bytes())
