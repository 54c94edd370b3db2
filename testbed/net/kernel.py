"""What the running kernel can emulate, found by trying it: a throwaway namespace gets each qdisc on lo.

Reading config files or module lists would miss built-ins and auto-loading; asking the kernel to build the
qdisc is the only answer that cannot be wrong ("qdisc kind unknown" is exactly what users on WSL2 or
Docker Desktop kernels hit).
"""

import os
import subprocess
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError, netns

from testbed.net.tc import netem, red

PROBES = {
    "htb": {"default": 1},
    "netem": {"delay": 1000, "limit": 1000},
    "red": {"limit": 400000, "min": 30000, "max": 90000, "ecn": True},
}
REQUIRED = ("netem", "red", "htb")


def capabilities() -> dict[str, bool]:
    """{'netem': bool, 'red': bool, 'htb': bool, 'openvswitch': bool} for the running kernel."""
    netem.register()
    red.register()
    name = f"testbed-probe-{os.getpid()}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            found = {kind: _try_qdisc(ipr, kind, params) for kind, params in PROBES.items()}
    finally:
        netns.remove(name)
    found["openvswitch"] = _module_loads("openvswitch")
    return found


def shortfall(found: dict[str, bool] | None = None) -> str | None:
    """Why this kernel cannot emulate links ("kernel X has no sch_netem, sch_red"), or None if it can."""
    found = capabilities() if found is None else found
    lacking = [kind for kind in REQUIRED if not found[kind]]
    if not lacking:
        return None
    return f"kernel {os.uname().release} has no {', '.join('sch_' + kind for kind in lacking)}"


def _try_qdisc(ipr, kind: str, params: dict) -> bool:
    """Replace lo's root qdisc with ``kind`` (the probe namespace is removed afterwards anyway)."""
    try:
        ipr.tc("replace", kind, index=1, handle="1:", **params)
    except NetlinkError:
        return False
    return True


def _module_loads(module: str) -> bool:
    if Path(f"/sys/module/{module}").exists():
        return True
    return subprocess.run(["modprobe", "-q", module], check=False).returncode == 0
