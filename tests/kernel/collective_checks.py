"""What the collective kernel tests share: how the ranks run, and what they count wrong.

Flows are paced at a fixed 20 Mbit/s each: under TCG all ranks share two emulated CPUs, and what these
tests check is correctness across the DCIs (with loss too), not speed.
"""

from controllers.fixed_rate import FixedRate
from testbed.collective.runner import command
from testbed.collective.schedules.model import Algorithm

PACED = FixedRate.spec(rate_bps=20e6)
CHUNKED = Algorithm(nchannels=2, chunk_bytes=1024)  # several chunks per step and two rings even at 4 KB
HIERARCHICAL = Algorithm(nchannels=2, chunk_bytes=1024, hierarchical=True)


def answers(tb, ranks, collective: str, count: int, **options) -> list[dict]:
    """Every rank's answer to running ``collective`` on ``count`` elements (float32): its count of wrong
    elements, its time, its flows' counters (retransmissions, NAKs, timeouts...)."""
    return ranks.run(command(tb, collective, count, **options))


def wrong(tb, ranks, collective: str, count: int, **options) -> list:
    """What each rank counted wrong after running ``collective`` on ``count`` elements (float32)."""
    return [answer["wrong"] for answer in answers(tb, ranks, collective, count, **options)]
