"""Leave nothing behind: a record of what each run creates, and the sweep that removes it.

Before a run creates anything it writes ``/run/testbed/<pid>.json`` naming its nodes (and, on the host side
of a microVM run, the VM's process).  As soon as Mininet has made the nodes, each node's network namespace
is pinned by name, ``/run/netns/testbed-<pid>-<node>`` (what ``ip netns attach`` does), so it can be found
and entered (``ip netns exec``) even when the node's shell is gone: after a ``kill -9`` the shells die with
their terminals, but processes started in the namespaces (iperf3, tcpdump) live on and keep them alive.
A pinned name holds its namespace, so it can never point at someone else's.

Stopping a run sweeps exactly its record: every process in its namespaces is killed (which frees the veth
pairs and qdiscs in them), the names are unpinned, the record removed.  ``testbed clean`` sweeps the
records whose run is gone.  Nothing not named in a record is touched.
"""

import json
import os
import re
import signal
import time
from pathlib import Path

from pyroute2 import netns

RUN_DIR = Path(os.environ.get("TESTBED_RUN_DIR", "/run/testbed"))
NETNS_DIR = Path("/run/netns")
PROBE_NETNS = re.compile(r"^testbed-probe-(\d+)$")


def record_path(owner: int | None = None) -> Path:
    """Where the record of process ``owner`` (default: this one) lives."""
    return RUN_DIR / f"{os.getpid() if owner is None else owner}.json"


def record(nodes: list[str], vm_pid: int | None = None) -> Path:
    """Write this process's record before it builds anything."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = record_path()
    path.write_text(json.dumps({"pid": os.getpid(), "started": time.time(), "nodes": nodes, "vm_pid": vm_pid}))
    return path


def namespace_name(owner: int, node: str) -> str:
    return f"testbed-{owner}-{node}"


def pin(nodes: dict[str, int]) -> None:
    """Pin the network namespace of each node (name -> pid of a process in it) under this run's names."""
    for node, pid in nodes.items():
        netns.attach(namespace_name(os.getpid(), node), pid)


def sweep(path: Path) -> dict:
    """Remove everything a record names, then the record; returns what was removed."""
    entry = json.loads(path.read_text())
    pinned = [name for name in (namespace_name(entry["pid"], node) for node in entry["nodes"])
              if (NETNS_DIR / name).exists()]
    shells = _shell_pids(set(entry["nodes"]))
    namespaces = {os.stat(NETNS_DIR / name).st_ino for name in pinned} | {_netns(pid) for pid in shells}
    killed = _kill_namespaces(namespaces, shells)
    for name in pinned:
        netns.remove(name)
    if entry.get("vm_pid") and _alive(entry["vm_pid"]):
        os.killpg(entry["vm_pid"], signal.SIGKILL)
        killed.append(entry["vm_pid"])
    path.unlink(missing_ok=True)
    return {"record": str(path), "namespaces": len(pinned), "processes": len(killed)}


def clean() -> list[dict]:
    """Sweep the records of every run that is no longer alive (live runs are left alone), and the probe
    namespaces of kernel checks that were killed."""
    results = []
    for path in sorted(RUN_DIR.glob("*.json")) if RUN_DIR.is_dir() else []:
        owner = int(path.stem)
        if owner != os.getpid() and _owner_alive(owner, json.loads(path.read_text())["started"]):
            results.append({"record": str(path), "skipped": f"run {owner} is still alive"})
            continue
        results.append(sweep(path))
    for name in sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []:
        match = PROBE_NETNS.match(name)
        if match and not _alive(int(match.group(1))):
            netns.remove(name)
            results.append({"record": str(NETNS_DIR / name), "namespaces": 1, "processes": 0})
    return results


def _shell_pids(nodes: set[str]) -> list[int]:
    """PIDs of the Mininet shells of ``nodes`` (their command line ends in ``mininet:<name>``)."""
    pids = []
    for pid, argv in _processes():
        if argv and argv[-1].startswith("mininet:") and argv[-1][len("mininet:"):] in nodes:
            pids.append(pid)
    return pids


def _kill_namespaces(namespaces: set[int | None], shells: list[int]) -> list[int]:
    """SIGKILL ``shells`` and every process in ``namespaces`` (never the caller's own namespace)."""
    namespaces = namespaces - {_netns(os.getpid()), None}
    victims = [pid for pid, _ in _processes() if pid != os.getpid() and _netns(pid) in namespaces]
    for pid in set(victims) | set(shells):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in victims) and time.monotonic() < deadline:
        time.sleep(0.05)
    return victims


def _processes():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            except OSError:
                continue


def _netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _owner_alive(pid: int, recorded: float) -> bool:
    """True if ``pid`` is alive and is the process that wrote the record (not a reused PID)."""
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return False
    started = time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    return _alive(pid) and started <= recorded + 1
