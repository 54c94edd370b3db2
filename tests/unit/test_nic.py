"""The software RoCE NIC: one UDP port for every queue pair, per-packet TOS, QPN demultiplexing, namespaces."""

import os
import socket
import time
import uuid

import pytest
from pyroute2 import IPRoute, netns

from controllers.fixed_rate import FixedRate
from testbed.roce.nic import Nic, entered, run
from testbed.roce.receiver import Receiver
from testbed.roce.rocev2 import CE, ECT0, ECT1, ROCEV2_UDP_PORT, Kind, build_data, parse
from testbed.roce.sender import Sender
from testbed.roce.transport import TransportConfig

CONFIG = TransportConfig(mtu=1024)


def test_queue_pairs_share_port_4791_and_are_told_apart_by_their_qp():
    with Nic("127.0.0.2") as a, Nic("127.0.0.3") as b:
        assert a.address == ("127.0.0.2", ROCEV2_UDP_PORT) and b.address == ("127.0.0.3", ROCEV2_UDP_PORT)
        a_to_b = [Sender(a, b.address, a.new_qpn(), 0, FixedRate(100e6), CONFIG) for _ in range(2)]
        b_from_a = [Receiver(b, b.new_qpn(), sender.qpn, CONFIG) for sender in a_to_b]
        for sender, receiver in zip(a_to_b, b_from_a):
            sender.peer_qpn = receiver.qpn
        b_to_a = Sender(b, a.address, b.new_qpn(), 0, FixedRate(100e6), CONFIG)
        a_from_b = Receiver(a, a.new_qpn(), b_to_a.qpn, CONFIG)
        b_to_a.peer_qpn = a_from_b.qpn
        messages = {a_to_b[0]: b"first" * 1000, a_to_b[1]: b"second" * 1000, b_to_a: b"back" * 1000}
        for sender, message in messages.items():
            sender.send(message)
        assert run([a, b], lambda: all(s.all_acknowledged() for s in messages), 5)
        assert [r.recv(0) for r in (*b_from_a, a_from_b)] == list(messages.values())
        assert len({s.qpn for s in (*a_to_b, a_from_b)}) == 3 and 0 not in (a.new_qpn(), b.new_qpn())
        assert a.counters == b.counters == {"bad_icrc": 0, "malformed": 0, "unknown_qpn": 0}


def test_packets_for_unknown_queue_pairs_or_not_roce_at_all_are_counted_and_dropped():
    with Nic("127.0.0.1", 0) as nic, Nic("127.0.0.1", 0) as other, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
        sender = Sender(other, nic.address, other.new_qpn(), 77, FixedRate(100e6), CONFIG)  # nobody has QP 77
        sender.send(b"x")
        stray.sendto(b"tiny", nic.address)  # shorter than a BTH
        stray.sendto(bytes(64), nic.address)  # long enough, but its ICRC is wrong
        assert not run([nic, other], lambda: False, 0.05)
        assert nic.counters == {"bad_icrc": 1, "malformed": 1, "unknown_qpn": 1}


def test_a_stall_while_packets_arrive_is_measured_as_their_wait_in_the_socket():
    """Datagrams sent while the loop is busy elsewhere wait in the socket: the first one read after the 80 ms
    stall is recorded as having waited at least that long, which no timer's lateness would show."""
    with Nic("127.0.0.1", 0) as nic, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
        assert not run([nic], lambda: False, 0.01)
        assert nic.dwell.take()["reads"] == 0
        for _ in range(3):
            stray.sendto(b"tiny", nic.address)
        time.sleep(0.08)
        assert not run([nic], lambda: False, 0.01)
        dwell = nic.dwell.take()
    assert dwell["reads"] == 1 and 80_000 <= dwell["dwell_max_us"] < 2_000_000
    assert nic.counters["malformed"] == 3


@pytest.fixture
def plain_peer():
    """An ordinary UDP socket on loopback that reads each datagram's TOS byte."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        sock.settimeout(2)
        yield sock


def received(sock: socket.socket, nic: Nic) -> tuple[Kind, int]:
    """The kind of the next packet ``nic`` sent to ``sock``, and its ECN codepoint."""
    data, ancillary, _, _ = sock.recvmsg(65535, socket.CMSG_SPACE(4))
    tos = next(d[0] for level, kind, d in ancillary if (level, kind) == (socket.IPPROTO_IP, socket.IP_TOS))
    return parse(data, nic.flows(sock.getsockname())[1]).kind, tos & 0b11


def test_data_leaves_ect0(plain_peer):
    with Nic("127.0.0.1", 0) as nic:
        sender = Sender(nic, plain_peer.getsockname(), nic.new_qpn(), 9, FixedRate(100e6), CONFIG)
        sender.send(b"payload")
        nic.run_until(lambda: sender.counters["packets_sent"] == 1, 1)
        assert received(plain_peer, nic) == (Kind.DATA, ECT0)


def test_ce_marked_data_is_answered_by_an_ect0_ack_and_an_ect1_cnp_from_the_same_socket(plain_peer):
    with Nic("127.0.0.1", 0) as nic:
        receiver = Receiver(nic, nic.new_qpn(), 9, CONFIG)
        plain_peer.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, CE)
        plain_peer.sendto(build_data(nic.flows(plain_peer.getsockname())[0], dqpn=receiver.qpn, psn=0, msg_id=0,
                                     offset=0, msg_len=1, payload=b"x", timestamp_ns=1, ackreq=True, mtu=1024),
                          nic.address)
        assert nic.run_until(lambda: receiver.counters["cnps_sent"] and receiver.counters["acks_sent"], 1)
        assert {received(plain_peer, nic), received(plain_peer, nic)} == {(Kind.CNP, ECT1), (Kind.ACK, ECT0)}
        assert receiver.recv(0) == b"x"


@pytest.fixture
def namespace():
    """A fresh network namespace with its loopback up; its path."""
    name = f"testbed-unit-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield f"/run/netns/{name}"
    finally:
        netns.remove(name)


def test_a_nic_made_in_another_namespace_lives_there_and_the_thread_comes_back(namespace):
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with Nic("127.0.0.1", 0) as outside, Nic("127.0.0.1", outside.address[1], netns=namespace) as inside, \
            Nic("127.0.0.1", 0, netns=namespace) as neighbour:  # the same address and port: another stack
        assert os.stat("/proc/thread-self/ns/net").st_ino == home
        sender = Sender(neighbour, inside.address, neighbour.new_qpn(), 0, FixedRate(100e6), CONFIG)
        receiver = Receiver(inside, inside.new_qpn(), sender.qpn, CONFIG)
        sender.peer_qpn = receiver.qpn
        sender.send(b"inside the namespace")
        assert run([inside, neighbour], receiver.has_message, 2) and receiver.recv(0) == b"inside the namespace"
        assert outside.counters == {"bad_icrc": 0, "malformed": 0, "unknown_qpn": 0}


def test_datagrams_dropped_at_a_full_receive_buffer_are_counted_in_the_nics_own_namespace(namespace):
    with Nic("127.0.0.1", 0, netns=namespace) as nic, Nic("127.0.0.1", 0) as home_nic:
        nic._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's minimum: a few datagrams
        with entered(namespace):
            blaster = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with blaster:
            for _ in range(200):  # nobody reads: the buffer fills and the rest is dropped
                blaster.sendto(bytes(1024), nic.address)
        drops = nic.socket_drops()
        assert 0 < drops < 200  # some fitted, the rest were counted
        assert home_nic.socket_drops() == 0  # another namespace's table, another socket
