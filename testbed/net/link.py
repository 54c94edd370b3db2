"""Mininet links shaped through pyroute2 (netlink), never through the ``tc`` binary.

``ShapedLink`` is to this testbed what ``TCLink`` is to Mininet: pass it as ``Mininet(link=ShapedLink)`` and
give each ``addLink`` a ``config=LinkConfig(...)``; both interfaces then get the qdisc tree of
``testbed.net.tc.qdisc`` on their egress.  Unlike TCLink, every impairment of a live link can be changed and reset
to zero (``link.set(loss_pct=0)``) and its counters read back as plain data (``link.stats()``).

A link is declared and changed in declared units (``shape``); with ``dilation`` k it is built ``k`` times
slower (``LinkConfig.dilated``: rate / k, delay and jitter x k, bytes unchanged), the kernel's view only.
``link.pin_neighbours()`` makes each end's ARP entry for the other permanent, so no ARP ever crosses a link.
"""

import time
from dataclasses import replace

from mininet.link import Intf, Link
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ndmsg import states as neighbour_states

from testbed.model.fabric import LinkConfig
from testbed.net.tc import qdisc


def netlink(node) -> IPRoute:
    """The node's pyroute2 IPRoute, opened once in its network namespace and kept on the node."""
    if getattr(node, "ipr", None) is None:
        node.ipr = IPRoute(netns=f"/proc/{node.pid}/ns/net") if node.inNamespace else IPRoute()
    return node.ipr


def close_netlink(node) -> None:
    if getattr(node, "ipr", None) is not None:
        node.ipr.close()
        node.ipr = None


class ShapedIntf(Intf):
    """An interface whose egress is the netem -> htb -> red tree described by a LinkConfig (``shape``, in
    declared units), built ``dilation`` times slower."""

    def config(self, config: LinkConfig | None = None, mtu: int = 1500, dilation: float = 1.0, **params):
        result = super().config(**params)
        self.shape, self.mtu, self.dilation = config, mtu, dilation
        ipr = netlink(self.node)
        self.index = ipr.link_lookup(ifname=self.name)[0]
        ipr.link("set", index=self.index, mtu=mtu)
        if config is not None:
            qdisc.apply(ipr, self.index, config.dilated(dilation), mtu)
        return result

    def set(self, **changes) -> LinkConfig:
        """Change impairments or thresholds of this direction in place, in declared units; zero resets."""
        config = replace(self.shape, **changes)
        config.check(self.name)
        qdisc.apply(netlink(self.node), self.index, config.dilated(self.dilation), self.mtu, change=True)
        self.shape = config
        return config

    def set_dilation(self, dilation: float) -> None:
        """The same declared link, run ``dilation`` times slower from now on (changed in place)."""
        self.dilation = dilation
        qdisc.apply(netlink(self.node), self.index, self.shape.dilated(dilation), self.mtu, change=True)

    def stats(self) -> dict:
        """Queue counters of the egress tree and the interface's own byte and packet counters."""
        ipr = netlink(self.node)
        counters = ipr.get_links(self.index)[0].get_attr("IFLA_STATS64")
        return {
            "intf": self.name,
            **qdisc.read_stats(ipr, self.index),
            "tx_bytes": counters["tx_bytes"],
            "tx_packets": counters["tx_packets"],
            "rx_bytes": counters["rx_bytes"],
            "rx_packets": counters["rx_packets"],
        }


class ShapedLink(Link):
    """A veth pair with a ShapedIntf at each end; impairments apply to both directions."""

    def __init__(self, *args, dilation: float = 1.0, **kwargs):
        kwargs.setdefault("cls1", ShapedIntf)
        kwargs["dilation"] = dilation  # Mininet hands the remaining keywords to both interfaces' config
        kwargs.setdefault("cls2", ShapedIntf)
        super().__init__(*args, **kwargs)

    def set(self, **changes) -> LinkConfig:
        """Change the link in both directions (e.g. ``set(loss_pct=1)``, later ``set(loss_pct=0)``)."""
        self.intf1.set(**changes)
        return self.intf2.set(**changes)

    def pin_neighbours(self) -> None:
        """Give each end a permanent neighbour entry for the other, like Mininet's ``staticArp`` per link.

        A fabric's switches carry ARP in a control-plane priority class; here it would share the shaped data
        queue, where RED drops what is not ECN-capable.  A congested DCI direction therefore lost the replies
        to the other border's ARP probes, that border's entry failed, and every ACK and CNP sent back across
        the link died there (0 of 400 CNPs reached a DCQCN sender in one run).
        """
        for intf, peer in ((self.intf1, self.intf2), (self.intf2, self.intf1)):
            mac = netlink(peer.node).get_links(peer.index)[0].get_attr("IFLA_ADDRESS")
            netlink(intf.node).neigh("replace", dst=peer.IP(), lladdr=mac, ifindex=intf.index,
                                     state=neighbour_states["permanent"])

    def stats(self) -> list[dict]:
        """Per direction: which node sends, and the counters of its egress tree."""
        return [{"from": i.node.name, "to": o.node.name, **i.stats()}
                for i, o in ((self.intf1, self.intf2), (self.intf2, self.intf1))]


def wait_drained(intfs, timeout_s: float = 10.0, poll_s: float = 0.05) -> bool:
    """Wait until none of the shaped interfaces ``intfs`` holds a backlog (True) or ``timeout_s`` passes (False):
    what an earlier transfer left queued must not count towards the next measurement."""
    intfs = list(intfs)
    deadline = time.monotonic() + timeout_s
    while any(intf.stats()["backlog_bytes"] for intf in intfs):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True

