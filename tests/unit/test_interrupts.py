"""Interrupts reach the fabric's owner as KeyboardInterrupt, even when Python or a library lost one (native).

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
    from testbed.net.interrupts import InterruptGuard

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
    """``script`` in a fresh interpreter that handles Ctrl-C as a terminal's would: a test session started in
    the background of a non-interactive shell (``cmd &``) inherits SIGINT ignored, and Python then installs no
    handler for it, so without the reset these tests failed there and nowhere else."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True,
                          text=True, timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_a_ctrl_c_python_dropped_in_an_at_fork_hook_still_interrupts_the_run():
    unguarded = python(CTRL_C_DURING_A_FORK, "plain")
    assert "KeyboardInterrupt" in unguarded.stderr and unguarded.stdout == "went on\n"  # the drop, reproduced
    guarded = python(CTRL_C_DURING_A_FORK, "guarded")
    assert guarded.stdout.startswith("interrupted after "), guarded.stdout + guarded.stderr
    assert float(guarded.stdout.split()[2]) < 2


# Ctrl-C arrives while library code runs that swallows every exception, as pyroute2's rtnetlink parser does
# once per message (``try: ... except: pass``).
CTRL_C_IN_A_BARE_EXCEPT = """
    import signal, sys, time
    from testbed.net.interrupts import InterruptGuard

    guard = InterruptGuard()
    guard.install()

    def parse():
        try:
            signal.raise_signal(signal.SIGINT)
        except:
            pass

    started = time.monotonic()
    try:
        if sys.argv[1] == "suspended":
            with guard.suspended():
                parse()
        else:
            parse()
        time.sleep(3)
        print("went on")
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - started:.2f} s")
"""


def test_a_ctrl_c_a_library_swallowed_still_interrupts_the_run():
    result = python(CTRL_C_IN_A_BARE_EXCEPT, "armed")
    assert result.stdout.startswith("interrupted after "), result.stdout + result.stderr
    assert float(result.stdout.split()[2]) < 2


def test_a_ctrl_c_caught_on_purpose_while_suspended_is_not_sent_again():
    """Mininet's CLI catches Ctrl-C to stop the command it runs and carries on: Testbed.cli suspends the guard."""
    result = python(CTRL_C_IN_A_BARE_EXCEPT, "suspended")
    assert result.stdout == "went on\n", result.stdout + result.stderr


def test_a_ctrl_c_handled_while_suspended_and_freed_later_is_not_sent_again():
    """The Interrupt Mininet's CLI handled outlived the CLI (a reference cycle the garbage collector frees
    later): freed after the guard was armed again, it was sent again, and the run ended "Interrupt", status 1."""
    result = python("""
        import signal, time
        from testbed.net.interrupts import InterruptGuard

        guard = InterruptGuard()
        guard.install()
        kept = []
        try:
            with guard.suspended():
                try:
                    signal.raise_signal(signal.SIGINT)
                except KeyboardInterrupt as handled:
                    kept.append(handled)
            kept.clear()
            time.sleep(1)
            print("went on")
        except KeyboardInterrupt:
            print("sent again")
    """)
    assert result.stdout == "went on\n", result.stdout + result.stderr


def test_other_dropped_exceptions_are_still_reported_as_usual():
    result = python("""
        from testbed.net.interrupts import InterruptGuard

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
        from testbed.net.interrupts import InterruptGuard

        guard = InterruptGuard()
        guard.install()
        try:
            signal.raise_signal({int(signum)})
            print("not raised")
        except KeyboardInterrupt as interrupt:
            print(interrupt)
        guard.restore()
        print(signal.getsignal({int(signum)}) is signal.SIG_DFL,
              signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    """)
    assert result.stdout.splitlines() == [f"signal {int(signum)}", "True True"], result.stderr
