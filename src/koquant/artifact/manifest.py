"""The ``koquant.json`` manifest: :class:`Manifest`, :class:`ArtifactFile`, :class:`Artifact`, reading (checked) and writing.

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
#: the format of a multi-format export's top manifest: ``parts`` maps each subfolder to the format it holds
BUNDLE = "bundle"
MANIFEST_SCHEMA = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # real manifests are a few hundred KiB


_FILE_KEYS = ("path", "quant", "sha256", "size", "tensor_type_counts", "tensor_types", "fallbacks", "validation", "notes")


@dataclass
class ArtifactFile:
    """One exported file's record under ``files``; ``extra``: keys this koquant does not know (kept as read)."""

    path: str  # relative to the artifact folder
    quant: str
    sha256: str = ""
    size: int = 0
    tensor_types: dict[str, str] = field(default_factory=dict)
    fallbacks: list[dict] = field(default_factory=list)
    validation: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    _keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)  # key order as read

    def to_dict(self) -> dict:
        counts: dict[str, int] = {}
        for t in self.tensor_types.values():
            counts[t] = counts.get(t, 0) + 1
        known = {
            "path": self.path, "quant": self.quant, "sha256": self.sha256, "size": self.size,
            "tensor_type_counts": dict(sorted(counts.items())), "tensor_types": dict(sorted(self.tensor_types.items())),
            "fallbacks": self.fallbacks, "validation": self.validation, "notes": self.notes,
        }
        return _ordered(known, self.extra, self._keys)

    @classmethod
    def from_dict(cls, d: dict) -> "ArtifactFile":
        extra = {k: v for k, v in d.items() if k not in _FILE_KEYS}
        if "tensor_types" not in d and "tensor_type_counts" in d:  # counts alone cannot be derived again
            extra["tensor_type_counts"] = d["tensor_type_counts"]
        return cls(d.get("path"), d.get("quant"), d.get("sha256", ""), d.get("size", 0), dict(d.get("tensor_types", {})),
                   d.get("fallbacks", []), d.get("validation", {}), d.get("notes", []), extra, tuple(d))


def _ordered(known: dict, extra: dict, keys: tuple[str, ...] | None) -> dict:
    """``known`` plus ``extra`` as JSON: a fresh record in ``known``'s order; one read from disk in the order
    it was read (only the keys it had, then any record set since)."""
    if keys is None:
        return {**known, **extra}
    out = {}
    for k in keys:
        if k in extra:
            out[k] = extra[k]
        elif k in known:
            out[k] = known[k]
    for k, v in (*known.items(), *extra.items()):
        if k not in out and k not in keys and not _unset(v):
            out[k] = v
    return out


def _unset(value) -> bool:
    return value is None or (type(value) in (str, int, list, dict) and not value)


_REQUIRED = ("schema", "format", "name", "source", "recipe", "calibration", "evaluation", "chat_template", "tokenizer",
             "generation_config", "tools", "files", "notes")
_SECTIONS = ("onnx", "gptq", "part_of", "folder_files", "inventory", "parts")  # written only when set


@dataclass
class Manifest:
    """``koquant.json``: what was exported, from what, how, and how it validated.

    The top-level records are attributes; the sections inside them (``source``, ``recipe``,
    ``calibration``, ...) are the JSON objects as written. ``onnx`` / ``gptq``: the format's own record;
    ``part_of`` / ``folder_files``: an ONNX precision folder's manifest; ``inventory``: every file's size
    and sha256 (``koquant verify``). ``extra``: top-level keys this koquant does not know, kept as read.
    """

    format: str
    name: str | None = None
    schema: int = MANIFEST_SCHEMA
    source: dict | None = None
    recipe: dict | None = None
    calibration: dict | None = None
    evaluation: dict | None = None
    chat_template: dict | None = None
    tokenizer: dict | None = None
    generation_config: dict | None = None
    tools: dict | None = None
    files: list[ArtifactFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    onnx: dict | None = None
    gptq: dict | None = None
    part_of: str | None = None
    folder_files: dict | None = None
    inventory: dict | None = None
    parts: dict | None = None  # a bundle's {subfolder: format}
    extra: dict = field(default_factory=dict)
    _keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)  # key order as read

    def to_dict(self) -> dict:
        known = {k: getattr(self, k) for k in _REQUIRED}
        known["files"] = [f.to_dict() for f in self.files]
        known.update({k: getattr(self, k) for k in _SECTIONS if getattr(self, k) is not None})
        return _ordered(known, self.extra, self._keys)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        """A manifest as JSON (checked by :func:`check_manifest` first when it comes from disk)."""
        known = {k: d[k] for k in (*_REQUIRED, *_SECTIONS) if k in d}
        known["files"] = [ArtifactFile.from_dict(f) for f in d.get("files", [])]
        known.setdefault("notes", [])
        known.setdefault("schema", None)
        extra = {k: v for k, v in d.items() if k not in _REQUIRED and k not in _SECTIONS}
        return cls(**known, extra=extra, _keys=tuple(d))

    def file(self, path: str) -> ArtifactFile | None:
        """The record of the file at ``path`` (relative to the artifact folder), if listed."""
        return next((f for f in self.files if f.path == path), None)


@dataclass
class Artifact:
    """An artifact folder and its manifest (``record``); ``manifest`` and ``files`` are the JSON view."""

    path: Path
    record: Manifest

    @property
    def manifest(self) -> dict:
        return self.record.to_dict()

    @property
    def files(self) -> list[dict]:
        return [f.to_dict() for f in self.record.files]

    @property
    def format(self) -> str:
        return self.record.format

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Artifact":
        p = Path(path)
        return cls(p, load_manifest(p))


def load_manifest(folder: Path) -> Manifest:
    """The manifest of ``folder``, checked (:func:`read_manifest`) and typed."""
    return Manifest.from_dict(read_manifest(folder))


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
                   "generation_config", "onnx", "gptq", "folder_files", "parts")


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
    for folder, fmt in (manifest.get("parts") or {}).items():
        safe_relative(folder, where)
        if not isinstance(fmt, str):
            raise ArtifactError(f"{bad}: parts[{folder!r}] is not a format name", hint="re-run the export")
    if not isinstance(manifest.get("notes", []), list):
        raise ArtifactError(f"{bad}: 'notes' is not a list", hint="re-run the export")


def write_manifest(folder: Path, manifest: Manifest | dict) -> Path:
    p = folder / MANIFEST
    data = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    p.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    return p
