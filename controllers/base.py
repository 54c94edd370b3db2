"""The congestion-control interface a sender's flow drives, one algorithm per module implementing it.

Units, the same everywhere: times are integer nanoseconds on the monotonic clock (``time.monotonic_ns()``,
the clock the data packets' send timestamps use, see ``testbed.roce.rocev2``), so intervals are exact and
comparable with packet timestamps; rates are bits per second (``rate_bps``); sizes are bytes.

How a flow drives it: report every event as it happens (``on_send`` for each packet handed to the
socket, ``on_ack``, ``on_cnp``, ``on_queue_delay`` for a receiver's report of the forward queueing delay (a CNP
carrying it, ``controllers.forward_delay``), ``on_loss`` for a NAK or a detected gap, ``on_timeout`` for a
retransmission timeout), call ``on_timer`` whenever the clock passes ``next_timer_ns`` (calling it late is
fine: it then applies every expiry it missed, in order), then pace at ``rate_bps`` and,
if ``cwnd_bytes`` is not None, keep at most that many bytes unacknowledged.  Events must come in
non-decreasing time order.  Algorithms override only the events they react to.

Each algorithm has a ``kind`` and is built from a spec, a JSON-able dict naming it (``{"kind": "dcqcn",
"line_rate_bps": 1e8}``): what a fabric controller sends a rank process, which ``controllers.registry``
turns back into the algorithm.  ``spec`` writes one, ``from_spec`` reads it; the other keys are the
algorithm's own.
"""

import abc
from typing import ClassVar


class CongestionControl(abc.ABC):
    """Sets the sending rate (and optionally a window) of one flow from the signals it sees."""

    kind: ClassVar[str]  # the name specs give it; an algorithm without one is not in the registry

    @classmethod
    def spec(cls, **fields) -> dict:
        """A spec of this algorithm with ``fields`` (JSON-able), for ``from_spec`` in another process."""
        return {"kind": cls.kind, **fields}

    @classmethod
    def from_spec(cls, spec: dict) -> "CongestionControl":
        """The algorithm ``spec`` describes (its ``kind`` is this class's)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a spec")

    @property
    @abc.abstractmethod
    def rate_bps(self) -> float:
        """The rate to pace the flow at now, bits/s."""

    @property
    def cwnd_bytes(self) -> int | None:
        """Cap on unacknowledged bytes, or None for a purely rate-based algorithm."""
        return None

    @property
    def next_timer_ns(self) -> int | None:
        """When ``on_timer`` is next due, or None if the algorithm has no timer armed."""
        return None

    def on_send(self, now_ns: int, nbytes: int) -> None:
        """``nbytes`` (the UDP payload) were handed to the socket."""

    def on_ack(self, now_ns: int, acked_bytes: int, rtt_ns: int | None) -> None:
        """An ACK newly acknowledged ``acked_bytes``; ``rtt_ns`` is a round-trip sample if one was taken."""

    def on_cnp(self, now_ns: int) -> None:
        """A congestion notification packet arrived for this flow."""

    def on_queue_delay(self, now_ns: int, queue_delay_ns: int) -> None:
        """The receiver reported that the flow's packets stand ``queue_delay_ns`` in queues on the forward path
        (above its target, ``controllers.forward_delay``)."""

    def on_loss(self, now_ns: int) -> None:
        """A loss was detected without a timeout (a NAK)."""

    def on_timeout(self, now_ns: int) -> None:
        """The retransmission timer expired."""

    def on_timer(self, now_ns: int) -> None:
        """The clock reached ``next_timer_ns`` (or later)."""
