"""The comparison's modes: which congestion control crosses the DCIs, and which of the scale-across mechanisms are on
(see ``testbed.experiments.fabric_controller``).

Mechanisms, each switchable on its own (issue 14's ablation):

  timers      RTT-scaled timers and BDP-derived increase steps at the senders, the CNP interval a fraction of
              the RTT at the receivers (``controllers.adaptive``)
  window      start at the measured share, a window of BDP plus the target queue (``controllers.adaptive``)
  delay       the delay signal: the receivers report forward queueing above the target, which cuts the rate
              (``controllers.forward_delay``, ``controllers.adaptive``)
  thresholds  BDP- and target-derived ECN thresholds at every DCI egress (``controllers.adaptive.ecn_thresholds``)
  loop        the latency loop holding each DCI queue near its target (``controllers.latency``)
  nearsource  near-source feedback: each border answers its DCI egress's CE marks with CNPs to the local
              senders, the receivers stay quiet about marks on DCI flows (``testbed.collective.near_source``)

A mode named ``adaptive:timers+delay`` runs the distance-adaptive controller with just those mechanisms;
``adaptive`` has them all (the network alone: the collective runs as NCCL's default); ``scale-across`` is
``adaptive`` plus distance-aware collectives, the fabric controller choosing the job's algorithm and chunk from
the measured paths (``testbed.collective.tuning``): its ratio to the baseline is the full-stack one, beside
``adaptive``'s network-only one; ``baseline`` none: off-the-shelf RoCE, DCQCN with the mlx5 firmware defaults
(``controllers.dcqcn.MLX5_FIRMWARE``) and the DCI routers' shipped ECN profile (``testbed.model.fabric``);
``dcqcn-paper`` is the same with the DCQCN paper's knobs scaled to the line rate (the baseline until
2026-12-07), to see how much the baseline's numbers owe to its knobs.
"""

from dataclasses import dataclass

from controllers.adaptive import MECHANISMS as SENDER_MECHANISMS
from controllers.adaptive import Adaptive
from controllers.base import CongestionControl
from controllers.dcqcn import Dcqcn
from controllers.swift import Swift

FABRIC_MECHANISMS = ("thresholds", "loop", "nearsource")
MECHANISMS = (*SENDER_MECHANISMS, *FABRIC_MECHANISMS)


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    dci_cc: type[CongestionControl]  # what the paths that cross a DCI run
    mechanisms: frozenset[str] = frozenset()
    dcqcn_profile: str = "mlx5"  # the knobs of a DCQCN across DCIs (``controllers.dcqcn.params_from_spec``)
    tuned_collective: bool = False  # the controller chooses the collective's algorithm (full stack)

    @property
    def derived_thresholds(self) -> bool:
        return "thresholds" in self.mechanisms

    @property
    def govern(self) -> bool:
        return "loop" in self.mechanisms

    @property
    def near_source(self) -> bool:
        return "nearsource" in self.mechanisms

    @property
    def delay_reports(self) -> bool:
        """Whether the receivers of DCI flows report their forward queueing delay (for the delay signal)."""
        return self.dci_cc is Adaptive and "delay" in self.mechanisms

    def cc_spec(self, **fields) -> dict:
        """The spec of the DCI paths' congestion control: the adaptive controller also gets which of the
        senders' mechanisms are on."""
        if self.dci_cc is Adaptive:
            fields["mechanisms"] = [m for m in SENDER_MECHANISMS if m in self.mechanisms]
        if self.dci_cc is Dcqcn:
            fields["profile"] = self.dcqcn_profile
        return self.dci_cc.spec(**fields)


MODES = {
    "baseline": Mode("baseline", "off-the-shelf RoCE: DCQCN with mlx5 firmware defaults, the DCI routers' shipped "
                     "ECN profile", Dcqcn),
    "dcqcn-paper": Mode("dcqcn-paper", "DCQCN with the paper's knobs scaled to the line rate, shipped ECN profile",
                        Dcqcn, dcqcn_profile="paper"),
    "adaptive": Mode("adaptive", "distance-adaptive CC, BDP-derived thresholds, latency loop", Adaptive,
                     frozenset(MECHANISMS)),
    "scale-across": Mode("scale-across", "adaptive with every mechanism, plus distance-aware collectives "
                         "(algorithm and chunk from the measured paths): the full stack", Adaptive,
                         frozenset(MECHANISMS), tuned_collective=True),
    "swift": Mode("swift", "Swift-style delay target across DCIs, BDP-derived thresholds", Swift,
                  frozenset({"timers", "thresholds"})),
}


def lookup(name: str) -> Mode:
    """The mode called ``name`` (``adaptive:<mechanism>+...`` for the adaptive controller with just those); a
    one-line ValueError naming the modes and mechanisms otherwise."""
    if name in MODES:
        return MODES[name]
    base, _, chosen = name.partition(":")
    if base != "adaptive" or not chosen:
        raise ValueError(f"unknown mode {name!r} (modes: {', '.join(MODES)}, or adaptive:MECHANISM+... with "
                         f"mechanisms {', '.join(MECHANISMS)})")
    mechanisms = chosen.split("+")
    unknown = [m for m in mechanisms if m not in MECHANISMS]
    if unknown or len(set(mechanisms)) != len(mechanisms):
        raise ValueError(f"mode {name!r}: unknown or repeated mechanism {', '.join(unknown) or chosen} "
                         f"(mechanisms: {', '.join(MECHANISMS)})")
    return Mode(name, f"distance-adaptive CC with {', '.join(mechanisms)} only", Adaptive, frozenset(mechanisms))


def ablation_modes() -> list[str]:
    """The ablation's modes: the baseline, each mechanism alone, all of them (network only), and the full
    stack (all of them with distance-aware collectives)."""
    return ["baseline", *(f"adaptive:{m}" for m in MECHANISMS), "adaptive", "scale-across"]
