"""Kernel tests run against a real kernel: natively where it can emulate links, else in one microVM.

Tests marked ``kernel`` need netem and RED.  Where the running kernel has them (a Vagrant VM, a Linux
workstation) they run here like any other test.  Where it lacks them (WSL2, Docker Desktop, our CI) this
session boots one microVM (``testbed.net.microvm``) as soon as collection ends, runs exactly the selected kernel
tests there with pytest (the host's own tests follow ``tests/kernel`` in pytest's order: they run once the
VM's results are in, and never beside its timing-sensitive runs), and reports each kernel test's result in its
place, the way pytest-xdist reports its workers' tests: the inner pytest serialises every report
(``--vm-reports``) and this one replays them, so the summary counts each test once and a failure shows the
traceback from inside the VM.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from _pytest.reports import TestReport

from testbed.net import kernel, microvm

# an idle host ran the kernel tests in 25 min, a busy CI host in over 45 (its faithful k is larger, so its dilated
# tests run longer): the bound is CI's own (90 min) less provisioning and the native tests' tail
VM_TIMEOUT_S = float(os.environ.get("TESTBED_VM_TIMEOUT", 80 * 60))


def pytest_addoption(parser):
    parser.addoption("--vm-reports", type=Path, help=argparse.SUPPRESS)  # set by the outer session only


def pytest_configure(config):
    if config.getoption("vm_reports"):
        config.pluginmanager.register(ReportWriter(config), "testbed-vm-report-writer")


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config, items):
    selected = [item for item in items if item.get_closest_marker("kernel")]
    if not selected or config.option.collectonly or microvm.inside():
        return
    if os.geteuid() != 0:
        raise pytest.UsageError("kernel tests need root (namespaces, tc): run pytest as root or deselect "
                                "them with -m 'not kernel'")
    reason = kernel.shortfall()
    say = config.pluginmanager.get_plugin("terminalreporter").write_line
    if reason is None:
        say(f"tests: {len(selected)} kernel tests run natively (kernel {os.uname().release})")
        return
    runner = VmRunner(config, selected)
    say(f"tests: {microvm.describe(reason)}: {len(selected)} kernel tests, log {runner.log_path}")
    config.pluginmanager.register(runner, "testbed-vm-runner")


class ReportWriter:
    """Inside the VM: append every test report, serialised, to the file the outer session reads."""

    def __init__(self, config):
        self.config = config
        self.path: Path = config.getoption("vm_reports")

    def pytest_runtest_logreport(self, report):
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        with self.path.open("a") as out:
            out.write(json.dumps(data) + "\n")


class VmRunner:
    """On the host: run the selected kernel tests in the VM and stand in for them in this session."""

    def __init__(self, config, items):
        self.config = config
        self.nodeids = {item.nodeid for item in items}
        self.workdir = Path(tempfile.mkdtemp(prefix="testbed-vm-tests-", dir="/var/tmp"))  # the VM's /tmp is its own
        self.log_path = self.workdir / "vm.log"
        self.reports_path = self.workdir / "reports.jsonl"
        args_file = self.workdir / "nodeids.txt"
        args_file.write_text("\n".join(item.nodeid for item in items) + "\n")
        argv = [sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
                "--rootdir", str(config.rootpath), "--basetemp", str(self.workdir / "tmp"),
                "--vm-reports", str(self.reports_path), f"@{args_file}"]
        self.started = time.monotonic()
        self.vm = microvm.start(argv, rwdirs=[self.workdir], cwd=config.rootpath)
        self.relay = threading.Thread(target=self._relay_log, daemon=True)
        self.relay.start()
        self.reports: dict[str, list[TestReport]] | None = None

    def _relay_log(self) -> None:
        with self.log_path.open("wb") as log:
            microvm.relay(self.vm.stdout, log)

    def _collect(self) -> dict[str, list[TestReport]]:
        """Wait for the VM (once) and read back its reports, by test."""
        if self.reports is None:
            try:
                self.vm.wait(timeout=max(1.0, VM_TIMEOUT_S - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                microvm.stop(self.vm)
            self.relay.join(timeout=10)
            self.reports = {}
            lines = self.reports_path.read_text().splitlines() if self.reports_path.exists() else []
            for line in lines:
                report = self.config.hook.pytest_report_from_serializable(config=self.config, data=json.loads(line))
                self.reports.setdefault(report.nodeid, []).append(report)
            self.config.pluginmanager.get_plugin("terminalreporter").write_line(
                f"\ntests: microVM finished in {time.monotonic() - self.started:.0f} s with status "
                f"{self.vm.returncode}, {len(self.reports)} kernel tests reported (log {self.log_path})")
        return self.reports

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if item.nodeid not in self.nodeids:
            return None
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in self._collect().get(item.nodeid) or [self._missing(item)]:
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _missing(self, item) -> TestReport:
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else "(no log)"
        return TestReport(item.nodeid, item.location, keywords={}, outcome="failed", when="call", sections=[],
                          longrepr=f"no result from the microVM (exit status {self.vm.returncode}); "
                                   f"end of {self.log_path}:\n{tail}")

    def pytest_sessionfinish(self):
        microvm.stop(self.vm)
