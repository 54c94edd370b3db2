"""The ``testbed`` command: run a topology and check it, clean up after crashes, report what the kernel can do.

This module only parses and dispatches: each command is a module of ``testbed.commands`` with an
``add_parser`` and a handler.  Bad input is rejected before anything is built (and before a microVM boots):
one line naming the option or field and its value, exit status 2.  When the kernel lacks netem or RED, the
commands that build a fabric re-run themselves inside a microVM (``testbed.net.microvm``) and say so in one
line.
"""

import argparse
import inspect
import sys
from pathlib import Path

from testbed.commands import analyze, clean, compare, doctor, flows, perf, run
from testbed.commands.options import UsageError
from testbed.model.fabric import TopologyError
from testbed.net import microvm
from testbed.results import report

COMMANDS = (run, perf, compare, flows, analyze, clean, doctor)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "nccl_tests_options", False):
        args.nccl = rest  # nccl-tests' options, checked by nccl_tests.parse_args
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.handler(args, argv if argv is not None else sys.argv[1:])
    except (UsageError, TopologyError) as error:
        print(f"testbed: error: {error}", file=sys.stderr)
        return 2
    except (microvm.MicroVmError, report.ReportError) as error:
        print(f"testbed: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("testbed: interrupted; everything was cleaned up", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testbed", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def run_script(topo_cls) -> None:
    """``__main__`` of a topology script: the same as ``testbed run <this script> [options]``."""
    script = str(Path(inspect.getfile(topo_cls)).resolve())
    sys.exit(main(["run", script, *sys.argv[1:]]))
