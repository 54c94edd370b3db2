"""Queue pairs between hosts of a running testbed: open one, send and receive messages, read its telemetry.

    with Testbed(TwoSites()) as tb:
        west, east = tb.hosts("west")[0], tb.hosts("east")[0]
        with connect(tb, west, east) as qp:        # DCQCN at west's line rate unless cc= says otherwise
            qp.send(np.arange(1 << 20, dtype=np.float32))
            total = qp.recv(dtype=np.float32).sum()
            qp.flush()
            pd.DataFrame(qp.series())              # rate, RTT, CNPs, deliveries over time

A queue pair carries messages one way, from a ``Sender`` on the source host's NIC to a ``Receiver`` on the
destination's (``testbed.roce.transport``).  Both ends live in this process and run in its event loop, which
turns only inside the blocking calls here (``recv``, ``flush``, ``exchange``): a call serves the NICs of
every queue pair it waits on, so several flows progress together, as on a real fabric.

On a dilated testbed (``tb.dilation`` k, ``testbed.model.dilation``) ``connect`` is the transport's boundary:
``cc`` and ``config`` are declared, the queue pair runs them k times slower (``controllers.dilated.Dilated``,
``TransportConfig.dilated``), and ``stats`` and ``series`` report rates and times declared again.
"""

from collections.abc import Sequence
from typing import Self

import numpy as np

from controllers.base import CongestionControl
from controllers.dcqcn import MLX5_FIRMWARE, Dcqcn
from controllers.dilated import Dilated
from testbed.roce.nic import Nic, run
from testbed.roce.receiver import Receiver
from testbed.roce.sender import Sender
from testbed.roce.transport import TransportConfig

DEFAULT_TIMEOUT_S = 60.0
RATES = ("rate_bps", "goodput_bps")  # what stats and series report in bits/s: wall x dilation = declared
DURATIONS = ("srtt_ns", "rto_ns", "rtt_ns", "one_way_delay_ns")  # ... and in ns: wall / dilation = declared


class QueuePair:
    """One-way queue pair ``src`` -> ``dst`` (host names): its two ends and the NICs that carry them."""

    def __init__(self, src: str, dst: str, sender: Sender, receiver: Receiver, dilation: float = 1.0) -> None:
        self.src, self.dst, self.sender, self.receiver, self.dilation = src, dst, sender, receiver, dilation
        self.nics = [sender.nic, receiver.nic]

    def __repr__(self) -> str:
        return f"QueuePair({self.src} QP {self.sender.qpn} -> {self.dst} QP {self.receiver.qpn})"

    def send(self, message) -> int:
        """Queue ``message`` (bytes or a numpy array); it leaves while a blocking call runs. Returns its id."""
        return self.sender.send(message)

    def recv(self, timeout_s: float = DEFAULT_TIMEOUT_S, dtype=None, shape=None):
        """The next message: a bytearray, or a numpy array of ``dtype`` (and ``shape``) viewing it."""
        if not run(self.nics, self.receiver.has_message, timeout_s):
            raise TimeoutError(f"{self!r}: no message within {timeout_s} s")
        message = self.receiver.recv(0)
        if dtype is None:
            return message
        array = np.frombuffer(message, dtype=dtype)
        return array if shape is None else array.reshape(shape)

    def flush(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Serve both ends until every message sent is acknowledged."""
        if not run(self.nics, self.sender.all_acknowledged, timeout_s):
            raise TimeoutError(f"{self!r}: messages still unacknowledged after {timeout_s} s")

    def stats(self) -> dict:
        """One flat row: the sender's counters, rate, RTT and goodput, and the receiver's counters (``rx_``)."""
        return {"src": self.src, "dst": self.dst, "qpn": self.sender.qpn, **self._declared(self.sender.stats()),
                **{f"rx_{name}": value for name, value in self.receiver.counters.items()}}

    def series(self) -> list[dict]:
        """Time series rows of both ends (ACK/NAK/CNP/timeout at the sender, deliveries and CNPs at the receiver)."""
        rows = [dict(self._declared(row), end="sender") for row in self.sender.series]
        rows += [dict(self._declared(row), end="receiver") for row in self.receiver.series]
        return sorted(rows, key=lambda row: row["t_ns"])

    def _declared(self, row: dict) -> dict:
        """``row`` with its rates and durations in declared units (``t_ns`` stays the run's clock)."""
        if self.dilation == 1:
            return row
        return {name: value * self.dilation if name in RATES and value is not None
                else value / self.dilation if name in DURATIONS and value is not None else value
                for name, value in row.items()}

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(tb, src, dst, cc: CongestionControl | None = None,
            config: TransportConfig = TransportConfig()) -> QueuePair:
    """Open a queue pair from host ``src`` to host ``dst`` of the running testbed ``tb`` (nodes or names).

    ``cc`` defaults to DCQCN with the mlx5 firmware defaults at the source host's line rate (``MLX5_FIRMWARE``).
    """
    src, dst = (tb.node(h) if isinstance(h, str) else h for h in (src, dst))
    if src.name == dst.name:
        raise ValueError(f"a queue pair needs two hosts, got {src.name} twice")
    if cc is None:
        cc = Dcqcn(MLX5_FIRMWARE.at_line_rate(line_rate_bps(src)))
    if tb.dilation != 1:
        cc, config = Dilated(cc, tb.dilation), config.dilated(tb.dilation)
    sending, receiving = host_nic(tb, src), host_nic(tb, dst)
    sqpn, rqpn = sending.new_qpn(), receiving.new_qpn()
    receiver = Receiver(receiving, rqpn, sqpn, config)
    try:
        sender = Sender(sending, receiving.address, sqpn, rqpn, cc, config)
    except BaseException:
        receiver.close()
        raise
    return QueuePair(src.name, dst.name, sender, receiver, tb.dilation)


def host_nic(tb, host) -> Nic:
    """The RoCE NIC of ``host`` in the running testbed ``tb``: UDP port 4791 at the host's address, its socket
    made in the host's namespace and owned by this process, opened on first use and closed with the fabric."""
    return tb.resource(f"nic:{host.name}", lambda: Nic(host.IP(), netns=f"/proc/{host.pid}/ns/net"))


def line_rate_bps(host) -> float:
    """The rate of the host's link into the fabric, bits/s (its NIC's line rate)."""
    return host.defaultIntf().shape.bw_mbps * 1e6


def exchange(transfers: Sequence[tuple[QueuePair, Sequence]], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[list]:
    """Send each queue pair's messages, all flows at once; return each receiver's next ``len(messages)`` messages.

    Returns when those are delivered and everything is acknowledged; raises TimeoutError naming the queue
    pairs still busy after ``timeout_s``.
    """
    targets = []
    for qp, messages in transfers:
        for message in messages:
            qp.send(message)
        targets.append((qp, qp.receiver.waiting + len(messages)))
    nics = list({id(nic): nic for qp, _ in transfers for nic in qp.nics}.values())

    def busy() -> list[QueuePair]:
        return [qp for qp, target in targets if qp.receiver.waiting < target or not qp.sender.all_acknowledged()]

    if not run(nics, lambda: not busy(), timeout_s):
        raise TimeoutError(f"still transferring after {timeout_s} s: {', '.join(map(repr, busy()))}")
    return [[qp.receiver.recv(0) for _ in messages] for qp, messages in transfers]
