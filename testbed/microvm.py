"""Run a command inside a microVM with a stock distribution kernel when this kernel cannot emulate links.

virtme-ng boots Debian's ``linux-image-amd64`` under qemu with the host's root filesystem shared read-only,
runs one command and returns its exit status (about 20 s of boot under TCG).  Directories the command must
write to are passed as read-write mounts.  KVM is used only where it is trusted: on bare metal, or when
``TESTBED_VM_ACCEL=kvm`` says so (nested KVM is often present but broken); otherwise qemu's TCG emulates.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from testbed import cleanup

IN_VM_ENV = "TESTBED_IN_VM"
SANE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # busybox shadows tools otherwise


class MicroVmError(RuntimeError):
    """The microVM path is needed but cannot be used; the message says what to install."""


def inside() -> bool:
    return os.environ.get(IN_VM_ENV) == "1"


def kernel_image() -> Path:
    """The newest /boot/vmlinuz-* whose modules include sch_netem and sch_red."""
    for image in sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name), reverse=True):
        sched = Path("/lib/modules") / image.name.removeprefix("vmlinuz-") / "kernel/net/sched"
        if any(sched.glob("sch_netem.ko*")) and any(sched.glob("sch_red.ko*")):
            return image
    raise MicroVmError("no kernel with sch_netem and sch_red in /boot: install linux-image-amd64 "
                       "(scripts/provision.sh does)")


def accel() -> str:
    """'kvm' or 'tcg' (see module docstring)."""
    forced = os.environ.get("TESTBED_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    nested = "hypervisor" in Path("/proc/cpuinfo").read_text()
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) and not nested else "tcg"


def command(argv: list[str], rwdirs: list[Path], cwd: Path) -> list[str]:
    """The vng command line that runs ``argv`` inside the VM with a sane environment."""
    vng = shutil.which("vng") or str(Path(sys.executable).parent / "vng")
    if not Path(vng).exists():
        raise MicroVmError("virtme-ng (vng) is not installed: run scripts/provision.sh")
    inner = (f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:{SANE_PATH} {IN_VM_ENV}=1 "
             f"PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 && {shlex.join(argv)}")
    cmd = [vng, "-r", str(kernel_image()), "--memory", os.environ.get("TESTBED_VM_MEMORY", "3G"),
           "--cpus", str(os.cpu_count() or 1), "--cwd", str(cwd), "--exec", inner]
    if accel() == "tcg":
        cmd.insert(1, "--disable-kvm")
    for directory in rwdirs:
        cmd[1:1] = ["--rwdir", str(directory)]
    return cmd


def run(argv: list[str], rwdirs: list[Path], reason: str) -> int:
    """Run ``argv`` in the VM, stream its output, return its exit status; Ctrl-C stops the VM."""
    for directory in rwdirs:
        directory.mkdir(parents=True, exist_ok=True)
    cmd = command(argv, rwdirs, Path.cwd())
    print(f"testbed: {reason}; running inside a microVM ({Path(cmd[cmd.index('-r') + 1]).name}, "
          f"{accel().upper()}, ~20 s to boot)", flush=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', SANE_PATH)}")
    vm = subprocess.Popen(cmd, env=env, stdin=sys.stdin if sys.stdin.isatty() else subprocess.DEVNULL,
                          start_new_session=True)
    record = cleanup.record([], vm_pid=vm.pid)
    try:
        return vm.wait()
    except KeyboardInterrupt:
        os.killpg(vm.pid, signal.SIGKILL)
        vm.wait()
        return 130
    finally:
        record.unlink(missing_ok=True)


def _version_key(name: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.replace("-", ".").split(".")]
