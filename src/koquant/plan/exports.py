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

__all__ = ["Export", "active_bytes"]


def active_bytes(weight_bytes: int, routed_bytes: int, share: float) -> int | None:
    """The weight bytes one token reads when ``routed_bytes`` of ``weight_bytes`` are routed experts of
    which it uses ``share``; None for a dense model."""
    if not routed_bytes:
        return None
    return weight_bytes - routed_bytes + round(routed_bytes * share)


@dataclass(frozen=True)
class Export:
    """One planned export. ``weight_bytes`` is what the runtime keeps resident for weights (every expert
    of a mixture of experts). ``active_weight_bytes``: the weight bytes one token reads, only the experts
    it is routed to (None: all of them, a dense model), what a bandwidth bound of decode speed uses.

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
    active_weight_bytes: int | None = None

    @property
    def key(self) -> str:
        return f"{self.format}:{self.variant}"

    @property
    def active_bytes(self) -> int:
        """Weight bytes one token reads (all of them for a dense model)."""
        return self.weight_bytes if self.active_weight_bytes is None else self.active_weight_bytes

    def to_dict(self, *, tensors: bool = False) -> dict:
        d = {
            "key": self.key,
            "format": self.format,
            "variant": self.variant,
            "runtime": self.runtime,
            "file_bytes": self.file_bytes,
            "weight_bytes": self.weight_bytes,
            "active_weight_bytes": self.active_bytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "notes": list(self.notes),
            "available": self.available,
        }
        d.update(self.detail.export_fields(tensors=tensors))
        return d
