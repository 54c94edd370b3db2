"""The declarative model of a multi-site fabric, and its validation.

A fabric is a set of sites (GPU hosts under leaf switches, spines, one border switch each) joined by DCI
links between border switches.  Everything here is plain data: it is checked completely before anything is
built in the kernel, so a bad value stops the run with one line naming it and leaves nothing behind.
"""

import math
import re
from dataclasses import dataclass, field, replace

from testbed.model.units import bdp_bytes, frame_bytes, propagation_delay_ms

IFNAMSIZ = 15  # longest Linux interface name
NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")
MAX_SITES = 254  # one 10.<site>.0.0/16 per site
# links (veth pairs, each with two qdisc trees) a fabric may have: a Mininet veth pair took 0.81 MB of kernel
# and shell memory (435 links between 30 nodes: 354 MB, measured natively), so 1,000 take ~0.8 GB of the
# microVM's default 3 GB (TESTBED_VM_MEMORY) and leave the rest to the CLI and the rank processes; building
# costs 1-1.5 s per node under TCG, ~20 min for such a fabric.  A connected fabric has at most one node
# (namespace) more than it has links, and each site's /16 holds 16,384 /30s, far more than this.
MAX_LINKS = 1000
DEFAULT_MTU = 9000  # RoCE fabrics run jumbo frames
DEFAULT_DCI_BW_MBPS = 50.0


@dataclass(frozen=True)
class EcnProfile:
    """RED/ECN settings a switch ships with, in bytes, for the links whose topology leaves them out."""

    kmin_bytes: int
    kmax_bytes: int
    pmax: float


#: A DCI router as shipped: SONiC's AZURE_LOSSLESS WRED profile (files/build_templates/qos_config.j2:
#: green_min_threshold 1048576, green_max_threshold 2097152, green_drop_probability 5, ecn ecn_all), the
#: profile SONiC also applies on VOQ chassis, its deep-buffer (Jericho-class) DCI routers.
DCI_ROUTER_ECN = EcnProfile(kmin_bytes=1 << 20, kmax_bytes=2 << 20, pmax=0.05)
#: The DCQCN paper's switches: Kmin 5 KB, Kmax 200 KB, Pmax 1 % at 40 Gbit/s (rates scaled in ``resolved``).
DATACENTER_PMAX = 0.01


class TopologyError(ValueError):
    """A fabric description that cannot be built; the message names the field and the value."""


@dataclass(frozen=True)
class LinkConfig:
    """What the kernel is told about one link; it applies to each direction separately.

    ``buffer_bytes`` and the ECN thresholds default (None) to values derived from the rate, the delay and
    the MTU (see ``resolved``), so that no number is hard-coded into the qdiscs.

    ``loss_burst_pkts`` 0 loses packets independently; from 1 up it is the mean number of consecutive
    packets each loss event takes (``loss_pct`` stays the average), as WAN outages and fades do.
    """

    bw_mbps: float
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    loss_burst_pkts: float = 0.0
    reorder_pct: float = 0.0
    duplicate_pct: float = 0.0
    corrupt_pct: float = 0.0
    buffer_bytes: int | None = None
    ecn_kmin_bytes: int | None = None
    ecn_kmax_bytes: int | None = None
    ecn_pmax: float | None = None

    def resolved(self, mtu: int, shipped: EcnProfile | None = None) -> "LinkConfig":
        """Fill the derived defaults.

        Buffer: one round trip of this link at its rate (a deep-buffer DCI router holds about a BDP),
        at least 100 us at line rate (a shallow datacenter switch port) and 64 full frames.  ECN
        thresholds: the ``shipped`` profile's where given (a DCI router's, ``DCI_ROUTER_ECN``), Kmax
        clamped to the buffer and Kmin to half of Kmax; otherwise the DCQCN paper's switch settings (Kmin
        5 KB, Kmax 200 KB at 40 Gbit/s, i.e. 1 us and 40 us of queueing) scaled to this link's rate, and at
        least 2 and 8 full frames so RED can act on jumbo frames at the emulated rates.
        """
        frame = frame_bytes(mtu)
        bytes_per_us = self.bw_mbps / 8
        buffer = self.buffer_bytes or max(bdp_bytes(self.bw_mbps, 2 * self.delay_ms),
                                          math.ceil(100 * bytes_per_us), 64 * frame)
        if shipped:
            kmax = self.ecn_kmax_bytes or min(buffer, shipped.kmax_bytes)
            kmin = self.ecn_kmin_bytes or min(kmax // 2, shipped.kmin_bytes)
        else:
            kmax = self.ecn_kmax_bytes or min(buffer, max(8 * frame, math.ceil(40 * bytes_per_us)))
            kmin = self.ecn_kmin_bytes or min(kmax // 2, max(2 * frame, math.ceil(bytes_per_us)))
        pmax = self.ecn_pmax if self.ecn_pmax is not None else shipped.pmax if shipped else DATACENTER_PMAX
        return replace(self, buffer_bytes=buffer, ecn_kmin_bytes=kmin, ecn_kmax_bytes=kmax, ecn_pmax=pmax)

    def dilated(self, dilation: float) -> "LinkConfig":
        """The link as the emulator runs it ``dilation`` times slower (``testbed.model.dilation``): the rate
        divided, the delay and jitter multiplied; probabilities, burst lengths, the buffer and the thresholds
        (bytes) unchanged.  Only a resolved link dilates: its derived buffer and thresholds are the declared
        link's, never ones re-derived from the slower rate."""
        if None in (self.buffer_bytes, self.ecn_kmin_bytes, self.ecn_kmax_bytes, self.ecn_pmax):
            raise ValueError("resolve a LinkConfig before dilating it: its buffer and thresholds are in bytes")
        return replace(self, bw_mbps=self.bw_mbps / dilation, delay_ms=self.delay_ms * dilation,
                       jitter_ms=self.jitter_ms * dilation)

    def check(self, where: str) -> None:
        """Raise TopologyError naming ``where`` and the first bad field."""
        _number(where, "bw_mbps", self.bw_mbps, low=0, low_open=True)
        for name in ("delay_ms", "jitter_ms"):
            _number(where, name, getattr(self, name), low=0)
        for name in ("loss_pct", "reorder_pct", "duplicate_pct", "corrupt_pct"):
            _number(where, name, getattr(self, name), low=0, high=100)
        self._check_loss_bursts(where)
        if self.ecn_pmax is not None:
            _number(where, "ecn_pmax", self.ecn_pmax, low=0, high=1, low_open=True)
        for name in ("buffer_bytes", "ecn_kmin_bytes", "ecn_kmax_bytes"):
            value = getattr(self, name)
            if value is not None:  # the kernel counts whole bytes: a 0.5 B Kmin reached RED as 0 and failed there
                _number(where, name, value, low=0, low_open=True)
                if not float(value).is_integer():
                    raise TopologyError(f"{where}: {name} {value!r} must be a whole number of bytes")
        if self.reorder_pct and not self.delay_ms:
            raise TopologyError(f"{where}: reorder_pct {self.reorder_pct} needs a delay_ms > 0 to reorder against")
        kmin, kmax, buf = self.ecn_kmin_bytes, self.ecn_kmax_bytes, self.buffer_bytes
        if kmin and kmax and kmin >= kmax:
            raise TopologyError(f"{where}: ecn_kmin_bytes {kmin} must be below ecn_kmax_bytes {kmax}")
        if kmax and buf and kmax > buf:
            raise TopologyError(f"{where}: ecn_kmax_bytes {kmax} exceeds buffer_bytes {buf}")

    def _check_loss_bursts(self, where: str) -> None:
        """Bursts of ``b`` packets need gaps of at least one packet between them, so the average loss of a
        Gilbert chain is at most b / (b + 1); 100 % (everything lost) has no bursts and stays allowed."""
        burst, loss = self.loss_burst_pkts, self.loss_pct
        _number(where, "loss_burst_pkts", burst)
        if burst != 0 and burst < 1:
            raise TopologyError(f"{where}: loss_burst_pkts {burst!r} must be 0 (independent losses) or >= 1")
        most = 100 * burst / (burst + 1)
        if burst and most < loss < 100:
            raise TopologyError(f"{where}: loss_pct {loss!r} with loss_burst_pkts {burst!r} must be "
                                f"<= {most:.4g} (bursts need gaps) or 100")


@dataclass(frozen=True)
class Site:
    """One datacenter: ``hosts`` GPU nodes spread over ``leaves``, a full mesh to ``spines``, one border."""

    name: str
    hosts: int = 4
    leaves: int = 2
    spines: int = 1
    host_link: LinkConfig = LinkConfig(bw_mbps=100)
    fabric_link: LinkConfig = LinkConfig(bw_mbps=100)

    def node_names(self) -> dict[str, list[str]]:
        """Node names by role; short, because interface names derive from them (``westl1-eth2``)."""
        return {
            "host": [f"{self.name}h{i}" for i in range(1, self.hosts + 1)],
            "leaf": [f"{self.name}l{i}" for i in range(1, self.leaves + 1)],
            "spine": [f"{self.name}s{i}" for i in range(1, self.spines + 1)],
            "border": [f"{self.name}b"],
        }

    def links(self) -> int:
        """Links inside the site: one per host, every leaf to every spine, every spine to the border."""
        return self.hosts + self.leaves * self.spines + self.spines

    def check(self, dcis: int = 0) -> None:
        """Raise TopologyError naming the first bad field; ``dcis`` is how many DCI links end at the border.
        The counts are checked as numbers, before any per-node list exists (``--hosts 10000000`` once took
        884 MB and 5 s to be refused)."""
        where = f"site {self.name!r}"
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise TopologyError(f"{where}: name must be lower-case letters and digits, starting with a letter")
        for name in ("hosts", "leaves", "spines"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TopologyError(f"{where}: {name} {value!r} must be a whole number >= 1")
            if value > MAX_LINKS:
                raise TopologyError(f"{where}: {name} {value} must be at most {MAX_LINKS} (a fabric holds at most "
                                    f"{MAX_LINKS} links)")
        mesh = self.links() - self.hosts
        if mesh >= MAX_LINKS:
            raise TopologyError(f"{where}: leaves {self.leaves} x spines {self.spines} make {mesh} leaf, spine and "
                                f"border links, and a fabric holds at most {MAX_LINKS}")
        if self.links() > MAX_LINKS:
            raise TopologyError(f"{where}: hosts {self.hosts} must be at most {MAX_LINKS - mesh} (with its {mesh} "
                                f"leaf, spine and border links, a fabric holds at most {MAX_LINKS} links)")
        self._check_interface_names(where, dcis)
        self.host_link.check(f"{where} host_link")
        self.fabric_link.check(f"{where} fabric_link")

    def longest_interface(self, dcis: int = 0) -> str:
        """The longest interface name the site's nodes get (Mininet's ``<node>-eth<port>``, ports from 0): a
        host's one port, a leaf's to its hosts then the spines, a spine's to the leaves then the border, the
        border's to the spines then the DCIs."""
        per_leaf = -(-self.hosts // self.leaves)
        return max((f"{self.name}h{self.hosts}-eth0", f"{self.name}l{self.leaves}-eth{per_leaf + self.spines - 1}",
                    f"{self.name}s{self.spines}-eth{self.leaves}", f"{self.name}b-eth{self.spines + dcis - 1}"),
                   key=len)

    def _fits(self, dcis: int, **counts) -> bool:
        return len(replace(self, **counts).longest_interface(dcis)) <= IFNAMSIZ

    def _largest_fitting(self, name: str, dcis: int) -> int:
        """The largest value of count ``name`` (the others as they are) whose names fit; 1 must fit."""
        low, high = 1, getattr(self, name)  # fits at low, not at high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self._fits(dcis, **{name: middle}) else (low, middle)
        return low

    def _check_interface_names(self, where: str, dcis: int) -> None:
        """Blame the count that needs the smallest cut for every name to fit, and give its largest value that
        fits; the site's name when no count alone can."""
        longest = self.longest_interface(dcis)
        if len(longest) <= IFNAMSIZ:
            return
        bounds = {name: self._largest_fitting(name, dcis) for name in ("hosts", "leaves", "spines")
                  if self._fits(dcis, **{name: 1})}
        if not bounds:
            raise TopologyError(f"{where}: name too long: interface {longest} would exceed {IFNAMSIZ} characters")
        name = max(bounds, key=lambda n: bounds[n] / getattr(self, n))
        raise TopologyError(f"{where}: {name} {getattr(self, name)} must be at most {bounds[name]}: interface "
                            f"{longest} would exceed {IFNAMSIZ} characters")


@dataclass(frozen=True)
class DciLink:
    """A long-haul link between the border switches of two sites.

    ``config`` holds its rate, impairments, buffer and thresholds; its delay is the fibre's, ``distance_km``
    at 5 us/km (see ``testbed.model.units``) unless ``delay_ms`` overrides it, so ``config`` itself carries
    none (``link_config`` is the whole link, delay included).
    """

    a: str
    b: str
    distance_km: float
    config: LinkConfig = LinkConfig(bw_mbps=DEFAULT_DCI_BW_MBPS)
    delay_ms: float | None = None

    @property
    def name(self) -> str:
        return f"{self.a}-{self.b}"

    def one_way_delay_ms(self) -> float:
        return propagation_delay_ms(self.distance_km) if self.delay_ms is None else self.delay_ms

    def link_config(self) -> LinkConfig:
        """The DCI as declared: ``config`` with the delay derived from the distance."""
        return replace(self.config, delay_ms=self.one_way_delay_ms())

    def resolved(self, mtu: int) -> LinkConfig:
        """The DCI as the kernel gets it: defaults filled, its ECN settings the shipped DCI router's."""
        return self.link_config().resolved(mtu, DCI_ROUTER_ECN)

    def check(self, sites: set[str]) -> None:
        where = f"dci {self.name}"
        for end in (self.a, self.b):
            if end not in sites:
                raise TopologyError(f"{where}: unknown site {end!r} (sites: {', '.join(sorted(sites))})")
        if self.a == self.b:
            raise TopologyError(f"{where}: a DCI link must join two different sites")
        _number(where, "distance_km", self.distance_km, low=0)
        if self.delay_ms is not None:
            _number(where, "delay_ms", self.delay_ms, low=0)
        if self.config.delay_ms:
            raise TopologyError(f"{where}: its delay comes from distance_km or delay_ms, not from config "
                                f"(delay_ms {self.config.delay_ms!r})")
        self.link_config().check(where)


@dataclass
class Fabric:
    """Sites and the DCI links between them, plus fabric-wide settings."""

    sites: list[Site] = field(default_factory=list)
    dci_links: list[DciLink] = field(default_factory=list)
    mtu: int = DEFAULT_MTU

    def site(self, name: str) -> Site:
        return next(s for s in self.sites if s.name == name)

    def shortest_dci_rtt_ms(self) -> float | None:
        """Twice the shortest DCI's one-way delay: what the RTT between two sites' hosts is at least, known
        before anything is built (None: no DCI, or none with a delay)."""
        delays = [d.one_way_delay_ms() for d in self.dci_links]
        return 2 * min(delays) if delays and min(delays) > 0 else None

    def varied(self, dci_km: float | None = None, rate_scale: float = 1.0) -> "Fabric":
        """The same fabric with every DCI ``dci_km`` long (its delay from the distance) and every link's rate
        times ``rate_scale``: what a distance sweep runs at each distance (``testbed.commands.compare``)."""
        def scaled(config: LinkConfig) -> LinkConfig:
            return replace(config, bw_mbps=config.bw_mbps * rate_scale)
        sites = [replace(s, host_link=scaled(s.host_link), fabric_link=scaled(s.fabric_link)) for s in self.sites]
        dcis = [replace(d, config=scaled(d.config),
                        **({} if dci_km is None else {"distance_km": dci_km, "delay_ms": None}))
                for d in self.dci_links]
        return Fabric(sites, dcis, self.mtu)

    def validate(self) -> None:
        """Check everything; raise TopologyError on the first problem."""
        if not self.sites:
            raise TopologyError("fabric: no sites declared")
        if len(self.sites) > MAX_SITES:
            raise TopologyError(f"fabric: {len(self.sites)} sites, at most {MAX_SITES} are supported")
        if len(self.dci_links) > MAX_LINKS:
            raise TopologyError(f"fabric: {len(self.dci_links)} DCI links, at most {MAX_LINKS} links in all")
        if isinstance(self.mtu, bool) or not isinstance(self.mtu, int) or not 1280 <= self.mtu <= 9000:
            raise TopologyError(f"fabric: mtu {self.mtu!r} must be a whole number from 1280 to 9000")
        seen: set[str] = set()
        for site in self.sites:
            if site.name in seen:
                raise TopologyError(f"site {site.name!r}: duplicate site name")
            site.check(sum(site.name in (d.a, d.b) for d in self.dci_links))
            seen.add(site.name)
        self._check_size()
        pairs: set[frozenset] = set()
        for dci in self.dci_links:
            dci.check(seen)
            pair = frozenset((dci.a, dci.b))
            if pair in pairs:
                raise TopologyError(f"dci {dci.name}: duplicate link between {dci.a!r} and {dci.b!r}")
            pairs.add(pair)
        self._check_resolved()
        self._check_connected()

    def _check_resolved(self) -> None:
        """Every link again with its derived buffer and thresholds: a threshold given alone can pass the ones
        derived for the rest (``ecn_kmax_bytes`` above the derived buffer), which RED's encoder refuses."""
        links = [(f"site {site.name!r} {kind}", getattr(site, kind))
                 for site in self.sites for kind in ("host_link", "fabric_link")]
        for where, config in links:
            config.resolved(self.mtu).check(where)
        for dci in self.dci_links:
            dci.resolved(self.mtu).check(f"dci {dci.name}")

    def _check_size(self) -> None:
        """At most MAX_LINKS links in all, the message naming what they are made of (hosts, sites, DCIs)."""
        hosts = sum(s.hosts for s in self.sites)
        total = sum(s.links() for s in self.sites) + len(self.dci_links)
        if total > MAX_LINKS:
            raise TopologyError(f"fabric: {len(self.sites)} sites with {hosts} hosts in all and {len(self.dci_links)} "
                                f"DCI links make {total} links, at most {MAX_LINKS}")

    def _check_connected(self) -> None:
        names = [s.name for s in self.sites]
        reached, frontier = {names[0]}, [names[0]]
        while frontier:
            here = frontier.pop()
            for dci in self.dci_links:
                there = dci.b if here == dci.a else dci.a if here == dci.b else None
                if there and there not in reached:
                    reached.add(there)
                    frontier.append(there)
        cut_off = [n for n in names if n not in reached]
        if cut_off:
            raise TopologyError(f"fabric: site {cut_off[0]!r} is not connected to site {names[0]!r} by any DCI path")


def _number(where: str, name: str, value, low=None, high=None, low_open=False) -> None:
    """Check that ``value`` is a finite number in range, else raise TopologyError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TopologyError(f"{where}: {name} {value!r} is not a number")
    if low is not None and (value <= low if low_open else value < low):
        raise TopologyError(f"{where}: {name} {value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise TopologyError(f"{where}: {name} {value!r} must be <= {high}")
