"""The ``koquant`` command line: :mod:`~koquant.cli.main` (parser, supervisor, errors), one module per command.

Nothing here imports a heavy backend at import time: ``koquant --help`` and ``koquant plan`` import no torch.
"""
