"""Fabrics built once per module: building is the slow part (about 20 s for 16 nodes under TCG)."""

import pytest

from testbed.net.network import Testbed
from testbed.topologies import load_topology


@pytest.fixture(scope="module")
def two_sites():
    """The default scenario: 2 sites x 4 hosts, 1000 km, a 50 Mbit/s DCI."""
    with Testbed(load_topology("two_sites")(distance_km=1000)) as tb:
        yield tb
