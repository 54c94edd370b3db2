"""``testbed clean``: remove what crashed or killed runs left behind (``testbed.net.cleanup``)."""

import argparse

from testbed.commands.options import require_root
from testbed.net import cleanup


def add_parser(commands) -> None:
    parser = commands.add_parser("clean", help="remove what crashed or killed runs left behind")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, argv: list[str]) -> int:
    require_root()
    results = cleanup.clean()
    for swept in results:
        print(f"{swept.record}: {swept.describe()}")
    if not results:
        print("nothing to clean")
    return 0
