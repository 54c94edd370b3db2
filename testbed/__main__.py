"""Allow ``python -m testbed`` (the microVM re-runs the CLI this way).

Inside the microVM the first line comes before the CLI's imports: under TCG, with every file read over 9p,
they took over a minute (``testbed.net.microvm``), and a user should see the VM came up.
"""

import sys

from testbed.net import microvm

if microvm.inside():
    print("testbed: the microVM is up; loading the testbed (Python's imports are slow under TCG)", flush=True)

from testbed.cli import main  # noqa: E402 (after the line above, on purpose)

sys.exit(main())
