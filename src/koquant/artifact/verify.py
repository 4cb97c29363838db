"""``koquant verify ARTIFACT``: every file of an artifact against the sizes and hashes in its manifest.

An export records the size and sha256 of every file it wrote (``inventory`` in ``koquant.json``:
the GGUF files, ``imatrix.gguf``, the ``tokenizer/`` folder, each ONNX precision folder with its
own manifest and card, the GPTQ ``model.safetensors`` and configs, ``README.md``). Verification
reports files that changed, went missing or were added, and never follows a symlink or opens
anything but a regular file (a file replaced by a link to ``/dev/zero`` is reported, not read).
The manifest itself is the root of trust: its sha256 is printed so it can be compared with the
one the publisher gives.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError
from ..source.checkpoint import sha256_file
from .manifest import MANIFEST, Manifest, load_manifest


@dataclass
class Finding:
    kind: str  # "changed", "missing", "extra"
    path: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "detail": self.detail}


@dataclass
class Verification:
    artifact: Path
    manifest_sha256: str
    files: int = 0  # files checked against the inventory
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.findings

    def count(self, kind: str) -> int:
        return sum(f.kind == kind for f in self.findings)

    def to_dict(self) -> dict:
        return {"artifact": str(self.artifact), "intact": self.intact, "manifest_sha256": self.manifest_sha256,
                "files": self.files, "bytes": self.bytes, "findings": [f.to_dict() for f in self.findings],
                "notes": self.notes}


def _through_link(root: Path, rel: str) -> str | None:
    """The first component of ``rel`` (below ``root``) that is a symlink, if any."""
    here = root
    for part in Path(rel).parts:
        here = here / part
        try:
            if stat.S_ISLNK(os.lstat(here).st_mode):
                return str(here.relative_to(root).as_posix())
        except FileNotFoundError:
            return None
    return None


def verify_artifact(path: str | os.PathLike) -> Verification:
    """Check ``path`` (an artifact folder, or its ``koquant.json``) against its manifest's inventory."""
    root = Path(path)
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    if not root.is_dir():
        raise ArtifactError(f"{root} is not an artifact folder", hint="pass the folder koquant export wrote (with koquant.json)")
    manifest = load_manifest(root)
    inv = manifest.inventory
    if inv is None and isinstance(manifest.part_of, str) and (root.parent / MANIFEST).is_file():
        whole = verify_artifact(root.parent)  # an ONNX precision folder: its files are in the artifact's inventory
        whole.notes.insert(0, f"{root.name}/ is part of the artifact {root.parent}; the whole artifact was verified")
        return whole
    if inv is None and isinstance(manifest.folder_files, dict):
        # an ONNX precision folder on its own (copied or uploaded without its artifact): its manifest
        # records the hash of every file the runtime reads; its own card is not covered
        inv = {name: {"sha256": digest, "size": None} for name, digest in manifest.folder_files.items()}
        note = f"{root} is one precision folder of an artifact; checked against its folder_files (README.md is not covered)"
        result = _check(root, inv, skip={MANIFEST, "README.md"})
        result.notes.append(note)
        return result
    if inv is None:
        raise ArtifactError(f"{root / MANIFEST} has no file inventory (written by an older koquant), so its files "
                            "cannot all be checked", hint="export again with this version of koquant")
    result = _check(root, inv, skip={MANIFEST})
    _cross_check(root, manifest, inv, result)
    return result


def _check(root: Path, inv: dict, skip: set[str]) -> Verification:
    result = Verification(root, sha256_file(root / MANIFEST))
    for rel, rec in inv.items():
        link = _through_link(root, rel)
        if link is not None:
            result.findings.append(Finding("changed", rel, f"{link} is now a symbolic link"))
            continue
        p = root / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            result.findings.append(Finding("missing", rel))
            continue
        except NotADirectoryError:
            result.findings.append(Finding("missing", rel, "a folder on its path is now a file"))
            continue
        if not stat.S_ISREG(st.st_mode):
            result.findings.append(Finding("changed", rel, "no longer a regular file"))
            continue
        if rec["size"] is not None and st.st_size != rec["size"]:
            result.findings.append(Finding("changed", rel, f"{st.st_size} bytes, recorded {rec['size']}"))
            continue
        if sha256_file(p) != rec["sha256"]:
            result.findings.append(Finding("changed", rel, "same size, different sha256"))
            continue
        result.files += 1
        result.bytes += st.st_size
    for dirpath, dirnames, filenames in os.walk(root):  # never follows symlinked folders
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                rel = (here / name).relative_to(root).as_posix()
                if not any(k == rel or k.startswith(rel + "/") for k in inv):
                    result.findings.append(Finding("extra", rel, "a symbolic link not in koquant.json"))
        for name in sorted(filenames):
            rel = (here / name).relative_to(root).as_posix()
            if rel not in skip and rel not in inv:
                result.findings.append(Finding("extra", rel, "not in koquant.json"))
    return result


def _cross_check(root: Path, manifest: Manifest, inv: dict, result: Verification) -> None:
    """The per-file records must agree with the inventory (a hand-edited manifest shows here), and so
    must the ``folder_files`` of each ONNX precision folder's own manifest."""
    for f in manifest.files:
        rec = inv.get(f.path)
        if rec is None:
            result.findings.append(Finding("missing", f.path, "listed under files but not in the inventory"))
        elif f.sha256 and f.sha256 != rec["sha256"]:
            result.findings.append(Finding("changed", f.path, "files[] and inventory disagree on its sha256"))
    cal = manifest.calibration or {}
    if cal.get("file") and cal.get("imatrix_sha256"):
        rec = inv.get(cal["file"]) if isinstance(cal["file"], str) else None
        if rec is None or rec["sha256"] != cal["imatrix_sha256"]:
            result.findings.append(Finding("changed", str(cal["file"]), "calibration record and inventory disagree"))
    if any(f.kind != "extra" for f in result.findings):
        return  # a changed sub-manifest is already reported; do not parse it
    for rel in inv:
        folder = str(Path(rel).parent.as_posix())
        if Path(rel).name != MANIFEST or folder == ".":
            continue
        try:
            sub = load_manifest(root / folder)
        except ArtifactError as e:
            result.findings.append(Finding("changed", rel, e.message))
            continue
        for name, digest in (sub.folder_files or {}).items():
            rec = inv.get(f"{folder}/{name}")
            if rec is None or rec["sha256"] != digest:
                result.findings.append(Finding("changed", f"{folder}/{name}",
                                               f"{rel} (folder_files) and the inventory disagree"))
