"""Every interrupt of a run reaches the process that built the fabric as a KeyboardInterrupt, so teardown runs.

While a fabric runs, SIGINT, SIGTERM and SIGHUP raise an ``Interrupt`` (a KeyboardInterrupt).  Python runs
a signal's handler wherever the main thread happens to be, and there the exception can be lost:

- in an at-fork hook, a ``__del__`` or a weakref callback it cannot propagate, so Python prints "Exception
  ignored in ..." and drops it (seen in CI: Ctrl-C landed in logging's at-fork hooks ``_acquireLock`` and
  ``_releaseLock`` while pyroute2 forked to open a namespace socket);
- in library code that swallows everything: pyroute2's rtnetlink parser wraps a lookup per message in a bare
  ``except: pass`` (``netlink/rtnl/marshal.py``), which runs thousands of times while netlink is read.

Either way the run went on as if Ctrl-C never came and ended with status 0.  An ``Interrupt`` that is
destroyed while the guard is armed -- dropped or swallowed, never having reached the teardown that disarms
the guard -- therefore has a new SIGINT sent to the main thread a moment later, from a timer thread (from the
finaliser itself Python would run the handler at once, inside it, and lose it again).  Should that one be
lost too, it is sent again, until one gets through.
"""

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REDELIVERY_DELAY_S = 0.05  # long enough to leave the hook (and the rest of its at-fork chain) first


class Interrupt(KeyboardInterrupt):
    """The KeyboardInterrupt a guarded signal raises; if it is lost, its finaliser has it sent again."""

    def __init__(self, guard: "InterruptGuard", signum: int) -> None:
        super().__init__(f"signal {signum}")
        self._guard = guard
        self._guarded = guard.armed  # raised while suspended (Mininet's CLI handles it): never sent again

    def __del__(self) -> None:
        if self._guarded:
            self._guard.lost()


class InterruptGuard:
    """Installs the handlers for as long as a fabric runs (``install`` .. ``restore``)."""

    def __init__(self) -> None:
        self._saved_handlers: dict = {}
        self._owner: int | None = None
        self._armed = False

    def install(self) -> None:
        self._owner = os.getpid()
        for sig in SIGNALS:
            self._saved_handlers[sig] = signal.signal(sig, self._interrupt)
        self._armed = True

    def restore(self) -> None:
        """Teardown has begun (or the fabric is gone): interrupts are Python's own again."""
        self._armed = False
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        self._saved_handlers.clear()

    @property
    def armed(self) -> bool:
        return self._armed

    @contextlib.contextmanager
    def suspended(self):
        """For code that catches Ctrl-C on purpose (Mininet's CLI stops the command it runs): an interrupt it
        handled is not sent again, even when it is freed only after the suspension ended."""
        self._armed = False
        try:
            yield
        finally:
            self._armed = bool(self._saved_handlers)

    def lost(self) -> None:
        """An ``Interrupt`` died without reaching the teardown: send SIGINT to the main thread again."""
        if self._armed and os.getpid() == self._owner:
            main = threading.main_thread().ident
            threading.Timer(REDELIVERY_DELAY_S, signal.pthread_kill, (main, signal.SIGINT)).start()

    def _interrupt(self, signum: int, _frame) -> None:
        """In the owner, raise ``Interrupt``.  pyroute2 opens namespace sockets in forked children and ends them
        with SIGTERM; such a child inherits this handler and must simply exit, never unwind into (and run)
        the parent's teardown."""
        if os.getpid() != self._owner:
            os._exit(128 + signum)
        raise Interrupt(self, signum)
