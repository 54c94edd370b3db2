"""A rank's side of a point-to-point workload: long flows from chosen senders to chosen receivers, the
experiment congestion-control papers run (two senders of one site into one receiver of another: an incast
across the DCI), on the same queue pairs, congestion control and telemetry as the collectives.

The command (``testbed.experiments.flows`` sends it) lists the job's flows as ``pairs`` of ``[src rank,
dst rank]`` and the ``bytes`` each carries.  Every flow is one queue pair (channel 0): its sender hands the
whole flow to the queue pair at once, in messages of ``chunk_bytes`` (the pacer and the window, not the
application, set the pace, as for a long RDMA write), and its receiver takes them as they are delivered.

Each rank answers with one row per flow it took part in: the sender's start and the receiver's last
delivery on ``time.monotonic_ns()`` (one clock for every process of the run, see
``testbed.collective.flow_samples``), so the controller gets each flow's completion time from two processes
without a clock offset; and the receiver's count of wrong bytes against the sender's input, which every rank
can make (``rank_input``): delivered bytes are verified, not assumed.
"""

import time

import numpy as np

from testbed.collective.rank_links import RankLinks
from testbed.collective.schedules.checking import rank_input

FLOW_DTYPE = np.dtype(np.uint8)  # a flow is bytes; the inputs' values (1..7) still catch misplaced data


def flow_input(src: int, nbytes: int, seed: int) -> np.ndarray:
    """Flow data of rank ``src``: its collective input (``rank_input``), as bytes."""
    return rank_input(src, nbytes, FLOW_DTYPE, seed)


def run_flows(command: dict, links: RankLinks) -> list[dict]:
    """Send this rank's flows and receive the ones addressed to it (``command["pairs"]``: [src, dst] ranks,
    each flow ``command["bytes"]`` long); one row per flow this rank is an end of.

    Rows: ``src``, ``dst``, ``bytes``, and the sender's ``start_ns`` and ``first_cnp_ns`` (when its first CNP
    arrived, None if none did) or the receiver's ``end_ns`` (when its last message was taken) and ``wrong``
    (bytes that differ from the sender's input)."""
    rank, nbytes, chunk, seed = links.rank, command["bytes"], command["chunk_bytes"], command["seed"]
    pairs = [tuple(pair) for pair in command["pairs"]]
    rows = []
    for src, dst in pairs:
        if src == rank:
            data = flow_input(rank, nbytes, seed)
            sender = links.sender(dst, 0)
            rows.append({"src": src, "dst": dst, "bytes": nbytes, "start_ns": time.monotonic_ns()})
            for offset in range(0, nbytes, chunk):
                sender.send(data[offset:offset + chunk])
    incoming = {src: bytearray() for src, dst in pairs if dst == rank}
    ended: dict[int, int] = {}

    def arrived() -> bool:
        return any(links.receiver(src, 0).has_message() for src in incoming if src not in ended)

    while len(ended) < len(incoming):
        links.serve_until(arrived, "no data arrived for")
        for src, received in incoming.items():
            receiver = links.receiver(src, 0)
            while src not in ended and receiver.has_message():
                received += receiver.recv(0)
                if len(received) >= nbytes:
                    ended[src] = time.monotonic_ns()
    for src, received in incoming.items():
        rows.append({"src": src, "dst": rank, "bytes": len(received), "end_ns": ended[src],
                     "wrong": wrong_bytes(received, flow_input(src, nbytes, seed))})
    links.serve_until(links.all_acknowledged, "flows unacknowledged after")
    for row in rows:
        if "start_ns" in row:
            events = links.sender(row["dst"], 0).series
            row["first_cnp_ns"] = next((e["t_ns"] for e in events if e["event"] == "cnp"), None)
    return rows


def wrong_bytes(received: bytearray, sent: np.ndarray) -> int:
    """Bytes of ``received`` that differ from ``sent``, counting missing or extra bytes as wrong."""
    got = np.frombuffer(bytes(received), dtype=FLOW_DTYPE)
    common = min(len(got), len(sent))
    return int(np.count_nonzero(got[:common] != sent[:common])) + abs(len(got) - len(sent))
