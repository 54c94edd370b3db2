"""Allow ``python -m testbed`` (the microVM re-runs the CLI this way)."""

import sys

from testbed.cli import main

sys.exit(main())
