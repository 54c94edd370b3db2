"""Leave nothing behind: a record of what each run creates, and the sweep that removes exactly that.

Before a run creates anything it writes ``/run/testbed/<pid>.json`` (to a temporary name, then renamed: a
record is whole or absent) naming its run id, its nodes and, on the host side of a microVM run, the VM's
process group with its leader's start time.  Mininet starts each node's shell while the run id is in the
environment (``marked``), so a shell is known as this run's by its environment, not by its node name alone:
two runs of ``two_sites`` and ``three_sites`` both have a ``westh1``.  As soon as the nodes exist, each node's
network namespace is pinned by name, ``/run/netns/testbed-<pid>-<node>`` (what ``ip netns attach`` does), so
it can be found and entered even when the node's shell is gone: after a ``kill -9`` the shells die with
their terminals, but processes started in the namespaces (iperf3, tcpdump) live on and keep them alive.
A pinned name holds its namespace, so it can never point at someone else's.

Stopping a run sweeps exactly its record: its shells and every process in its namespaces are killed (which
frees the veth pairs and qdiscs in them), the names are unpinned, the VM's group killed if its leader is still
the process recorded (a PID can be reused: ``start_ticks``), its temporary directory removed, the record
removed.  ``testbed clean`` sweeps the records whose run is gone; one it cannot read is swept by what its name
alone tells (the owner's pinned namespaces) and reported.  Nothing not named in a record is touched.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import netns

RUN_DIR = Path(os.environ.get("TESTBED_RUN_DIR", "/run/testbed"))
NETNS_DIR = Path("/run/netns")
PROBE_NETNS = re.compile(r"^testbed-probe-(\d+)$")
RUN_ENV = "TESTBED_RUN"  # in the environment of each node's shell: the run id of the run that started it


class RecordError(ValueError):
    """A record that cannot be read (cut short, not JSON, fields missing)."""


@dataclass
class Swept:
    """What sweeping one record ended, for ``testbed clean`` to report exactly."""

    record: str
    processes: Counter = field(default_factory=Counter)  # command name -> how many were killed
    namespaces: list[str] = field(default_factory=list)
    temp_dirs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left alone, and why

    def describe(self) -> str:
        if not (self.processes or self.namespaces or self.temp_dirs):
            return "; ".join(self.notes) or "nothing of it was left"
        killed = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(self.processes.items()))
        parts = [f"killed {sum(self.processes.values())} processes" + (f" ({killed})" if killed else ""),
                 f"removed {len(self.namespaces)} namespaces"]
        if self.temp_dirs:
            parts.append(f"removed {', '.join(self.temp_dirs)}")
        return "; ".join(parts + self.notes)


def record_path(owner: int | None = None) -> Path:
    """Where the record of process ``owner`` (default: this one) lives."""
    return RUN_DIR / f"{os.getpid() if owner is None else owner}.json"


def run_id(pid: int | None = None) -> str:
    """This process's run id: its pid and start time, unique for as long as the machine runs."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{start_ticks(pid)}"


def record(nodes: list[str], vm_pid: int | None = None, temp_dir: Path | None = None) -> Path:
    """Write this process's record (atomically) before it builds anything."""
    entry = {"pid": os.getpid(), "run": run_id(), "nodes": nodes}
    if vm_pid is not None:
        entry["vm"] = {"pid": vm_pid, "start_ticks": start_ticks(vm_pid)}
    if temp_dir is not None:
        entry["temp_dir"] = str(temp_dir)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = record_path()
    fd, temp = tempfile.mkstemp(dir=RUN_DIR, prefix=f".{path.stem}-", suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(entry))
    os.replace(temp, path)
    return path


@contextlib.contextmanager
def marked():
    """While Mininet starts the nodes' shells: they inherit this run's id in their environment."""
    os.environ[RUN_ENV] = run_id()
    try:
        yield
    finally:
        os.environ.pop(RUN_ENV, None)


def namespace_name(owner: int, node: str) -> str:
    return f"testbed-{owner}-{node}"


def pin(nodes: dict[str, int]) -> None:
    """Pin the network namespace of each node (name -> pid of a process in it) under this run's names."""
    for node, pid in nodes.items():
        netns.attach(namespace_name(os.getpid(), node), pid)


def read(path: Path) -> dict:
    """The record at ``path``; RecordError (one line) if it is not a whole record."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"unreadable ({error.__class__.__name__}: {error})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("nodes"), list) or "run" not in entry:
        raise RecordError("not a testbed record (no run id or node list)")
    return entry


def sweep(path: Path) -> Swept:
    """Remove everything the record at ``path`` names, then the record; say what was removed."""
    swept = Swept(str(path))
    try:
        entry = read(path)
    except RecordError as error:
        entry = {"nodes": []}
        swept.notes.append(f"record {error}: swept by its name only")
    owner = int(path.stem)
    pinned = sorted(NETNS_DIR.glob(f"{namespace_name(owner, '')}*")) if NETNS_DIR.is_dir() else []
    shells = shell_pids(set(entry["nodes"]), entry.get("run"))
    namespaces = {os.stat(name).st_ino for name in pinned} | {_netns(pid) for pid in shells}
    swept.processes += _kill_namespaces(namespaces, shells)
    for name in pinned:
        netns.remove(name.name)
        swept.namespaces.append(name.name)
    if "vm" in entry:
        _kill_vm(entry["vm"], swept)
    if entry.get("temp_dir") and Path(entry["temp_dir"]).is_dir():
        shutil.rmtree(entry["temp_dir"], ignore_errors=True)
        swept.temp_dirs.append(entry["temp_dir"])
    path.unlink(missing_ok=True)
    return swept


def clean() -> list[Swept]:
    """Sweep the records of every run that is no longer alive (live runs are left alone), and the probe
    namespaces of kernel checks that were killed."""
    results = []
    for path in sorted(RUN_DIR.glob("*.json")) if RUN_DIR.is_dir() else []:
        if not path.stem.isdigit():
            results.append(Swept(str(path), notes=["not a testbed record name: left alone"]))
        elif int(path.stem) != os.getpid() and _owner_alive(int(path.stem), path):
            results.append(Swept(str(path), notes=[f"run {path.stem} is still alive: left alone"]))
        else:
            results.append(sweep(path))
    for name in sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []:
        match = PROBE_NETNS.match(name)
        if match and not _alive(int(match.group(1))):
            netns.remove(name)
            results.append(Swept(str(NETNS_DIR / name), namespaces=[name]))
    return results


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/<pid>/stat field 22); None if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _kill_vm(vm: dict, swept: Swept) -> None:
    """SIGKILL the VM's process group if its leader is the process recorded or gone (a PID in use as a group
    id is never handed out again, so a group without its leader is still the VM's)."""
    leader = start_ticks(vm["pid"])
    if leader is not None and leader != vm.get("start_ticks"):
        swept.notes.append(f"pid {vm['pid']} is no longer the VM (started at another time): left alone")
        return
    swept.processes += _signal(group_members(vm["pid"]))


def group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid``."""
    return [pid for pid, _ in _processes() if _pgid(pid) == pgid]


def shell_pids(nodes: set[str], run: str | None) -> list[int]:
    """PIDs of the Mininet shells of ``nodes`` (command line ending in ``mininet:<name>``) that this run
    started (``RUN_ENV`` in their environment)."""
    if run is None:
        return []
    pids = []
    for pid, argv in _processes():
        if argv and argv[-1].startswith("mininet:") and argv[-1][len("mininet:"):] in nodes \
                and _environment(pid).get(RUN_ENV) == run:
            pids.append(pid)
    return pids


def _kill_namespaces(namespaces: set[int | None], shells: list[int]) -> Counter:
    """SIGKILL ``shells`` and every process in ``namespaces`` (never the caller's own namespace)."""
    namespaces = namespaces - {_netns(os.getpid()), None}
    victims = {pid for pid, _ in _processes() if pid != os.getpid() and _netns(pid) in namespaces}
    return _signal(sorted(victims | set(shells)))


def _signal(pids: list[int]) -> Counter:
    """SIGKILL ``pids``, wait (up to 5 s) until they are gone; count what was killed by command name."""
    killed = Counter()
    for pid in pids:
        name = _comm(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed[name] += 1
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def _processes():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            except OSError:
                continue


def _environment(pid: int) -> dict[str, str]:
    try:
        block = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in block.split("\0") if "=" in item)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _owner_alive(pid: int, path: Path) -> bool:
    """True if ``pid`` is alive and is the process that wrote the record (not a reused PID): its run id as
    recorded, or, for a record that cannot be read, a start before the record was written."""
    if not _alive(pid):
        return False
    try:
        return read(path)["run"] == run_id(pid)
    except RecordError:
        ticks = start_ticks(pid)
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        started = time.time() - uptime + (ticks or 0) / os.sysconf("SC_CLK_TCK")
        return started <= path.stat().st_mtime + 1
