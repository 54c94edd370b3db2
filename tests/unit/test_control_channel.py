"""The controller's channel to the ranks: a Unix socket, JSON lines, nothing on the fabric."""

import pytest

from testbed.collective.control_channel import ControlClient, ControlServer


def test_messages_reach_the_rank_that_they_are_pushed_to_in_order_and_the_socket_goes_away():
    with ControlServer() as server:
        clients = [ControlClient(server.path, rank) for rank in (1, 0)]
        server.accept(2, timeout_s=5)
        assert [c.poll() for c in clients] == [[], []]
        server.push(0, {"cc": {"1": {"kind": "dcqcn", "line_rate_bps": 1e7}}})
        server.push(0, {"pace": {"1": 5e6}})
        server.push(1, {"pace": {"0": None}})
        assert clients[1].poll() == [{"cc": {"1": {"kind": "dcqcn", "line_rate_bps": 1e7}}}, {"pace": {"1": 5e6}}]
        assert clients[0].poll() == [{"pace": {"0": None}}]
        path = server.path
    assert not __import__("os").path.exists(path)
    with pytest.raises(ConnectionError, match="closed the control channel"):
        clients[0].poll()


def test_a_rank_that_never_connects_is_named():
    with ControlServer() as server:
        ControlClient(server.path, 0)
        with pytest.raises(TimeoutError, match="1 of 2 ranks reached the control channel"):
            server.accept(2, timeout_s=0.2)
