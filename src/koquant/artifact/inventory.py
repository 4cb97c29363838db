"""The artifact's inventory: the size and sha256 of every file, recorded in the manifest.

``koquant verify`` (:mod:`koquant.artifact.verify`) checks a folder against it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .manifest import MANIFEST


def inventory(folder: Path, known: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``folder`` except its own manifest.

    ``known``: sha256 already computed for some relative paths (the exported files), not read again.
    ``skip``: top-level folders left out (scratch space removed before publishing)."""
    known = known or {}
    from ..source.checkpoint import sha256_file

    folder = Path(folder)
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        if Path(dirpath) == folder:
            dirnames[:] = [d for d in dirnames if d not in skip]
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(folder).as_posix()
            if rel == MANIFEST:
                continue
            out[rel] = {"size": p.stat().st_size, "sha256": known.get(rel) or sha256_file(p)}
    return dict(sorted(out.items()))
