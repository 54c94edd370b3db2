"""The comparison's modes: which congestion control crosses the DCIs, which thresholds the DCI egresses get,
and whether the latency loop acts (see ``testbed.experiments.fabric_controller``)."""

from dataclasses import dataclass

from controllers.adaptive import Adaptive
from controllers.base import CongestionControl
from controllers.dcqcn import Dcqcn
from controllers.swift import Swift


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    dci_cc: type[CongestionControl]  # what the paths that cross a DCI run
    derived_thresholds: bool
    govern: bool


MODES = {
    "baseline": Mode("baseline", "DCQCN with intra-datacenter defaults, plain ECN thresholds", Dcqcn, False, False),
    "adaptive": Mode("adaptive", "distance-adaptive CC, BDP-derived thresholds, latency loop", Adaptive, True, True),
    "swift": Mode("swift", "Swift-style delay target across DCIs, BDP-derived thresholds", Swift, True, False),
}


def lookup(name: str) -> Mode:
    """The mode called ``name``; a one-line ValueError listing the modes otherwise."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r} (modes: {', '.join(MODES)})")
    return MODES[name]
