"""ONNX quant types as data: the precisions of onnxruntime-genai's model builder, one row each.

The name is the builder's ``-p`` precision, the export's ``--quant``, the artifact's folder and quant,
the plan's ``onnx:int4`` and the bench entry. ``int8`` and ``int4`` store every linear weight (the
head included) as MatMulNBits blocks; ``fp32`` keeps plain float weights. ``fp16`` is a precision
the builder knows but koquant does not make: ``not_on_cpu`` says why, and neither export nor plan
offers it.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import thresholds as th
from .thresholds import Thresholds

__all__ = ["OnnxPrecision", "PRECISIONS", "EXPORTABLE", "DEFAULT"]


@dataclass(frozen=True)
class OnnxPrecision:
    name: str
    weight_bits: int
    matmulnbits: bool  # linear weights as MatMulNBits blocks (block size and scales: the export's options)
    thresholds: Thresholds | None  # None: koquant never makes it, so the gate never judges it
    not_on_cpu: str | None = None  # why koquant refuses it on the CPU execution provider

    @property
    def exportable(self) -> bool:
        return self.not_on_cpu is None


PRECISIONS: dict[str, OnnxPrecision] = {p.name: p for p in (
    OnnxPrecision("fp32", 32, False, th.FLOAT32),
    OnnxPrecision("fp16", 16, False, None,
                  "onnxruntime-genai's builder makes fp16 graphs for GPU execution providers (CUDA, DML); on the CPU "
                  "provider its generator fails at the first decode step (onnxruntime-genai 0.18.0)"),
    OnnxPrecision("int8", 8, True, th.BITS8),
    OnnxPrecision("int4", 4, True, th.BITS4),
)}
EXPORTABLE = tuple(name for name, p in PRECISIONS.items() if p.exportable)  # fp32, int8, int4
DEFAULT = "int4"
