"""One planned export (:class:`Export`): the row every format's sizer returns and ``koquant plan`` prints.

The format registry (:mod:`koquant.exporters`) names each format's sizer, a
``function(spec, quant, *, imatrix) -> Export`` in its plan module (``gguf_size.gguf_export``,
``other_formats.gptq_export`` / ``onnx_export``); the planner iterates the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from koquant.plan.gguf_size import GGUFPlan
    from koquant.plan.other_formats import FormatPlan

__all__ = ["Export"]


@dataclass(frozen=True)
class Export:
    """One planned export. ``weight_bytes`` is what the runtime keeps resident for weights.

    ``available``: ``koquant export`` can make it for this architecture (its notes say why not).
    """

    format: str
    variant: str
    runtime: str
    file_bytes: int
    weight_bytes: int
    bits_per_weight: float
    notes: tuple[str, ...]
    detail: GGUFPlan | FormatPlan
    available: bool = True

    @property
    def key(self) -> str:
        return f"{self.format}:{self.variant}"

    def to_dict(self, *, tensors: bool = False) -> dict:
        d = {
            "key": self.key,
            "format": self.format,
            "variant": self.variant,
            "runtime": self.runtime,
            "file_bytes": self.file_bytes,
            "weight_bytes": self.weight_bytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "notes": list(self.notes),
            "available": self.available,
        }
        d.update(self.detail.export_fields(tensors=tensors))
        return d
