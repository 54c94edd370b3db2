"""Interrupts reach the fabric's owner as KeyboardInterrupt, even when Python had to drop one (native).

Each case runs in its own interpreter: at-fork hooks cannot be unregistered, and signals are per process.
"""

import signal
import subprocess
import sys
import textwrap

import pytest

# Ctrl-C arrives while an at-fork hook runs, as it did in CI inside logging's _releaseLock: Python prints
# "Exception ignored in ..." and drops the KeyboardInterrupt.  The main code then works on for 3 s.
CTRL_C_DURING_A_FORK = """
    import os, signal, sys, time
    from testbed.interrupts import InterruptGuard

    guard = InterruptGuard()
    if sys.argv[1] == "guarded":
        guard.install()
    os.register_at_fork(after_in_parent=lambda: signal.raise_signal(signal.SIGINT))
    started = time.monotonic()
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(3)
        print("went on")
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - started:.2f} s")
"""


def python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True,
                          text=True, timeout=60)


def test_a_ctrl_c_python_dropped_in_an_at_fork_hook_still_interrupts_the_run():
    unguarded = python(CTRL_C_DURING_A_FORK, "plain")
    assert "KeyboardInterrupt" in unguarded.stderr and unguarded.stdout == "went on\n"  # the drop, reproduced
    guarded = python(CTRL_C_DURING_A_FORK, "guarded")
    assert guarded.stdout.startswith("interrupted after "), guarded.stdout + guarded.stderr
    assert float(guarded.stdout.split()[2]) < 2


def test_other_dropped_exceptions_are_still_reported_as_usual():
    result = python("""
        from testbed.interrupts import InterruptGuard

        class Broken:
            def __del__(self):
                raise ValueError("broken finaliser")

        InterruptGuard().install()
        Broken()
        print("done")
    """)
    assert result.stdout == "done\n" and "Exception ignored in" in result.stderr
    assert "ValueError: broken finaliser" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_raise_keyboard_interrupt_until_the_guard_is_restored(signum):
    result = python(f"""
        import signal, sys
        from testbed.interrupts import InterruptGuard

        guard = InterruptGuard()
        usual_hook = sys.unraisablehook
        guard.install()
        try:
            signal.raise_signal({int(signum)})
            print("not raised")
        except KeyboardInterrupt as interrupt:
            print(interrupt)
        guard.restore()
        print(sys.unraisablehook is usual_hook, signal.getsignal({int(signum)}) is signal.SIG_DFL)
    """)
    assert result.stdout.splitlines() == [f"signal {int(signum)}", "True True"], result.stderr
