"""Distance-aware collectives: the algorithm and chunk a job runs with, chosen from the fabric as measured.

Why: the network's congestion control can only make the DCI carry what the collective puts on it.  A flat
ring of ``N = S * L`` ranks over ``S`` sites sends ``2(N-1)/N`` of the buffer through one rank pair per site
boundary, and its dependency chain crosses a DCI at about every ``L``-th of its ``2(N-1)`` hops; the
hierarchical all_reduce (reduce-scatter in each site, all-reduce of each shard across sites, all-gather in
each site: ``testbed.collective.schedules.builder``) sends ``2(S-1)/S`` of a ``1/L`` shard per rank across,
spread over ``L`` rank pairs, and crosses the DCIs only in its middle phase.  NVIDIA describes its NCCL
plug-in for Spectrum-XGS as one that "detects long-haul links and applies tuned transport settings"; NCCL's
own tuner plug-in interface (``ncclTunerPlugin_v*``, ``getCollInfo``) picks algorithm, protocol and channels
per call from a cost table.  Here the cost is this testbed's analytic bound (``testbed.collective.bounds``),
which reads the traffic off the very schedules the ranks would run, so the choice and the bound printed
beside the run use one model.

Rule (``choose``):
- Candidates: the flat ring and, for all_reduce over several sites with more than one rank in some site,
  the hierarchical algorithm; each with the chunks of ``CHUNKS`` (a quarter, one and four times NCCL's
  512 KiB step).  Channels stay 1: each of this transport's QPs paces at the line rate on its own, with no
  NIC sharing its port among them, so a second channel offers twice the host's link (``Algorithm``).
- Each candidate's bound is computed on ``graph``, which the caller gives with the DCIs' delays and rates as
  measured (``with_measured_dcis``): the choice follows the fabric found, not the one declared.
- The default (``Algorithm()``) stays unless a candidate's bound is shorter by more than ``MARGIN``: the
  bound leaves out the transport's per-message cost and everything congestion adds, so a small modelled
  gain is not worth leaving NCCL's default for.  Among candidates within ``MARGIN`` of the best, the largest
  chunk wins (fewer messages cost the Python transport less per byte).
- One choice per job, for its largest (bandwidth-bound) size: the fabric controller's plan (flows per DCI,
  each sender's starting share) is per job, as NCCL's communicator is per job; per-size switching between
  flat and hierarchical would change which flows cross each DCI mid-job.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import networkx as nx

from testbed.collective.bounds import collective_bound
from testbed.collective.schedules.model import Algorithm

DEFAULT = Algorithm()
CHUNKS = (DEFAULT.chunk_bytes // 4, DEFAULT.chunk_bytes, DEFAULT.chunk_bytes * 4)
MARGIN = 0.10


@dataclass(frozen=True)
class Choice:
    """The algorithm chosen, its bound and the default's (us), and the sentence that says why."""

    algorithm: Algorithm
    bound_us: float
    default_bound_us: float
    reason: str


def with_measured_dcis(graph: nx.Graph, measured: Iterable[tuple[tuple[str, str], float, float]]) -> nx.Graph:
    """A copy of ``graph`` with each DCI given as ((border, border), one-way delay ms, rate Mbit/s) set to
    those values; a DCI measured in both directions keeps the slower rate and the longer delay."""
    measured_graph = graph.copy()
    seen: set[frozenset] = set()
    for (a, b), delay_ms, rate_mbps in measured:
        edge, key = measured_graph[a][b], frozenset((a, b))
        if key in seen:
            delay_ms, rate_mbps = max(delay_ms, edge["delay_ms"]), min(rate_mbps, edge["bw_mbps"])
        seen.add(key)
        edge["delay_ms"], edge["bw_mbps"] = delay_ms, rate_mbps
    return measured_graph


def candidates(collective: str, sites: Sequence[Sequence[int]]) -> list[Algorithm]:
    """Every algorithm ``choose`` weighs for ``collective`` on ranks grouped by ``sites``."""
    hierarchical = collective == "all_reduce" and len(sites) > 1 and any(len(site) > 1 for site in sites)
    return [Algorithm(chunk_bytes=chunk, hierarchical=h) for h in (False, True)[:1 + hierarchical]
            for chunk in CHUNKS]


def choose(graph: nx.Graph, hosts: Sequence[str], sites: Sequence[Sequence[int]], collective: str,
           size_bytes: int, dtype: str = "float") -> Choice:
    """The algorithm ``collective`` of ``size_bytes`` runs with among ``hosts`` (ranks in order, grouped by
    ``sites`` as ``bounds.rank_sites`` gives them) on ``graph`` (see the module docstring)."""

    def bound_us(algorithm: Algorithm) -> float:
        return collective_bound(graph, hosts, collective, size_bytes, chunk_bytes=algorithm.chunk_bytes,
                                dtype=dtype, nchannels=algorithm.nchannels,
                                sites=sites if algorithm.hierarchical else None).time_us

    bounds = {algorithm: bound_us(algorithm) for algorithm in candidates(collective, sites)}
    default_us = bounds[DEFAULT]
    best_us = min(bounds.values())
    if best_us >= (1 - MARGIN) * default_us:
        return Choice(DEFAULT, default_us, default_us,
                      f"default kept: the best candidate's bound is {_gain(default_us, best_us)}")
    close = [a for a, us in bounds.items() if us <= (1 + MARGIN) * best_us]
    chosen = max(close, key=lambda a: (a.chunk_bytes, -bounds[a]))
    return Choice(chosen, bounds[chosen], default_us,
                  f"{describe(chosen)}: bound {bounds[chosen] / 1e3:.3g} ms against the default's "
                  f"{default_us / 1e3:.3g} ms ({_gain(default_us, bounds[chosen])})")


def describe(algorithm: Algorithm) -> str:
    """``hierarchical, 2 MiB chunks, 1 channel``: how the table and the log name an algorithm."""
    kind = "hierarchical" if algorithm.hierarchical else "flat ring"
    chunk = algorithm.chunk_bytes
    size = f"{chunk // 1048576} MiB" if chunk % 1048576 == 0 else f"{chunk // 1024} KiB"
    return f"{kind}, {size} chunks, {algorithm.nchannels} channel{'s' * (algorithm.nchannels > 1)}"


def _gain(default_us: float, us: float) -> str:
    return f"{100 * (1 - us / default_us):.0f} % shorter" if us < default_us else "no shorter"
