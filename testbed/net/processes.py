"""How the testbed starts Python: never with the working directory on ``sys.path``.

``python -m module`` puts the directory it is started from first on ``sys.path``, so a ``matplotlib.py`` (or
``numpy.py``) lying where a user runs the testbed would be imported instead of the library, by a process
running as root: it happened with the report's drawing process.  Every Python the testbed starts (the report,
the microVM's inner run, the rank processes, the budget's) therefore runs with ``-P`` (Python 3.11: "don't
prepend a potentially unsafe path"), which keeps everything else as it is: the venv, the environment, the
installed testbed.
"""

import sys


def python_module(module: str, *args: str, options: tuple[str, ...] = ()) -> list[str]:
    """The command line that runs ``module`` (as ``-m`` does) in this interpreter with interpreter ``options``
    (e.g. ``("-X", "faulthandler")``), the working directory off ``sys.path``."""
    return [sys.executable, "-P", *options, "-m", module, *args]
