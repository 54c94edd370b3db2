"""A running fabric: Mininet built from a FabricTopo, routed, shaped, and always torn down.

    with Testbed(TwoSites(distance_km=1000)) as tb:
        west, east = tb.hosts("west")[0], tb.hosts("east")[0]
        print(west.cmd("ping -c 3", east.IP()))
        tb.dci("west", "east").set(loss_pct=1)
        qp = connect(tb, west, east)          # a RoCE queue pair (testbed.roce.queue_pair)

``Testbed(topo, dilation=k)`` runs the declared fabric ``k`` times slower (``testbed.model.dilation``): the
kernel's links get rate / k and delay x k, the processes started on it read ``tb.dilation`` and stretch their
own clocks, and what they measure is reported back in declared units.

What upper layers attach to a run (a host's software RoCE NIC, ``testbed.roce.queue_pair.host_nic``) is
kept with ``resource``: made on first use, owned by this process, closed before the fabric goes.

Teardown runs on normal exit, on exceptions, on Ctrl-C and on SIGTERM/SIGHUP (turned into
KeyboardInterrupt so ``finally`` blocks run; one that Python or a library loses is sent again, see
``testbed.net.interrupts``); a ``kill -9`` leaves the record that ``testbed clean`` sweeps.
"""

import os
from collections.abc import Callable
from functools import partial

from mininet.log import lg, setLogLevel
from mininet.net import Mininet

from testbed.model.dilation import check as check_dilation
from testbed.net import cleanup
from testbed.net.interrupts import InterruptGuard
from testbed.net.link import ShapedIntf, ShapedLink, close_netlink, netlink
from testbed.net.routing import compute_routes, fabric_graph, install_routes
from testbed.net.steering import steer
from testbed.net.tc import qdisc
from testbed.net.topo import FabricTopo


def check_emulable(topo: FabricTopo, dilation: float) -> None:
    """Raise TopologyError, before anything is built, unless the kernel can hold every link of ``topo`` run
    ``dilation`` times slower (``testbed.net.tc.qdisc.check_emulable``)."""
    for a, b, info in topo.links(withInfo=True):
        qdisc.check_emulable(info["config"], topo.fabric.mtu, f"link {a}-{b}", dilation)


class _Building(Mininet):
    """Mininet that says how far its build has got: nodes, then links, each of how many."""

    def __init__(self, *args, progress: Callable[[str], None] | None = None, **kwargs):
        self._progress, self._built = progress, {"nodes": 0, "links": 0}
        super().__init__(*args, **kwargs)  # builds

    def _report(self, what: str) -> None:
        self._built[what] += 1
        if self._progress is not None:
            total = len(self.topo.nodes()) if what == "nodes" else len(self.topo.links())
            self._progress(f"{self._built[what]} of {total} {what}")

    def addHost(self, *args, **kwargs):
        node = super().addHost(*args, **kwargs)
        self._report("nodes")
        return node

    def addLink(self, *args, **kwargs):
        link = super().addLink(*args, **kwargs)
        self._report("links")
        return link


class Testbed:
    """Builds ``topo`` on ``start()`` (or ``with``), removes every trace of it on ``stop()``."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, topo: FabricTopo, dilation: float = 1.0, log_level: str = "warning"):
        self.topo = topo
        self.dilation = check_dilation(dilation)
        check_emulable(topo, self.dilation)
        self.graph = fabric_graph(topo)
        self.net: Mininet | None = None
        self._record = None
        self._owner = os.getpid()
        self._interrupts = InterruptGuard()
        self._resources: dict[str, object] = {}
        setLogLevel(log_level)

    def __enter__(self) -> "Testbed":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, progress: Callable[[str], None] | None = None) -> "Testbed":
        """Build the fabric (a no-op if it runs already); ``progress`` hears how far the build has got."""
        if self.net is not None:
            return self
        if cleanup.record_path().exists():
            raise RuntimeError(f"a fabric is already running in this process ({cleanup.record_path()}): "
                               "stop it before starting another (node names and records are per process)")
        self._owner = os.getpid()
        self._interrupts.install()
        self._record = cleanup.record(list(self.topo.nodes()))
        try:
            with cleanup.marked():
                self.net = _Building(topo=self.topo, link=partial(ShapedLink, dilation=self.dilation),
                                     controller=None, autoSetMacs=True, waitConnected=False, progress=progress)
            cleanup.pin({node.name: node.pid for node in self.net.hosts})
            self.net.start()
            for link in self.net.links:
                link.pin_neighbours()
            routes = compute_routes(self.graph)
            for node in self.net.hosts:
                steer(node)
                install_routes(netlink(node), routes[node.name])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove every trace of the fabric, even when Ctrl-C interrupted a command on some node.

        Mininet's ``net.stop()`` deletes links one shell command at a time and asserts when a node's shell
        is still busy with an interrupted command.  Every node here lives in its own network namespace
        (routers included), so ending the shells and then every process in those namespaces removes the
        namespaces and, with them, every veth pair and qdisc: nothing is left in the root namespace.
        """
        if os.getpid() != self._owner:
            return  # a forked helper's copy of this object: the fabric is not its to remove
        try:
            for resource in self._resources.values():
                resource.close()
            self._resources.clear()
            if self.net is not None:
                for node in self.net.hosts:
                    close_netlink(node)
                    node.terminate()
        finally:
            self.net = None
            if self._record is not None:
                cleanup.sweep(self._record)
                self._record = None
            self._interrupts.restore()

    def cli(self, open_cli: Callable[[], object] | None = None) -> None:
        """Mininet's CLI on this fabric (or ``open_cli()``, one that extends it).  It catches Ctrl-C itself, to
        stop the command it runs, so a Ctrl-C it handled is not sent again.  The CLI prints what a node's
        command says at Mininet's "output" log level, which a quiet fabric (``log_level`` "warning") would
        swallow: a ping printed nothing at all."""
        from mininet.cli import CLI

        level = lg.getEffectiveLevel()
        lg.setLogLevel("output")
        try:
            with self._interrupts.suspended():
                (open_cli or (lambda: CLI(self.net)))()
        finally:
            for logger in (lg, *lg.handlers):
                logger.setLevel(level)

    # -- access ------------------------------------------------------------------------------------------

    def node(self, name: str):
        return self.net[name]

    def set_dilation(self, dilation: float) -> None:
        """Run the same fabric at another k from now on: every link's qdiscs changed in place (no packet lost),
        and what starts on the fabric afterwards (ranks, probes, telemetry) reads the new ``dilation``."""
        self.dilation = check_dilation(dilation)
        for link in self.net.links:
            for intf in (link.intf1, link.intf2):
                intf.set_dilation(self.dilation)

    def resource(self, key: str, make):
        """What ``make()`` returns, made once per ``key`` for this run and closed (``close()``) before the
        fabric is torn down: the way upper layers attach things to a running fabric."""
        if key not in self._resources:
            self._resources[key] = make()
        return self._resources[key]

    def hosts(self, site: str | None = None) -> list:
        """The GPU hosts (not the routers), optionally of one site, in declaration order."""
        match = {"role": "host"} if site is None else {"role": "host", "site": site}
        return [self.net[name] for name in self.topo.nodes_with(**match)]

    def dci(self, a: str, b: str) -> ShapedLink:
        """The DCI link between sites ``a`` and ``b`` (either order)."""
        return self.link(f"{a}b", f"{b}b")

    def link(self, a: str, b: str) -> ShapedLink:
        links = self.net.linksBetween(self.net[a], self.net[b])
        if not links:
            raise KeyError(f"no link between {a} and {b}")
        return links[0]

    def egress(self, node: str, peer: str) -> ShapedIntf:
        """The interface ``node`` sends to ``peer`` through: where that direction's queue builds."""
        link = self.link(node, peer)
        return link.intf1 if link.intf1.node.name == node else link.intf2

    def dci_links(self) -> list[tuple[str, ShapedLink]]:
        """(name, link) of every DCI link, in declaration order."""
        return [(info["dci"], self.link(a, b)) for a, b, info in self.topo.dci_link_names()]
