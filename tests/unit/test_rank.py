"""Rank processes driven like the testbed drives them, natively over loopback: real UDP queue pairs, real
processes, every element of every result checked by the ranks.  (Over a fabric: tests/kernel.)"""

import json
import subprocess

import pytest

from controllers.dcqcn import Dcqcn
from testbed.collective.point_to_point import flow_input, wrong_bytes
from testbed.collective.rank_links import RankLinks
from testbed.collective.runner import RankError, Ranks
from testbed.roce.nic import Nic
from testbed.roce.transport import TransportConfig


class LoopbackHost:
    """Stands in for a Mininet host: a name, an address on loopback, and ``popen`` in this namespace."""

    def __init__(self, index: int, subnet: int) -> None:
        self.name, self.ip = f"h{index}", f"127.0.{subnet}.{index + 1}"

    def IP(self) -> str:  # noqa: N802 (Mininet's name)
        return self.ip

    def popen(self, cmd, **kwargs):
        return subprocess.Popen(cmd, **kwargs)


def loopback_ranks(nranks: int, subnet: int) -> Ranks:
    """``nranks`` rank processes on 127.0.<subnet>.1, .2, ... (a subnet per group, so groups never clash)."""
    hosts = [LoopbackHost(i, subnet) for i in range(nranks)]
    return Ranks(hosts, {"addresses": [h.IP() for h in hosts], "nchannels": 2,
                         "cc": {"kind": "fixed", "rate_bps": 2e9}})


def command(collective: str, count: int, in_place: bool = False, **changes) -> dict:
    return {"collective": collective, "count": count, "dtype": "float32", "op": "sum", "root": 0, "nchannels": 2,
            "chunk_elems": 100, "sites": None, "in_place": in_place, "warmup": 1, "iters": 2, "check": True,
            "seed": count, **changes}


@pytest.fixture(scope="module")
def four_ranks():
    """Four rank processes serving every test of the module (starting them is the slow part)."""
    with loopback_ranks(4, subnet=1) as ranks:
        yield ranks


@pytest.mark.parametrize(("collective", "changes"), [
    ("all_reduce", {}),
    ("all_reduce", {"op": "max", "dtype": "int32"}),
    ("all_reduce", {"sites": [[0, 1], [2, 3]]}),
    ("all_gather", {}),
    ("reduce_scatter", {"op": "avg"}),
    ("broadcast", {"root": 2}),
    ("reduce", {"root": 1}),
    ("alltoall", {}),
])
def test_four_rank_processes_compute_every_collective_correctly(four_ranks, collective, changes):
    for count in (1001, 3):
        for in_place in (False, True):
            answers = four_ranks.run(command(collective, count, in_place, **changes))
            assert [a["wrong"] for a in answers] == [0, 0, 0, 0], (count, in_place, answers)
            assert all(a["time_us"] > 0 for a in answers)
            # loopback neither loses nor duplicates: a packet a receiver got twice was a retransmission (a
            # spurious one, after a stalled process on a busy host), so there are never more of them
            duplicates, retransmitted = (sum(a["counters"][name] for a in answers)
                                         for name in ("duplicates", "retransmitted_packets"))
            assert duplicates <= retransmitted


def test_long_flows_arrive_whole_and_verified_with_their_ends_on_one_clock(four_ranks):
    # an incast (0 and 1 into 3) beside a flow the other way (3 into 2), messages not dividing the flow
    pairs = [[0, 3], [1, 3], [3, 2]]
    answers = four_ranks.run({"pairs": pairs, "bytes": 100_003, "chunk_bytes": 4096, "seed": 7, "nchannels": 1})
    ends = [row for a in answers for row in a["ends"]]
    starts = {(r["src"], r["dst"]): r["start_ns"] for r in ends if "start_ns" in r}
    received = {(r["src"], r["dst"]): r for r in ends if "end_ns" in r}
    assert sorted(starts) == sorted(received) == sorted(map(tuple, pairs))
    for pair, row in received.items():
        assert (row["bytes"], row["wrong"]) == (100_003, 0)
        assert row["end_ns"] > starts[pair]  # both on the monotonic clock every process shares
    assert [r["first_cnp_ns"] for r in ends if "start_ns" in r] == [None] * 3  # loopback marks nothing
    assert sum(a["counters"]["packets_sent"] for a in answers) >= 3 * 100_003 // 4096


def test_a_flow_that_delivers_other_bytes_is_counted_wrong():
    sent = flow_input(1, 1000, seed=3)
    assert wrong_bytes(bytearray(sent.tobytes()), sent) == 0
    assert wrong_bytes(bytearray(flow_input(2, 1000, seed=3).tobytes()), sent) > 0  # another rank's data
    assert wrong_bytes(bytearray(sent[:990].tobytes()), sent) == 10  # ten bytes missing
    flipped = bytearray(sent.tobytes())
    flipped[500] ^= 0xFF
    assert wrong_bytes(flipped, sent) == 1


def test_a_rank_that_fails_is_reported_with_its_last_words():
    # both ranks fail; answers are read from all ranks at once, so whichever failed first is reported
    failed = r"rank (0 on h0|1 on h1) failed: .*no-such-op"
    with loopback_ranks(2, subnet=2) as ranks, pytest.raises(RankError, match=failed):
        ranks.run(command("all_reduce", 10, op="no-such-op"))


@pytest.mark.parametrize(("dilation", "wait_ms"), [(1.0, 5.0), (7.0, 35.0), (20.0, 100.0), (15000.0, 100.0)])
def test_a_dilated_rank_wakes_for_its_predicate_k_times_less_often_up_to_a_tenth_of_a_second(dilation, wait_ms):
    with Nic("127.0.3.1") as nic:
        links = RankLinks(nic, 0, ["127.0.3.1", "127.0.3.2"], Dcqcn.spec(line_rate_bps=1e9), TransportConfig(),
                          dilation=dilation)
        assert links.max_wait_ns == pytest.approx(wait_ms * 1e6)


def test_a_delay_report_message_reaches_every_channel_of_the_peer_in_emulated_time():
    with Nic("127.0.3.1") as nic:
        links = RankLinks(nic, 0, ["127.0.3.1", "127.0.3.2", "127.0.3.3"], Dcqcn.spec(line_rate_bps=1e9),
                          TransportConfig(), dilation=7.0)
        links.open_all(2)
        links.apply(json.loads(json.dumps({"delay_reports": {1: [1_000_000, 4_000_000]}})))  # as the channel sends it
        points = {key: receiver._delay_point for key, receiver in links.receivers.items()}
    to_peer = [(p.target_queue_ns, p.window_ns) for key, p in points.items() if key[0] == 1]
    assert to_peer == [(7_000_000, 14_000_000)] * 2
    assert points[(2, 0)] is None and points[(2, 1)] is None
