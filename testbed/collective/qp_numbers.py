"""The queue pairs of a job: which QP number each rank sends and receives on, per peer and channel.

Every rank derives them from the job alone (the ranks' addresses and the channels), so no rank needs to ask
another for its QP numbers, and a capture's analysis can tie each ACK and CNP to its data flow.
"""


def sender_qpn(peer: int, channel: int, nranks: int) -> int:
    """The QP a rank sends to ``peer`` on ``channel`` from (even numbers from 2: QP0/1 are IB's)."""
    return 2 + 2 * (channel * nranks + peer)


def receiver_qpn(peer: int, channel: int, nranks: int) -> int:
    """The QP a rank receives from ``peer`` on ``channel`` with (odd numbers)."""
    return 3 + 2 * (channel * nranks + peer)


def queue_pairs(addresses: list[str], nchannels: int) -> list[dict]:
    """Every data flow of a job: sender and receiver address, the sender's QP and the receiver's (the data
    packets' destination QP); what a capture's analysis needs to tie ACKs and CNPs to their flow."""
    n = len(addresses)
    return [{"src": addresses[a], "dst": addresses[b], "sqpn": sender_qpn(b, c, n), "dqpn": receiver_qpn(a, c, n)}
            for a in range(n) for b in range(n) for c in range(nchannels) if a != b]
