"""The comparison's modes: which congestion control crosses the DCIs, which thresholds the DCI egresses get,
and whether the latency loop acts (see ``controllers.fabric_controller``)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    dci_cc: str  # the cc kind of paths that cross a DCI
    derived_thresholds: bool
    govern: bool


MODES = {
    "baseline": Mode("baseline", "DCQCN with intra-datacenter defaults, plain ECN thresholds", "dcqcn", False, False),
    "adaptive": Mode("adaptive", "distance-adaptive CC, BDP-derived thresholds, latency loop", "adaptive", True, True),
    "swift": Mode("swift", "Swift-style delay target across DCIs, BDP-derived thresholds", "swift", True, False),
}


def lookup(name: str) -> Mode:
    """The mode called ``name``; a one-line ValueError listing the modes otherwise."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r} (modes: {', '.join(MODES)})")
    return MODES[name]
