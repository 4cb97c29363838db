"""``koquant matrix``: a release matrix (models x recipes) of exports, run locally or on a Ray cluster.

``spec`` reads SPEC.toml into cells, ``cell`` runs one cell in a process of its own, ``run`` the
executors (local, Ray) and resuming, ``summary`` matrix.json / matrix.md and the plots.
"""

from __future__ import annotations

from .run import EXECUTORS, run_matrix
from .spec import Cell, Spec, load_spec, parse_spec

__all__ = ["EXECUTORS", "Cell", "Spec", "load_spec", "parse_spec", "run_matrix"]
