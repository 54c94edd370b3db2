"""``testbed clean`` ends exactly what a record names: whole records only, PIDs checked against their start
time, shells known by their run id, a bad record reported and never in the way of the others."""

import json
import os
import subprocess
import sys

import pytest

from testbed.net import cleanup

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
COMM = os.path.basename(sys.executable)[:15]  # what /proc/<pid>/comm says of it


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(cleanup, "RUN_DIR", tmp_path)
    return tmp_path


@pytest.fixture
def processes():
    started = []

    def start(*argv, env=None):
        started.append(subprocess.Popen([*SLEEPER, *argv], env=env, start_new_session=True))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()


def dead_pid() -> int:
    """The PID of a process that has ended (not reused in the milliseconds a test takes)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def write(run_dir, owner: int, entry) -> None:
    (run_dir / f"{owner}.json").write_text(entry if isinstance(entry, str) else json.dumps(entry))


def test_a_record_is_written_whole_and_read_back(run_dir):
    path = cleanup.record(["westh1", "eastb"])
    assert [p.name for p in run_dir.iterdir()] == [path.name]  # no temporary file left beside it
    entry = cleanup.read(path)
    assert entry["nodes"] == ["westh1", "eastb"] and entry["run"] == cleanup.run_id()


def test_unreadable_records_are_reported_and_the_others_still_swept(run_dir, processes):
    empty, cut, listed, owner = (dead_pid() for _ in range(4))
    write(run_dir, empty, "")
    write(run_dir, cut, '{"pid": 1, "nodes": ["a"')
    write(run_dir, listed, "[1, 2]")
    (run_dir / "notes.json").write_text("{}")
    vm = processes()
    write(run_dir, owner, {"pid": owner, "run": "x", "nodes": [],
                           "vm": {"pid": vm.pid, "start_ticks": cleanup.start_ticks(vm.pid)}})
    results = {os.path.basename(swept.record): swept.describe() for swept in cleanup.clean()}
    assert "unreadable (JSONDecodeError" in results[f"{empty}.json"]
    assert "unreadable (JSONDecodeError" in results[f"{cut}.json"]
    assert "not a testbed record" in results[f"{listed}.json"]
    assert results["notes.json"] == "not a testbed record name: left alone"
    assert results[f"{owner}.json"] == f"killed 1 processes ({COMM}); removed 0 namespaces"
    assert vm.wait(timeout=5) == -9
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.json"]


def test_a_reused_vm_pid_is_left_alone(run_dir, processes):
    """The record names a VM whose PID now belongs to another process: its start time gives it away."""
    stranger = processes()
    owner = dead_pid()
    write(run_dir, owner, {"pid": owner, "run": "x", "nodes": [],
                           "vm": {"pid": stranger.pid, "start_ticks": cleanup.start_ticks(stranger.pid) - 1}})
    [swept] = cleanup.clean()
    assert "no longer the VM" in swept.describe()
    assert stranger.poll() is None
    assert not (run_dir / f"{owner}.json").exists()


def test_shells_are_matched_by_run_id_not_by_node_name(run_dir, processes):
    """Two runs with a ``westh1``: sweeping the dead one's record ends its shell, never the live one's."""
    owner = dead_pid()
    ours = processes("mininet:westh1", env=dict(os.environ, **{cleanup.RUN_ENV: f"{owner}-42"}))
    theirs = processes("mininet:westh1", env=dict(os.environ, **{cleanup.RUN_ENV: "7-42"}))
    unmarked = processes("mininet:westh1")
    write(run_dir, owner, {"pid": owner, "run": f"{owner}-42", "nodes": ["westh1"]})
    [swept] = cleanup.clean()
    assert swept.describe() == f"killed 1 processes ({COMM}); removed 0 namespaces"
    assert ours.wait(timeout=5) == -9
    assert theirs.poll() is None and unmarked.poll() is None


def test_a_live_run_is_left_alone(run_dir):
    path = cleanup.record([])
    other = subprocess.run([sys.executable, "-P", "-c", "from testbed.net import cleanup; "
                            "print([s.describe() for s in cleanup.clean()])"],
                           env=dict(os.environ, TESTBED_RUN_DIR=str(run_dir)), capture_output=True, text=True)
    assert f"run {os.getpid()} is still alive: left alone" in other.stdout, other.stderr
    assert path.exists()
