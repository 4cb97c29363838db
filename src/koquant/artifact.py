"""``Artifact``: exported files plus the ``koquant.json`` manifest, written atomically.

Everything is written under a temporary folder beside the output and renamed into place
only after validation passed; a failed or killed export leaves either nothing or the
previous complete artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OutputError

MANIFEST = "koquant.json"
MANIFEST_SCHEMA = 1


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
        m = p / MANIFEST
        if not m.is_file():
            raise OutputError(f"{p} is not a koquant artifact (no {MANIFEST})", hint="pass the folder koquant export wrote")
        try:
            manifest = json.loads(m.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise OutputError(f"{m} is not valid JSON: {e}", hint="re-run the export") from None
        if not isinstance(manifest, dict) or "format" not in manifest:
            raise OutputError(f"{m} is not a koquant manifest", hint="re-run the export")
        return cls(p, manifest)


def write_manifest(folder: Path, manifest: dict) -> Path:
    p = folder / MANIFEST
    p.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    return p


def check_output_location(out: Path, force: bool = False) -> None:
    """Fail early, before minutes of work, if ``out`` cannot be written."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is a file", hint="choose a folder path with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file() and not force:
        raise OutputError(
            f"output folder {out} is not empty and is not a koquant artifact; refusing to overwrite it",
            hint="choose a new folder with -o, or pass --force to replace it",
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output's parent folder {parent}: {e.strerror}",
                          hint="choose a writable location with -o") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output location {parent} is not writable", hint="choose a writable folder with -o")


@contextmanager
def staged_output(out: Path, force: bool = False):
    """Yield a temporary folder beside ``out``; on success swap it into place, on failure remove it."""
    out = Path(out)
    check_output_location(out, force)
    tmp = out.parent / f".{out.name}.koquant-tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
    except OSError as e:
        raise OutputError(f"cannot write in {out.parent}: {e.strerror}", hint="choose a writable folder with -o") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.koquant-old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
