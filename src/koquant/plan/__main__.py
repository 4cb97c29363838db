"""``python -m koquant.plan``: the ``koquant plan`` command, standalone."""

import sys

from koquant.plan.cli import run

sys.exit(run())
