"""What a run shows while it goes on: progress over the measurements, with the time left, and the DCI queues.

On a terminal a progress bar and a compact DCI table refresh in place.  In CI logs and pipes a redrawn
table would only add noise, so there each measurement ends with one plain line instead: what it was, how
many of how many are done, the time so far and an estimate of the time left (the mean time per measurement
so far, times the measurements left).
"""

import time

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from testbed.results.console import compact_table, say


class LiveView:
    """Context manager: ``advance(label)`` after each measurement; the DCI table comes from ``telemetry.latest()``."""

    def __init__(self, console, telemetry, total: int, description: str) -> None:
        self.console, self.telemetry, self.total, self.description = console, telemetry, total, description
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console)
        self.task = self.progress.add_task(description, total=total)
        self.live = Live(get_renderable=self._render, console=console, refresh_per_second=4, transient=True)
        self.shown = console.is_terminal
        self.done, self.started = 0, time.monotonic()

    def __enter__(self) -> "LiveView":
        self.started = time.monotonic()
        if self.shown:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.shown:
            self.live.stop()

    def advance(self, label: str = "") -> None:
        self.done += 1
        self.progress.update(self.task, advance=1)
        if not self.shown:
            elapsed = time.monotonic() - self.started
            left = elapsed / self.done * max(0, self.total - self.done)
            say(f"[{self.done}/{self.total}] {self.description}{' ' + label if label else ''}: "
                f"{_duration(elapsed)} so far, ~{_duration(left)} left")

    def _render(self):
        table = compact_table("DCI egress, last sample", ("egress", "util", "queue ms", "marks/s", "drops/s"))
        for row in self.telemetry.latest() if self.telemetry else []:
            table.add_row(row["egress"], f"{row['util_pct']:.0f} %", f"{row['queue_ms']:.4g}",
                          f"{row['marks_per_s']:.4g}", f"{row['drops_per_s']:.4g}")
        return Group(self.progress, table)


def measurement_label(call: dict) -> str:
    """A measurement as the progress line names it: size and in or out of place."""
    return f"{call['size_bytes']} B {'in place' if call['in_place'] else 'out of place'}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"
