"""Everything a run records besides its results: telemetry always, packet captures on request, the live view.

    with observing(tb, out, Observe(capture=True), nchannels=1) as telemetry:
        perf(tb, options, telemetry_s=telemetry.interval_s, on_answers=telemetry.on_answers)

On leaving the block (also after a failure or Ctrl-C) the capture is closed and the telemetry is saved in
``out``, so whatever happened up to then can be analysed.
"""

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from testbed.collective.qp_numbers import queue_pairs
from testbed.observe.capture import DEFAULT_MAX_MB, WHOLE, Capture
from testbed.observe.telemetry import DEFAULT_INTERVAL_S, Telemetry


@dataclass(frozen=True)
class Observe:
    """How to observe a run: the sampling interval and scope (``testbed.observe.telemetry``) and what to capture:
    ``capture_links`` are node pairs, None for every DCI link (``testbed.observe.capture``)."""

    interval_s: float = DEFAULT_INTERVAL_S
    scope: str = "dci"
    capture: bool = False
    capture_links: tuple[tuple[str, str], ...] | None = None
    snaplen: int = WHOLE
    capture_max_mb: int = DEFAULT_MAX_MB


@contextmanager
def observing(tb, out: Path, observe: Observe, nchannels: int):
    """Sample ``tb`` (and capture if asked) while the block runs; yields the ``Telemetry``."""
    telemetry = Telemetry(tb, observe.interval_s, observe.scope)
    try:
        with telemetry:
            with _capture(tb, out, observe, telemetry.t0_ns, nchannels):
                yield telemetry
    finally:
        telemetry.save(out)


def _capture(tb, out: Path, observe: Observe, t0_ns: int, nchannels: int):
    if not observe.capture:
        return nullcontext()
    links = None if observe.capture_links is None else [tb.link(a, b) for a, b in observe.capture_links]
    pairs = queue_pairs([host.IP() for host in tb.hosts()], nchannels)
    return Capture(tb, out / "capture", links, observe.snaplen, observe.capture_max_mb, t0_ns, pairs)
