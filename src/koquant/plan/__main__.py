"""``python -m koquant.plan``: the ``koquant plan`` command, standalone."""

import sys

from koquant.cli.plan import run

sys.exit(run())
