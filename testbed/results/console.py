"""What a run says on the terminal: one console, plain lines that are never folded, compact tables.

Lines that may be copied (paths, nccl-tests rows) go out as they are: no markup, no highlighting, no wrapping.
Tables fit 80 columns, because CI logs are not terminals.
"""

from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

console = Console()


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


def compact_table(title: str, columns: tuple[str, ...]) -> Table:
    """A compact table that fits 80 columns (CI logs are not terminals)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    return table
