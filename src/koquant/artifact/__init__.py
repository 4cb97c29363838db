"""What an export leaves behind: the artifact folder and its ``koquant.json`` manifest.

- :mod:`~koquant.artifact.manifest`: :class:`Manifest` (typed), :class:`ArtifactFile`, :class:`Artifact`,
  reading (checked) and writing the manifest;
- :mod:`~koquant.artifact.inventory`: the size and sha256 of every file, recorded in the manifest;
- :mod:`~koquant.artifact.atomic`: the output lock, the staged folder swapped into place, recovery
  after a killed export, disk-full detection;
- :mod:`~koquant.artifact.verify`: ``koquant verify``, a folder checked against its inventory;
- :mod:`~koquant.artifact.modelcard`: the ``README.md`` model card.
"""

from __future__ import annotations

from .atomic import check_output_location, disk_full, output_lock, publish, recover, staged_output
from .inventory import inventory
from .manifest import (BUNDLE, MANIFEST, MANIFEST_SCHEMA, Artifact, ArtifactFile, Manifest, check_manifest, load_manifest,
                       read_manifest, safe_relative, write_manifest)

__all__ = ["BUNDLE", "MANIFEST", "MANIFEST_SCHEMA", "Artifact", "ArtifactFile", "Manifest", "check_manifest",
           "check_output_location", "disk_full", "inventory", "load_manifest", "output_lock", "publish", "read_manifest", "recover", "safe_relative",
           "staged_output", "write_manifest"]
