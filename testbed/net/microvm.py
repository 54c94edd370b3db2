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
import sysconfig
import tempfile
from pathlib import Path

from testbed.net import cleanup, kernel
from testbed.net.interrupts import InterruptGuard

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
    """'kvm' or 'tcg' (see module docstring); inside the VM, what the host chose for it."""
    forced = os.environ.get("TESTBED_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    nested = "hypervisor" in Path("/proc/cpuinfo").read_text()
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) and not nested else "tcg"


# Kernel boot options.  Under TCG the guest picks the HPET clocksource, and every clock read (the transport's
# time.monotonic_ns, several per packet) is then an emulated device access: read_hpet alone took 7 % of a
# packet's time; the TSC, which qemu derives from the host's clock, cut a clock read from 1.86 to 0.63 us.
# init_on_alloc=0: Debian's kernels zero every page they hand out, 4 % of a packet's time in its socket buffers.
# Together they raised a loop of just the transport's system calls from 10,750 to 14,500 packets/s.
BOOT_OPTIONS = "clocksource=tsc tsc=reliable init_on_alloc=0"
# The kernel caps socket buffers at net.core.[rw]mem_max (212,992 bytes by default): the transport forces its
# 4 MB past the cap as root, iperf3 and the rest cannot, so the cap is raised for everything in the VM.
SOCKET_BUFFER_MAX = 16 << 20
# glibc's malloc hands out blocks from 128 KB up with mmap and returns them on free: every delivered chunk of
# a collective was a fresh mmap, 0.14 page faults per packet at ~25 us each under TCG; kept in the heap instead.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": 8 << 20, "MALLOC_TRIM_THRESHOLD_": 64 << 20}


def command(argv: list[str], rwdirs: list[Path], cwd: Path, console: Path | None = None) -> list[str]:
    """The vng command line that runs ``argv`` inside the VM with a sane environment (see ``environment``),
    the boot options above and the socket buffer cap raised.

    With ``console`` (a directory of the VM's own), ``argv`` runs instead as the shell of the VM's console: a
    terminal (ttyS0) that qemu joins to ours, raw, so line editing, Ctrl-C and Ctrl-D act inside the VM as
    on a terminal of its own (Mininet's CLI needs that); its exit status is left in ``console``/status.
    """
    vng = shutil.which("vng") or str(Path(sys.executable).parent / "vng")
    if not Path(vng).exists():
        raise MicroVmError("virtme-ng (vng) is not installed: run scripts/provision.sh")
    exports = " ".join(f"{name}={shlex.quote(str(value))}" for name, value in environment().items())
    inner = (f"export {exports} && sysctl -qw net.core.rmem_max={SOCKET_BUFFER_MAX} "
             f"net.core.wmem_max={SOCKET_BUFFER_MAX} && {shlex.join(argv)}")
    cmd = [vng, "-r", str(kernel_image()), "--memory", os.environ.get("TESTBED_VM_MEMORY", "3G"),
           "--cpus", str(os.cpu_count() or 1), "--cwd", str(cwd), "--append", BOOT_OPTIONS]
    if console is None:
        cmd += ["--exec", inner]
    else:  # no monitor on the console: Ctrl-A is the user's (start of line), not qemu's
        cmd += ["--disable-monitor", "--shell", str(_console_shell(console, inner, cwd))]
        rwdirs = [*rwdirs, console]
    if accel() == "tcg":
        cmd.insert(1, "--disable-kvm")
    for directory in rwdirs:
        cmd[1:1] = ["--rwdir", str(directory)]
    return cmd


def _console_shell(console: Path, inner: str, cwd: Path) -> Path:
    """The script the VM's console runs as its shell: ``inner`` in ``cwd``, its status written down.

    The terminal's Ctrl-C reaches every process of its foreground group, this shell too, which would die of
    it once the command ended, before writing the status (a CLI session whose Ctrl-C had stopped a ping
    ended with status 1): the shell traps SIGINT (a trap, not an ignore, which the command would inherit).
    """
    script = console / "console.sh"
    script.write_text(f"#!/bin/sh\ntrap : INT\ncd {shlex.quote(str(cwd))}\n{inner}\n"
                      f"echo $? > {shlex.quote(str(console))}/status\n")
    script.chmod(0o755)
    return script


def console_status(vm: "MicroVm") -> int:
    """The exit status the console's command left (1 if it left none: the VM ended before it did)."""
    try:
        return int((vm.temp_dir / "status").read_text())
    except (OSError, ValueError):
        return 1


def environment() -> dict[str, str]:
    """What every process in the VM runs with.

    The root file system is the host's, read-only: matplotlib's cache goes in /tmp.  numpy runs at its
    baseline SIMD level (``_numpy_dispatched``).  Mininet imports distutils, which setuptools' shim in the
    venv (distutils-precedence.pth) serves from setuptools, whose pkg_resources then scans every installed
    distribution: 35 s of a 74 s "import testbed.cli" under TCG, where every file is read over 9p; the
    standard library's distutils (Debian's python3-distutils) is what Mininet was written for, and costs
    nothing: used where the distribution ships it (``_stdlib_distutils``).  And ``MALLOC`` above.
    """
    env = {"PATH": f"{Path(sys.executable).parent}:{SANE_PATH}", IN_VM_ENV: "1", "TESTBED_VM_ACCEL": accel(),
           "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": "/tmp/matplotlib",
           "NPY_DISABLE_CPU_FEATURES": _numpy_dispatched(), **{name: str(value) for name, value in MALLOC.items()}}
    if _stdlib_distutils():
        env["SETUPTOOLS_USE_DISTUTILS"] = "stdlib"
    return env


def _stdlib_distutils() -> bool:
    """Whether the standard library still has distutils (Python <= 3.11 with Debian's python3-distutils)."""
    return (Path(sysconfig.get_paths()["stdlib"]) / "distutils" / "version.py").exists()


def _numpy_dispatched() -> str:
    """numpy's runtime-dispatched SIMD targets (AVX2 and up), switched off inside the VM: under TCG, after a
    fabric had run, numpy's AVX2 sorts crashed pandas with SIGSEGV in 3 of 4 tries and never with these off."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return " ".join(__cpu_dispatch__)


# The watchdog: reads the VM's process group, then waits on a pipe whose write end only the testbed process
# holds.  "done" means the testbed stopped the VM itself; end of file without it means the testbed died (kill -9,
# a crash) and the VM would run on at full CPU: the group is killed and virtme's temporary files removed.
WATCHDOG = 'read -r group; read -r word; [ "$word" = done ] && exit 0; [ -n "$group" ] && kill -9 -"$group"; ' \
           'rm -rf -- "$1"'


class MicroVm(subprocess.Popen):
    """vng, the leader of the VM's process group (virtme-run, qemu), watched: it dies with this process.

    A watchdog process rather than PR_SET_PDEATHSIG: that signal reaches only a direct child, and qemu is
    vng's grandchild.  virtme's temporary files (its initramfs, the command's exit status file) go in a
    directory of the VM's own (TMPDIR), which goes with it.
    """

    def __init__(self, cmd: list[str], env: dict[str, str], temp_dir: Path, **kwargs):
        self.temp_dir = temp_dir
        read_end, self._pipe = os.pipe()
        self._watchdog = subprocess.Popen(["sh", "-c", WATCHDOG, "testbed-vm-watchdog", str(self.temp_dir)],
                                          stdin=read_end, start_new_session=True)
        os.close(read_end)
        super().__init__(cmd, env=dict(env, TMPDIR=str(self.temp_dir)), start_new_session=True, **kwargs)
        os.write(self._pipe, f"{self.pid}\n".encode())

    def release(self) -> None:
        """The VM is stopped: dismiss the watchdog and remove the temporary directory."""
        if self._pipe is not None:
            os.write(self._pipe, b"done\n")
            os.close(self._pipe)
            self._pipe = None
            self._watchdog.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start(argv: list[str], rwdirs: list[Path], interactive: bool = False, cwd: Path | None = None,
          console: bool = False) -> MicroVm:
    """Boot the VM running ``argv`` in ``cwd`` (default: ours); its output is piped unless ``interactive``;
    with ``console``, on the VM's console, joined to our terminal (``command``).

    The VM is its own process group (so it can be killed whole), dies with this process, and is recorded for
    ``testbed clean``.
    """
    for directory in rwdirs:
        directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', SANE_PATH)}")
    quiet = {} if interactive or console else {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE,
                                                "stderr": subprocess.STDOUT}
    temp_dir = Path(tempfile.mkdtemp(prefix="testbed-vm-"))
    vm = MicroVm(command(argv, rwdirs, cwd or Path.cwd(), temp_dir if console else None), env, temp_dir, **quiet)
    cleanup.record([], vm_pid=vm.pid, temp_dir=vm.temp_dir)
    return vm


def stop(vm: MicroVm) -> None:
    """Kill the VM (and everything in it) if it still runs, and drop its watchdog, files and cleanup record."""
    if vm.poll() is None:
        os.killpg(vm.pid, signal.SIGKILL)
        vm.wait()
    vm.release()
    cleanup.record_path().unlink(missing_ok=True)


def describe(reason: str) -> str:
    """The one line that tells a user why and how their run moves into a VM."""
    return f"{reason}; running inside a microVM ({kernel_image().name}, {accel().upper()}, ~20 s to boot)"


def run(argv: list[str], rwdirs: list[Path], reason: str, console: bool = False) -> int:
    """Run ``argv`` in the VM (on its console, joined to our terminal, if ``console``), stream its output,
    return its exit status; SIGTERM or SIGHUP (and Ctrl-C, except on the console, where it is the VM's) stop
    the VM (status 130)."""
    print(f"testbed: {describe(reason)}", flush=True)
    interrupts = InterruptGuard()  # SIGTERM and SIGHUP too: the VM is stopped, not left to its watchdog
    interrupts.install()
    vm = None
    try:
        vm = start(argv, rwdirs, interactive=sys.stdin.isatty() and sys.stdout.isatty(), console=console)
        if vm.stdout is not None:
            relay(vm.stdout, sys.stdout.buffer)
        status = vm.wait()
        return console_status(vm) if console else status
    except KeyboardInterrupt:
        interrupts.restore()  # handled: disarmed before the Interrupt is dropped, or it would be sent again
        return 130
    finally:
        interrupts.restore()  # a second signal now ends this process, and the watchdog the VM
        if vm is not None:
            stop(vm)


def relay(stream, sink) -> None:
    """Copy the VM's output line by line (qemu given a file as stdout reopens it and clobbers its start)."""
    for line in iter(stream.readline, b""):
        sink.write(line)
        sink.flush()


def needed() -> str | None:
    """Why this program must move into the microVM, or None (a capable kernel, or inside the VM already)."""
    return None if inside() else kernel.shortfall()


def run_if_needed(argv: list[str], rwdirs: list[Path]) -> int | None:
    """None where links can be emulated here; else run ``argv`` (this same program, re-invoked) in the
    microVM, say so in one line, and return its status."""
    reason = needed()
    return None if reason is None else run(argv, rwdirs, reason)


def _version_key(name: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.replace("-", ".").split(".")]
