"""Mininet's CLI with the testbed's own verbs beside Mininet's (``testbed run --cli``).

    mininet> westh1 ping -c 3 easth1            (Mininet's verbs: nodes, links, dump, iperf, pingall, ...)
    mininet> dci                                each DCI direction now: rate, delay, queue, marks, drops
    mininet> set west-east loss_pct=1 delay_ms=20   a DCI's (or any link's: westb-eastb) impairments, live
    mininet> capture west-east                  start a pcap of it in the results directory; again: stop

``set`` goes through the same code as the Python API (``ShapedLink.set``: declared units, checked by the
model, applied at the run's dilation); ``capture`` through the same ``Capture`` as ``--capture``.
Mistakes get one line and the CLI goes on.
"""

from pathlib import Path

from mininet.cli import CLI
from rich.table import Table

from testbed.model.fabric import TopologyError
from testbed.net.network import Testbed
from testbed.observe.capture import Capture
from testbed.results.console import console


class FabricCLI(CLI):
    """``CLI(tb.net)`` that also knows ``dci``, ``set`` and ``capture`` (see the module docstring)."""

    prompt = "mininet> "

    def __init__(self, tb: Testbed, out: Path):
        self.tb, self.out = tb, out
        self.captures: dict[str, Capture] = {}
        try:
            super().__init__(tb.net)  # runs the command loop until exit or Ctrl-D
        finally:
            for name in list(self.captures):
                self._stop_capture(name)

    def do_dci(self, _line: str) -> None:
        """Each DCI direction now: declared rate and delay, queue (bytes and its delay at the rate), CE marks,
        drops, packets sent (counters since the fabric was built)."""
        table = Table("dci", "from", "to", "Gbit/s", "delay ms", "queue KB", "queue ms", "CE marks", "drops",
                      "packets")
        for name, link in self.tb.dci_links():
            for row, intf in zip(link.stats(), (link.intf1, link.intf2)):
                rate = intf.shape.bw_mbps
                queue_ms = row["backlog_bytes"] * 8 / (rate * 1e3)
                table.add_row(name, row["from"], row["to"], f"{rate / 1e3:g}", f"{intf.shape.delay_ms:g}",
                              f"{row['backlog_bytes'] / 1e3:.1f}", f"{queue_ms:.3f}", str(row["ecn_marks"]),
                              str(row["drops"]), str(row["sent_packets"]))
        console.print(table)

    def do_set(self, line: str) -> None:
        """set LINK FIELD=VALUE ...: change a link live, both directions, in declared units (LINK: a DCI's
        name, e.g. west-east, or two nodes, e.g. westb-eastb); 0 resets an impairment."""
        words = line.split()
        if len(words) < 2 or not all("=" in word for word in words[1:]):
            return self._say("usage: set LINK FIELD=VALUE ... (e.g. set west-east loss_pct=1 delay_ms=20)")
        try:
            link = self._link(words[0])
            changes = {key: _number(value) for key, value in (word.split("=", 1) for word in words[1:])}
            config = link.set(**changes)
        except (KeyError, ValueError, TypeError, TopologyError) as error:
            return self._say(f"set: {error.args[0] if error.args else error}")
        self._say(f"{words[0]}: " + ", ".join(f"{key}={getattr(config, key):g}" for key in changes))

    def do_capture(self, line: str) -> None:
        """capture LINK: start a pcap of LINK (as for set) in the results directory; capture LINK again stops
        it (all stop when the CLI ends)."""
        name = line.strip()
        if not name:
            return self._say("usage: capture LINK (again to stop); capturing: "
                             + (", ".join(self.captures) or "nothing"))
        if name in self.captures:
            return self._stop_capture(name)
        try:
            link = self._link(name)
        except KeyError as error:
            return self._say(f"capture: {error.args[0]}")
        self.captures[name] = Capture(self.tb, self.out / "capture" / name, [link]).start()
        self._say(f"capturing {name} into {self.out / 'capture' / name} (capture {name} to stop)")

    def _stop_capture(self, name: str) -> None:
        capture = self.captures.pop(name)
        capture.stop()
        self._say(f"{name}: stopped, " + ", ".join(str(path) for path in capture.files))

    def _link(self, name: str):
        """A DCI by its name (west-east), or the link between two nodes (westb-eastb)."""
        dcis = dict(self.tb.dci_links())
        if name in dcis:
            return dcis[name]
        ends = name.split("-")
        if len(ends) != 2 or any(end not in self.tb.net for end in ends):
            raise KeyError(f"no link {name!r}: a DCI ({', '.join(dcis)}) or two nodes joined by a link (westb-eastb)")
        return self.tb.link(*ends)

    @staticmethod
    def _say(text: str) -> None:
        print(text, flush=True)


def _number(text: str) -> int | float:
    """A field's value as typed: whole numbers as int (byte counts are ints in the model)."""
    value = float(text)
    return int(value) if value.is_integer() else value
