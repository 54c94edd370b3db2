"""Delay and bandwidth-delay arithmetic shared by the fabric model, the qdisc plans and the checks.

Propagation in optical fibre: light travels at c / n, with a group index n of about 1.47 for standard
single-mode fibre (ITU-T G.652), i.e. 4.9 us/km.  WAN planning rounds this to 5 us/km one way, which is the
figure operators quote for DCI latency budgets (1000 km ~ 5 ms one way, 10 ms round trip).  Route slack
(fibre is rarely straight) is the user's to add through ``distance_km``.
"""

import math

FIBRE_US_PER_KM = 5.0
ETHERNET_HEADER_BYTES = 14
IPV4_HEADER_BYTES = 20
TCP_HEADER_BYTES = 32  # with the timestamp option Linux uses by default


def propagation_delay_ms(distance_km: float) -> float:
    """One-way propagation delay of a fibre span of ``distance_km``."""
    return distance_km * FIBRE_US_PER_KM / 1000.0


def bdp_bytes(rate_mbps: float, rtt_ms: float) -> int:
    """Bytes in flight on a path of ``rate_mbps`` and round trip ``rtt_ms``."""
    return math.ceil(rate_mbps * 1e6 / 8 * rtt_ms / 1000.0)


def frame_bytes(mtu: int) -> int:
    """Bytes a full-size IP packet occupies on an Ethernet link (what HTB and RED count)."""
    return mtu + ETHERNET_HEADER_BYTES


def tcp_goodput_mbps(rate_mbps: float, mtu: int) -> float:
    """Best TCP goodput through a link shaped at ``rate_mbps`` when every segment is full-size."""
    payload = mtu - IPV4_HEADER_BYTES - TCP_HEADER_BYTES
    return rate_mbps * payload / frame_bytes(mtu)
