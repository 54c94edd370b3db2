"""Queue and interface counters of one network namespace, read fast enough to sample every 10 ms.

pyroute2 configures every qdisc and is what ``ShapedIntf.stats`` reads with.  For the telemetry sampler it
is too slow: it decodes every attribute of every message into objects, ~45 ms per qdisc dump of a border
router under TCG emulation, so a 10 ms sampler could not keep up.  This module sends the same two rtnetlink
dumps (RTM_GETQDISC, RTM_GETLINK) on a netlink socket pyroute2 opened in the namespace and decodes only the
few fixed structs it needs (linux/rtnetlink.h, linux/gen_stats.h, linux/pkt_sched.h, linux/if_link.h):

    qdisc  tcmsg ifindex and handle; TCA_STATS2 -> TCA_STATS_BASIC (bytes, packets) and TCA_STATS_QUEUE
           (qlen, backlog, drops); TCA_XSTATS of RED (early, pdrop, other, marked)
    link   ifinfomsg index; IFLA_STATS64 (rx/tx packets and bytes)

``read_queues`` returns, per interface carrying the ``testbed.net.tc.qdisc`` tree, the same numbers (and names) as
``qdisc.read_stats``; the kernel tests check the two agree.
"""

import os
import socket
import struct
from itertools import count

from pyroute2 import IPRoute

from testbed.net.tc.qdisc import NETEM, RED

NLMSG = struct.Struct("=LHHLL")  # length, type, flags, sequence, port id
TCMSG = struct.Struct("=BxxxiLLL")  # family, ifindex, handle, parent, info
IFINFOMSG = struct.Struct("=BxHiLL")  # family, type, index, flags, change
RTATTR = struct.Struct("=HH")  # length, type
STATS_BASIC = struct.Struct("=QL")  # gnet_stats_basic: bytes, packets
STATS_QUEUE = struct.Struct("=LLLLL")  # gnet_stats_queue: qlen, backlog, drops, requeues, overlimits
RED_XSTATS = struct.Struct("=LLLL")  # tc_red_xstats: early, pdrop, other, marked
LINK_STATS64 = struct.Struct("=QQQQ")  # rtnl_link_stats64: rx_packets, tx_packets, rx_bytes, tx_bytes

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_GETLINK, RTM_NEWQDISC, RTM_GETQDISC = 16, 18, 36, 38
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
TCA_KIND, TCA_XSTATS, TCA_STATS2 = 1, 4, 7
TCA_STATS_BASIC, TCA_STATS_QUEUE = 1, 3
IFLA_STATS64 = 23
NLA_TYPE_MASK = 0x3FFF  # without the nested / byte-order flags
RECV_BYTES = 1 << 16


def _handle(text: str) -> int:
    major, _, minor = text.partition(":")
    return int(major, 16) << 16 | int(minor or "0", 16)


NETEM_HANDLE, RED_HANDLE = _handle(NETEM), _handle(RED)


class NamespaceCounters:
    """Two dumps per call on a private copy of ``ipr``'s socket (a pyroute2 IPRoute opened in the namespace):
    the IPRoute itself must not be used meanwhile from another thread, so a sampling thread takes ``of(node)``,
    counters on a socket of their own."""

    def __init__(self, ipr, owns_ipr: bool = False) -> None:
        self.sock = socket.socket(fileno=os.dup(ipr.fileno()))
        self.sock.setblocking(True)
        self._seq = count(1)
        self._ipr = ipr if owns_ipr else None

    @classmethod
    def of(cls, node) -> "NamespaceCounters":
        """Counters of ``node``'s namespace on their own netlink socket, never interleaving with the node's
        IPRoute that configures its qdiscs meanwhile.  Open it in the main thread (pyroute2 forks to enter
        the namespace)."""
        return cls(IPRoute(netns=f"/proc/{node.pid}/ns/net"), owns_ipr=True)

    def close(self) -> None:
        self.sock.close()
        if self._ipr is not None:
            self._ipr.close()

    def read_queues(self) -> dict[int, dict]:
        """Per ifindex with the netem -> htb -> red tree: sent, backlog, drops and ECN marks."""
        trees: dict[int, dict] = {}
        for body in self._dump(RTM_GETQDISC, TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), RTM_NEWQDISC):
            _, ifindex, handle, _, _ = TCMSG.unpack_from(body)
            trees.setdefault(ifindex, {})[handle] = _attributes(body, TCMSG.size, nested=TCA_STATS2)
        return {index: _tree(tree) for index, tree in trees.items() if RED_HANDLE in tree and NETEM_HANDLE in tree}

    def read_links(self) -> dict[int, dict]:
        """Per ifindex: the interface's own tx/rx byte and packet counters."""
        links = {}
        for body in self._dump(RTM_GETLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), RTM_NEWLINK):
            index = IFINFOMSG.unpack_from(body)[2]
            stats = _attributes(body, IFINFOMSG.size).get(IFLA_STATS64)
            if stats is not None:
                rx_packets, tx_packets, rx_bytes, tx_bytes = LINK_STATS64.unpack_from(stats)
                links[index] = {"tx_bytes": tx_bytes, "tx_packets": tx_packets, "rx_bytes": rx_bytes,
                                "rx_packets": rx_packets}
        return links

    def _dump(self, kind: int, request: bytes, reply: int):
        """The bodies of every ``reply`` message of a dump request."""
        seq = next(self._seq)
        self.sock.send(NLMSG.pack(NLMSG.size + len(request), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + request)
        while True:
            data = self.sock.recv(RECV_BYTES)
            offset = 0
            while offset + NLMSG.size <= len(data):
                length, msg_type, _, msg_seq, _ = NLMSG.unpack_from(data, offset)
                if msg_seq == seq:
                    if msg_type == NLMSG_DONE:
                        return
                    if msg_type == NLMSG_ERROR:
                        raise OSError(-struct.unpack_from("=i", data, offset + NLMSG.size)[0], "netlink dump failed")
                    if msg_type == reply:
                        yield data[offset + NLMSG.size:offset + length]
                offset += _align(length)


def _tree(by_handle: dict[int, dict]) -> dict:
    red, netem = by_handle[RED_HANDLE], by_handle[NETEM_HANDLE]
    sent_bytes, sent_packets = STATS_BASIC.unpack_from(red[TCA_STATS2][TCA_STATS_BASIC])
    qlen, backlog, _, _, _ = STATS_QUEUE.unpack_from(red[TCA_STATS2][TCA_STATS_QUEUE])
    tree_drops = STATS_QUEUE.unpack_from(netem[TCA_STATS2][TCA_STATS_QUEUE])[2]
    marked = RED_XSTATS.unpack_from(red[TCA_XSTATS])[3] if TCA_XSTATS in red else 0
    return {"sent_bytes": sent_bytes, "sent_packets": sent_packets, "backlog_bytes": backlog,
            "backlog_packets": qlen, "drops": tree_drops, "ecn_marks": marked}


def _attributes(body: bytes, offset: int, nested: int | None = None) -> dict:
    """Attributes from ``offset`` on, by type; those of type ``nested`` decoded one level down."""
    found = {}
    while offset + RTATTR.size <= len(body):
        length, kind = RTATTR.unpack_from(body, offset)
        if length < RTATTR.size:
            break
        value = body[offset + RTATTR.size:offset + length]
        kind &= NLA_TYPE_MASK
        found[kind] = _attributes(value, 0) if kind == nested else value
        offset += _align(length)
    return found


def _align(length: int) -> int:
    return (length + 3) & ~3
