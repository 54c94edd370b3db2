"""What a run shows while it goes on: a progress bar over the sweep and a compact, refreshing DCI table.

Only on a terminal: in CI logs and pipes the nccl-tests lines are the whole story, and a redrawn table
would only add noise, so there ``LiveView`` does nothing but count.
"""

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from testbed.results.console import compact_table


class LiveView:
    """Context manager: ``advance()`` after each measurement; the DCI table comes from ``telemetry.latest()``."""

    def __init__(self, console, telemetry, total: int, description: str) -> None:
        self.console, self.telemetry = console, telemetry
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task(description, total=total)
        self.live = Live(get_renderable=self._render, console=console, refresh_per_second=4, transient=True)
        self.shown = console.is_terminal

    def __enter__(self) -> "LiveView":
        if self.shown:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.shown:
            self.live.stop()

    def advance(self) -> None:
        self.progress.update(self.task, advance=1)

    def _render(self):
        table = compact_table("DCI egress, last sample", ("egress", "util", "queue ms", "marks/s", "drops/s"))
        for row in self.telemetry.latest() if self.telemetry else []:
            table.add_row(row["egress"], f"{row['util_pct']:.0f} %", f"{row['queue_ms']:.2f}",
                          f"{row['marks_per_s']:.0f}", f"{row['drops_per_s']:.0f}")
        return Group(self.progress, table)
