"""``python -m loadgen.servers.sim``: run the simulated server in the foreground."""

import contextlib
import sys

from loadgen.servers.sim.server import main

with contextlib.suppress(KeyboardInterrupt):
    sys.exit(main())
