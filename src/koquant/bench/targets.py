"""What is benched: the source checkpoint and each export, resolved from paths before anything runs.

An ARTIFACT argument is whatever ``koquant.load`` accepts: an artifact folder koquant wrote (each
file or variant it lists becomes one entry: ``gguf:Q4_K_M``, ``onnx:int4``, ...), one ``.gguf``
file, an ONNX variant folder, a GPTQ folder or another Hugging Face folder. Sizes come from the
files: ``file_bytes`` is what a user ships (the weight files), ``bytes_per_token`` the weights a
decode step reads (every weight once, except the input embedding table, of which one row is read,
unless it doubles as the output head).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KoquantError
from .settings import BenchError


@dataclass
class BenchTarget:
    name: str  # e.g. "gguf:Q4_K_M"; the source is "source"
    format: str  # hf | gguf | onnx | gptq
    path: str  # what koquant.load is given
    quant: str | None  # passed as koquant.load(..., quant=)
    model: str  # the resolved model file or folder
    file_bytes: int = 0
    bytes_per_token: int = 0
    notes: list[str] = field(default_factory=list)


def source_target(ckpt, source_dir: Path, dtype: str) -> BenchTarget:
    """The source checkpoint (an opened :class:`~koquant.source.checkpoint.Checkpoint` of ``source_dir``) as a
    target."""
    t = BenchTarget("source", "hf", str(source_dir), None, str(source_dir))
    t.file_bytes = sum(p.stat().st_size for p in ckpt.weight_files)
    from ..runtime.backends.hf import checkpoint_bytes_per_token

    t.bytes_per_token = checkpoint_bytes_per_token(ckpt, dtype)
    return t


def expand(paths: list[str | os.PathLike]) -> tuple[list[BenchTarget], list[dict]]:
    """Every path checked before any runtime starts: one entry per runnable export, named uniquely, and the
    paths that hold no model (``{"path", "reason"}``: an importance matrix a shell glob brought along),
    which are skipped. A path that cannot be benched (missing, unreadable, truncated, of no format koquant
    runs) stops the bench here, named, before anything is measured."""
    from ..runtime.loader import resolve

    if not paths:
        raise BenchError("no export to bench", hint="koquant bench SOURCE_DIR ARTIFACT... (e.g. an export folder)")
    targets: list[BenchTarget] = []
    skipped: list[dict] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise BenchError(f"artifact {p} does not exist",
                             hint="pass an export folder, a .gguf file, an ONNX or GPTQ folder koquant wrote")
        for quant in _variants(p):
            target = resolve(p, quant)  # an export of a format koquant has no runtime for stops here
            _check_runtime(target.format, p)
            model = Path(target.model)
            try:
                why = _not_a_model(target.format, model)
                if why is not None:
                    skipped.append({"path": str(p), "reason": why})
                    continue
                name = f"{target.format}:{target.quant or model.name}"
                t = BenchTarget(name, target.format, str(p), quant, str(model), notes=list(target.notes))
                t.file_bytes = file_bytes(t.format, model)
                t.bytes_per_token = bytes_per_token(t.format, model)
            except KoquantError as e:  # a damaged file: refused before any measurement, with the way on
                raise BenchError(e.message,
                                 hint=f"{e.hint or 'export it again'}; or bench without {model.name}") from None
            targets.append(t)
    if not targets:
        raise BenchError("nothing to bench: " + "; ".join(f"{s['path']} is {s['reason']}" for s in skipped),
                         hint="pass the model files or the export folder koquant wrote")
    _unique_names(targets)
    return targets, skipped


def _check_runtime(fmt: str, where: Path) -> None:
    """The format's runtime modules are installed (the missing ones named, with the extra to install)."""
    import importlib.util

    from ..errors import missing_extra
    from ..exporters import format_of

    entry = format_of(fmt)
    missing = [m for m in entry.packages if importlib.util.find_spec(m) is None]
    if missing and entry.extra is not None:
        raise missing_extra(f"benching {where} needs {' and '.join(missing)}, which is not installed", entry.extra)


def _variants(p: Path) -> list[str | None]:
    """The quants of an artifact folder listing several files or variants; [None] for anything else."""
    from ..artifact import MANIFEST, Artifact

    if p.is_dir() and (p / MANIFEST).is_file():
        files = [f for f in Artifact.open(p).record.files if f.quant]
        if len(files) > 1:
            return [str(f.quant) for f in files]
    return [None]


def _unique_names(targets: list[BenchTarget]) -> None:
    seen: dict[str, int] = {}
    for t in targets:
        seen[t.name] = seen.get(t.name, 0) + 1
    for t in targets:
        if seen[t.name] > 1:  # the same quant from two artifacts: say which folder
            t.name = f"{t.name} ({Path(t.path).resolve().name})"
    names = [t.name for t in targets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BenchError(f"{', '.join(dupes)} given more than once", hint="pass each export once")


# ---------------------------------------------------------------------------- read from the files
def _not_a_model(fmt: str, model: Path) -> str | None:
    from ..runtime.loader import backend_class

    return backend_class(fmt).not_a_model(model)


def file_bytes(fmt: str, model: Path) -> int:
    """Bytes of the weight files a user ships for this export."""
    from ..runtime.loader import backend_class

    return sum(p.stat().st_size for p in backend_class(fmt).weight_files(model))


def bytes_per_token(fmt: str, model: Path) -> int:
    """Weight bytes one decode step reads: all weights but the input embedding table (unless tied)."""
    from ..runtime.loader import backend_class

    return backend_class(fmt).bytes_per_token(model)
