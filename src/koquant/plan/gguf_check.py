"""Compare a plan with a real GGUF file: per-tensor types and the file size.

This is what the accuracy tests and ``benchmarks/plan_accuracy.py`` use: the acceptance bar
is a file size within 2 % or 64 KiB (whichever is larger) and, for llama.cpp's own mixes,
the same type for every tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from koquant.errors import CheckpointError
from koquant.exporters.gguf.reader import read_gguf
from koquant.plan.gguf_size import GGUFPlan, plan_gguf
from koquant.quant_recipes.gguf import FILE_TYPES

__all__ = ["GGUFComparison", "compare_gguf", "SIZE_TOLERANCE", "SIZE_FLOOR"]

SIZE_TOLERANCE = 0.02
SIZE_FLOOR = 64 * 1024


@dataclass(frozen=True)
class GGUFComparison:
    path: str
    ftype: str
    planned_bytes: int
    real_bytes: int
    mismatches: tuple[tuple[str, str, str], ...]  # (tensor, planned type, real type)
    missing: tuple[str, ...]  # planned but not in the file
    extra: tuple[str, ...]  # in the file but not planned
    plan: GGUFPlan

    @property
    def error_bytes(self) -> int:
        return self.planned_bytes - self.real_bytes

    @property
    def relative_error(self) -> float:
        return self.error_bytes / self.real_bytes if self.real_bytes else float("inf")

    def size_ok(self, tolerance: float = SIZE_TOLERANCE, floor: int = SIZE_FLOOR) -> bool:
        return abs(self.error_bytes) <= max(tolerance * self.real_bytes, floor)

    @property
    def types_ok(self) -> bool:
        return not (self.mismatches or self.missing or self.extra)


def _ftype_of(meta: dict, path: str) -> str:
    ft = meta.get("general.file_type")
    for f in FILE_TYPES.values():
        if f.id == ft:
            return f.name
    raise CheckpointError(
        f"{path}: general.file_type {ft!r} is not a file type koquant plans",
        hint="pass ftype= explicitly",
    )


def compare_gguf(source, path: str | os.PathLike, *, ftype: str | None = None, imatrix: bool = False) -> GGUFComparison:
    """Plan ``source`` (anything :func:`koquant.plan.plan` takes) as the GGUF at ``path`` and diff them."""
    from koquant.plan.planner import resolve_source

    spec = resolve_source(source)
    real = read_gguf(path)
    ft = ftype or _ftype_of(real.metadata, str(path))
    p = plan_gguf(spec, ft, imatrix=imatrix)
    planned = p.types()
    actual = {t.name: t.type for t in real.tensors}
    mism = tuple((n, planned[n], actual[n]) for n in planned if n in actual and planned[n] != actual[n])
    return GGUFComparison(
        str(path),
        p.ftype,
        p.file_bytes,
        real.file_size,
        mism,
        tuple(n for n in planned if n not in actual),
        tuple(n for n in actual if n not in planned),
        p,
    )
