"""The validation gate's bounds, one tier per precision; each format's table gives every quant type one.

An export passes when its next-token top-1 agreement with the source is at least ``top1_min``, its
mean KL(source || export) at most ``kl_mean_max`` and, where set, its largest raw logit difference
at most ``max_abs_max``. The bounds are ones healthy exports meet with room to spare and broken ones
(wrong tokenizer, rope, norm or garbage weights: KL >> 1) never do. For scale, llama.cpp's own
Llama-3-8B numbers (mean KL vs F16): Q8_0 0.0014, Q6_K 0.0055, Q5_K_M 0.011, Q4_K_M 0.028,
IQ4_XS 0.036, Q3_K_M 0.084; the bounds are about three times those. A width is bounded alike in
every format: ONNX int8 and GPTQ w8 like GGUF Q8_0, ONNX int4 and GPTQ w4 like Q4_*.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Thresholds", "FLOAT32", "FLOAT16", "BFLOAT16", "BITS8", "BITS6", "BITS5", "BITS4", "BITS3", "BITS2",
           "BITS1"]


@dataclass(frozen=True)
class Thresholds:
    top1_min: float
    kl_mean_max: float
    max_abs_max: float | None = None


FLOAT32 = Thresholds(1.0, 1e-6, 1e-3)  # the source's own numbers, up to summation order
FLOAT16 = Thresholds(0.999, 1e-4, 1e-2)
BFLOAT16 = Thresholds(0.98, 1e-3, 1e-1)
BITS8 = Thresholds(0.95, 1e-2)
BITS6 = Thresholds(0.93, 3e-2)
BITS5 = Thresholds(0.90, 5e-2)
BITS4 = Thresholds(0.85, 1e-1)
BITS3 = Thresholds(0.75, 3e-1)
BITS2 = Thresholds(0.60, 1.0)
BITS1 = Thresholds(0.40, 2.0)  # the 1.5-1.75 bit i-quants and the ternary types
