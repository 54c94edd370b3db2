"""Every interrupt of a run reaches the process that built the fabric as a KeyboardInterrupt, so teardown runs.

SIGINT already raises KeyboardInterrupt; SIGTERM and SIGHUP are made to do the same.  Python runs a
signal's handler wherever the main thread happens to be, and when that is an at-fork hook, a ``__del__``
or a weakref callback, the KeyboardInterrupt cannot propagate: Python prints "Exception ignored in ..."
and drops it, and the run goes on as if Ctrl-C never came.  (Seen in CI: Ctrl-C landed in logging's
at-fork hook ``_releaseLock`` while a command was being started, and the run finished with status 0.)
Such a dropped interrupt is signalled to the main thread again a moment later, outside the hook.
"""

import functools
import os
import signal
import sys
import threading

REDELIVERY_DELAY_S = 0.05  # long enough to leave the hook (and the rest of its at-fork chain) first


def _interrupt(owner: int, signum: int, _frame) -> None:
    """SIGTERM/SIGHUP become KeyboardInterrupt in the owner process.

    pyroute2 opens namespace sockets in forked children and ends them with SIGTERM; such a child inherits
    this handler and must simply exit, never unwind into (and run) the parent's teardown.
    """
    if os.getpid() != owner:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def _redeliver_interrupt(usual_hook, unraisable) -> None:
    """``sys.unraisablehook``: a KeyboardInterrupt Python had to drop is sent to the main thread again.

    Not from here: Python would run the handler at once, inside this hook, and drop it again.  A timer
    thread sends a real SIGINT, so a main thread blocked in a system call wakes up too.  Should that one
    land in a hook as well, it comes back here and is sent once more.  Anything else goes to the usual hook.
    """
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        main = threading.main_thread().ident
        threading.Timer(REDELIVERY_DELAY_S, signal.pthread_kill, (main, signal.SIGINT)).start()
    else:
        usual_hook(unraisable)


class InterruptGuard:
    """Installs the handlers and the hook above for as long as a fabric runs, then puts back what was there."""

    def __init__(self) -> None:
        self._saved_handlers: dict = {}
        self._saved_hook = None

    def install(self) -> None:
        owner = os.getpid()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._saved_handlers[sig] = signal.signal(sig, functools.partial(_interrupt, owner))
        self._saved_hook = sys.unraisablehook
        sys.unraisablehook = functools.partial(_redeliver_interrupt, sys.unraisablehook)

    def restore(self) -> None:
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        self._saved_handlers.clear()
        if self._saved_hook is not None:
            sys.unraisablehook, self._saved_hook = self._saved_hook, None
