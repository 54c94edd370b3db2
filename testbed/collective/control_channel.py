"""The fabric controller's channel to the ranks: JSON lines over a Unix socket of the root namespace.

A Unix socket is a file, not a network interface: every rank reaches it whatever network namespace its
host is, and no control message ever crosses the emulated fabric or shows up in its queues and captures,
as a real cluster's management network keeps control traffic off the data plane.

The controller (``ControlServer``) listens; each rank (``ControlClient``) connects once at start and says
which rank it is.  Messages go controller -> rank (congestion-control parameters per peer, pacing caps);
each one a JSON object on its own line.
"""

import json
import os
import socket
import tempfile
import time
from pathlib import Path


class ControlServer:
    """The listening end, in the controller's process: one connection per rank."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="testbed-control-"))
        self.path = str(self._dir / "control.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen()
        self._ranks: dict[int, socket.socket] = {}

    def accept(self, nranks: int, timeout_s: float = 30.0) -> None:
        """Wait until ``nranks`` ranks have connected and introduced themselves."""
        deadline = time.monotonic() + timeout_s
        while len(self._ranks) < nranks:
            self._sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                raise TimeoutError(f"{len(self._ranks)} of {nranks} ranks reached the control channel "
                                   f"in {timeout_s} s") from None
            conn.settimeout(timeout_s)
            hello = json.loads(conn.makefile().readline())
            self._ranks[int(hello["rank"])] = conn

    def push(self, rank: int, message: dict) -> None:
        """Send ``message`` to ``rank``: in its receive buffer when this returns."""
        self._ranks[rank].sendall((json.dumps(message) + "\n").encode())

    def close(self) -> None:
        for conn in self._ranks.values():
            conn.close()
        self._sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._dir.rmdir()

    def __enter__(self) -> "ControlServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ControlClient:
    """A rank's end: connects, introduces itself, then reads whatever the controller pushed."""

    def __init__(self, path: str, rank: int) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._sock.sendall((json.dumps({"rank": rank}) + "\n").encode())
        self._sock.setblocking(False)
        self._pending = b""

    def fileno(self) -> int:
        return self._sock.fileno()

    def poll(self) -> list[dict]:
        """Every complete message received so far (none if nothing arrived); never blocks."""
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                raise ConnectionError("the controller closed the control channel")
            self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def close(self) -> None:
        self._sock.close()
