"""The ``koquant.json`` manifest: :class:`Artifact`, :class:`ArtifactFile`, reading (checked) and writing.

An artifact folder holds the exported files plus ``koquant.json``; :func:`read_manifest` refuses a
manifest that is too large, not JSON, or whose fields have the wrong types, before any reader indexes
into it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import ArtifactError

MANIFEST = "koquant.json"
MANIFEST_SCHEMA = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # real manifests are a few hundred KiB


@dataclass
class ArtifactFile:
    path: str  # relative to the artifact folder
    quant: str
    sha256: str = ""
    size: int = 0
    tensor_types: dict[str, str] = field(default_factory=dict)
    fallbacks: list[dict] = field(default_factory=list)
    validation: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        counts: dict[str, int] = {}
        for t in self.tensor_types.values():
            counts[t] = counts.get(t, 0) + 1
        return {
            "path": self.path, "quant": self.quant, "sha256": self.sha256, "size": self.size,
            "tensor_type_counts": dict(sorted(counts.items())), "tensor_types": dict(sorted(self.tensor_types.items())),
            "fallbacks": self.fallbacks, "validation": self.validation, "notes": self.notes,
        }


@dataclass
class Artifact:
    path: Path
    manifest: dict

    @property
    def files(self) -> list[dict]:
        return self.manifest.get("files", [])

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Artifact":
        p = Path(path)
        return cls(p, read_manifest(p))


def read_manifest(folder: Path) -> dict:
    """The manifest of ``folder``, checked: bounded size, JSON, and the types every reader relies on."""
    m = Path(folder) / MANIFEST
    if not m.is_file():
        raise ArtifactError(f"{folder} is not a koquant artifact (no {MANIFEST})", hint="pass the folder koquant export wrote")
    size = m.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{m} is {size} bytes, far larger than any koquant manifest", hint="re-run the export")
    try:
        manifest = json.loads(m.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{m} is not valid JSON: {e}", hint="re-run the export") from None
    except RecursionError:
        raise ArtifactError(f"{m} is not valid JSON: nested too deeply", hint="re-run the export") from None
    check_manifest(manifest, m)
    return manifest


_HEX64 = re.compile(r"[0-9a-f]{64}")
_OPTIONAL_DICTS = ("source", "recipe", "calibration", "evaluation", "chat_template", "tokenizer", "tools",
                   "generation_config", "onnx", "gptq", "folder_files")


def safe_relative(path, where) -> PurePosixPath:
    """A manifest path: relative, inside the artifact (no ``..``, no absolute path, no backslash)."""
    if not isinstance(path, str) or not path or "\\" in path or "\0" in path:
        raise ArtifactError(f"{where} lists an invalid path {path!r}", hint="re-run the export")
    p = PurePosixPath(path)
    if p.is_absolute() or not p.parts or ".." in p.parts or str(p) != path.rstrip("/"):
        raise ArtifactError(f"{where} lists the path {path!r}, which leaves the artifact folder",
                            hint="do not use this artifact; re-run the export")
    return p


def check_manifest(manifest, where) -> None:
    """Refuse a manifest whose fields have the wrong types, before any reader indexes into it."""
    bad = f"{where} is not a koquant manifest"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format"), str):
        raise ArtifactError(bad, hint="re-run the export")
    for key in _OPTIONAL_DICTS:
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise ArtifactError(f"{bad}: {key!r} is {type(manifest[key]).__name__}, not an object", hint="re-run the export")
    files = manifest.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise ArtifactError(f"{bad}: 'files' is not a list of objects", hint="re-run the export")
    for f in files:
        safe_relative(f.get("path"), where)
        for key, kind in (("quant", str), ("sha256", str), ("size", int), ("validation", dict), ("notes", list),
                          ("fallbacks", list), ("tensor_types", dict)):
            if key in f and (not isinstance(f[key], kind) or isinstance(f[key], bool)):
                raise ArtifactError(f"{bad}: {key!r} of {f['path']} is {type(f[key]).__name__}", hint="re-run the export")
    for key in ("template", "sha256"):
        value = (manifest.get("chat_template") or {}).get(key)
        if value is not None and not isinstance(value, str):
            raise ArtifactError(f"{bad}: chat_template.{key} is not a string", hint="re-run the export")
    folder = (manifest.get("tokenizer") or {}).get("folder")
    if folder is not None:
        safe_relative(folder, where)
    inventory = manifest.get("inventory")
    if inventory is not None:
        if not isinstance(inventory, dict):
            raise ArtifactError(f"{bad}: 'inventory' is not an object", hint="re-run the export")
        for path, rec in inventory.items():
            safe_relative(path, where)
            if (not isinstance(rec, dict) or not isinstance(rec.get("size"), int) or isinstance(rec.get("size"), bool)
                    or rec["size"] < 0 or not isinstance(rec.get("sha256"), str) or not _HEX64.fullmatch(rec["sha256"])):
                raise ArtifactError(f"{bad}: the inventory entry of {path} is not {{size, sha256}}", hint="re-run the export")
    for name, digest in (manifest.get("folder_files") or {}).items():
        safe_relative(name, where)
        if not isinstance(digest, str):
            raise ArtifactError(f"{bad}: folder_files[{name!r}] is not a hash", hint="re-run the export")
    if not isinstance(manifest.get("notes", []), list):
        raise ArtifactError(f"{bad}: 'notes' is not a list", hint="re-run the export")


def write_manifest(folder: Path, manifest: dict) -> Path:
    p = folder / MANIFEST
    p.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    return p
