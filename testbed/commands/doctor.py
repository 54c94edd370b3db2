"""``testbed doctor``: what the kernel supports, which path runs take (native or microVM), where each tool is."""

import argparse
import os
import shutil
import sys
from pathlib import Path

from testbed.commands.options import require_root
from testbed.net import kernel, microvm

TOOLS = ("mnexec", "iperf3", "ping", "tcpdump", "tshark", "qemu-system-x86_64", "vng")


def add_parser(commands) -> None:
    parser = commands.add_parser("doctor", help="show what the kernel supports and which path runs use")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, argv: list[str]) -> int:
    require_root()
    found = kernel.capabilities()
    print(f"kernel {os.uname().release}")
    for kind, ok in found.items():
        print(f"  {kind:12} {'yes' if ok else 'no'}")
    reason = kernel.shortfall(found)
    if reason is None or microvm.inside():
        print("path: native (this kernel emulates links itself)")
    else:
        try:
            print(f"path: microVM ({microvm.kernel_image().name}, {microvm.accel().upper()}), because {reason}")
        except microvm.MicroVmError as error:
            print(f"path: none: {error}")
            return 1
    for tool in TOOLS:
        where = shutil.which(tool) or (str(Path(sys.executable).parent / tool)
                                       if (Path(sys.executable).parent / tool).exists() else None)
        print(f"  {tool:20} {where or 'MISSING'}")
    return 0
