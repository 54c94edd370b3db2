"""The microVM never outlives the testbed process that started it: on SIGTERM it is stopped (status 130), on
SIGKILL its watchdog kills it; either way its process group and temporary directory are gone.

The VM here is a stand-in with the same shape (a group leader whose child, like qemu, is a grandchild of the
testbed), started through ``testbed.net.microvm`` as a real VM is: what is tested is the lifetime, not qemu.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.net import cleanup

OWNER = """
import sys
from testbed.net import microvm
grandchild = "import subprocess, time; subprocess.Popen(['sleep', '600']); print('up', flush=True); time.sleep(600)"
microvm.command = lambda argv, rwdirs, cwd, console=None: [sys.executable, "-c", grandchild]
microvm.describe = lambda reason: reason
sys.exit(microvm.run(["unused"], [], "stand-in VM"))
"""


def start_owner(run_dir: Path) -> tuple[subprocess.Popen, dict]:
    owner = subprocess.Popen([sys.executable, "-P", "-c", OWNER], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, TESTBED_RUN_DIR=str(run_dir)))
    assert owner.stdout.readline().strip() == "testbed: stand-in VM"
    assert owner.stdout.readline().strip() == "up"
    return owner, cleanup.read(run_dir / f"{owner.pid}.json")


def wait_until_gone(pgid: int, timeout_s: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while cleanup.group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return cleanup.group_members(pgid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signalled_testbed_stops_its_vm(tmp_path, signum):
    owner, record = start_owner(tmp_path)
    assert len(cleanup.group_members(record["vm"]["pid"])) == 2 and Path(record["temp_dir"]).is_dir()
    owner.send_signal(signum)
    assert owner.wait(timeout=30) == 130
    assert wait_until_gone(record["vm"]["pid"]) == []
    assert not Path(record["temp_dir"]).exists() and list(tmp_path.iterdir()) == []


def test_a_killed_testbed_takes_its_vm_along(tmp_path, monkeypatch):
    owner, record = start_owner(tmp_path)
    owner.kill()
    owner.wait()
    assert wait_until_gone(record["vm"]["pid"]) == []
    deadline = time.monotonic() + 5
    while Path(record["temp_dir"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(record["temp_dir"]).exists()
    monkeypatch.setattr(cleanup, "RUN_DIR", tmp_path)  # the record is left for clean, which has nothing to end
    [swept] = cleanup.clean()
    assert swept.describe() == "nothing of it was left"
    assert list(tmp_path.iterdir()) == []


def test_the_record_names_the_vm_and_its_start(tmp_path):
    owner, record = start_owner(tmp_path)
    try:
        assert record["vm"]["start_ticks"] == cleanup.start_ticks(record["vm"]["pid"])
        assert json.loads((tmp_path / f"{owner.pid}.json").read_text())["pid"] == owner.pid
    finally:
        owner.terminate()
        owner.wait(timeout=30)
