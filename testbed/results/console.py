"""What a run says on the terminal: one console, plain lines that are never folded, compact tables, stages.

Lines that may be copied (paths, nccl-tests rows) go out as they are: no markup, no highlighting, no wrapping.
Tables fit 80 columns, because CI logs are not terminals.  A stage of work (``stage``) shows as a spinner on
a terminal and as plain lines in a log or pipe: when it starts, at most every ``PROGRESS_EVERY_S`` while it
reports progress, and when it ends, with how long it took.
"""

import contextlib
import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

console = Console(emoji=False)  # mode names like adaptive:loop are text, not rich's :loop: emoji code
PROGRESS_EVERY_S = 10.0


def say(line: str) -> None:
    """``line`` as it is: no markup, no highlighting, never folded (nccl-tests rows, paths to copy)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def recording(lines: list[str]):
    """A ``print_line`` that says each line and keeps it in ``lines`` (for the report's nccl-tests text)."""
    def say_and_keep(line: str) -> None:
        lines.append(line)
        say(line)
    return say_and_keep


def say_path(label: str, path: Path) -> None:
    """``label: path`` on one line whatever the width, so it can be copied."""
    say(f"{label}: {path}")


@contextlib.contextmanager
def stage(text: str):
    """A stage of work; yields ``update(progress)`` for what it has got to (e.g. "7 of 16 nodes")."""
    started = time.monotonic()
    if console.is_terminal:
        with console.status(text) as status:
            yield lambda progress: status.update(f"{text}: {progress}")
        return
    said = [started]
    say(f"{text} ...")

    def update(progress: str) -> None:
        if time.monotonic() - said[0] >= PROGRESS_EVERY_S:
            said[0] = time.monotonic()
            say(f"{text}: {progress} ({time.monotonic() - started:.0f} s)")

    yield update
    say(f"{text}: done in {time.monotonic() - started:.1f} s")


def compact_table(title: str, columns: tuple[str, ...]) -> Table:
    """A compact table that fits 80 columns (CI logs are not terminals)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    return table
