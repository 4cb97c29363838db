"""KV cache and compute-buffer arithmetic, and which runtime keeps what.

KV cache = per layer, 2 (K and V) x cached positions x (kv_heads x head_dim) values, stored in the
runtime's cache type. A layer caches the whole context, or at most the sliding window where the
model attends over a window there and the runtime honours it. Which layers slide is the
model's ``layer_types`` (Gemma 2/3, EXAONE 4: hybrid, some layers full), or every layer for a
model with a window and no layer types (Mistral):

- llama.cpp (GGUF), as koquant's runtime runs it: cache type from ``--kv-type`` (f16 default,
  q8_0 = 34 bytes per 32 values), every layer over the whole context. Mistral is converted to the
  llama architecture and has no window in llama.cpp at all; for the models llama.cpp does run with
  sliding windows (Gemma 2/3, the 64-layer EXAONE 4) koquant's runtime creates its context from
  ``llama_context_default_params``, whose ``swa_full`` is true: the sliding layers' cache is full-size
  too. llama-server and llama-cli default to ``--swa-full`` off; then a sliding layer holds
  ``min(ctx, window + n_ubatch)`` cells rounded up to 256 (``llama_kv_cache_iswa``), which the plan
  reports beside (:func:`llama_cpp_swa_kv_bytes`), not in the RAM total.
- transformers (bf16 source, GPTQ): bf16 cache; a sliding layer keeps ``min(ctx, window)``
  positions (``DynamicSlidingWindowLayer``), a full layer the context.
- onnxruntime-genai (ONNX): the cache is in the graph's I/O type (fp32 for fp32 and CPU int4
  models, fp16 for fp16) and its buffer spans the whole context (assumption: past/present
  share one buffer of max length; the window only masks attention).

The compute buffer is an estimate, not a measurement: activations of one 512-token
micro-batch in fp32 (``4 x 512 x (vocab + hidden + intermediate)`` bytes, the logits row
dominating) plus a fixed 128 MiB for the runtime itself. Runtimes that run a whole long
prompt in one pass need more.
"""

from __future__ import annotations

from dataclasses import dataclass

from koquant.errors import RecipeError
from koquant.plan.model_spec import ModelSpec
from koquant.quant_recipes.gguf import row_bytes

__all__ = ["KV_TYPES", "RUNTIMES", "Runtime", "kv_cache_bytes", "runtime_kv_bytes", "llama_cpp_sliding_layers",
           "llama_cpp_swa_kv_bytes", "compute_buffer_bytes", "N_UBATCH", "RUNTIME_OVERHEAD"]

# cache type -> ggml type used for its rows
KV_TYPES = {
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "q8_0": "Q8_0",
    "q5_1": "Q5_1",
    "q5_0": "Q5_0",
    "q4_1": "Q4_1",
    "q4_0": "Q4_0",
}
N_UBATCH = 512
RUNTIME_OVERHEAD = 128 * 1024 * 1024


@dataclass(frozen=True)
class Runtime:
    """How a runtime holds the cache: ``kv_type`` None means the user's ``--kv-type`` applies;
    ``honours_window``: a sliding layer caches at most the window (else the whole context)."""

    name: str
    kv_type: str | None
    honours_window: bool


RUNTIMES = {
    # koquant's GGUF runtime: llama_context_default_params (swa_full = true), so no window shrinks the cache
    "llama.cpp": Runtime("llama.cpp", None, False),
    "transformers": Runtime("transformers", "bf16", True),
    "onnxruntime-genai-fp32": Runtime("onnxruntime-genai", "f32", False),
}

#: llama.cpp's SWA cache: padded to 256 cells, window + one micro-batch (llama-kv-cache-iswa.cpp)
SWA_PAD = 256


def check_kv_type(kv_type: str) -> str:
    key = str(kv_type).lower()
    if key not in KV_TYPES:
        raise RecipeError(f"unknown KV cache type {kv_type!r}", hint="use one of: " + ", ".join(KV_TYPES))
    return key


def kv_cache_bytes(spec: ModelSpec, ctx: int, kv_type: str = "f16", *, window: int | None = None,
                   sliding: tuple[bool, ...] | None = None) -> int:
    """Bytes of the K and V caches for ``ctx`` positions. With a ``window``, the layers ``sliding``
    flags (every layer when it is None) cache ``min(ctx, window)`` positions."""
    if ctx <= 0:
        raise RecipeError(f"context length must be positive, got {ctx}", hint="e.g. --ctx 2048,4096")
    width = spec.n_kv_heads * spec.head_dim
    per_cell = 2 * row_bytes(KV_TYPES[check_kv_type(kv_type)], width)
    if not window:
        return spec.n_layers * ctx * per_cell
    flags = sliding if sliding is not None else (True,) * spec.n_layers
    n_sliding = sum(flags)
    return ((spec.n_layers - n_sliding) * ctx + n_sliding * min(ctx, window)) * per_cell


def runtime_kv_bytes(spec: ModelSpec, ctx: int, runtime: Runtime, kv_type: str) -> tuple[int, str, int | None]:
    """KV bytes in a given runtime, with the cache type and the window it applied (None: none)."""
    t = runtime.kv_type or kv_type
    window = spec.sliding_window if runtime.honours_window and any(spec.sliding_layers) else None
    return kv_cache_bytes(spec, ctx, t, window=window, sliding=spec.sliding_layers), t, window


def llama_cpp_sliding_layers(spec: ModelSpec) -> tuple[bool, ...] | None:
    """The layers the pinned llama.cpp runs with the sliding window, or None where it runs none (Mistral,
    Qwen, an EXAONE 4 that is not 64 layers deep, a model without a window or sliding layers).

    Gemma 2 and Gemma 3: the fixed pattern (the converter writes no per-layer list). EXAONE 4: its
    converter writes the config's layer_types as the pattern array, which llama.cpp reads for the
    64-layer 32B only.
    """
    if not spec.sliding_window or not any(spec.sliding_layers):
        return None
    return spec.architecture.llama_cpp_sliding(spec.n_layers, spec.layer_types)

def llama_cpp_swa_kv_bytes(spec: ModelSpec, ctx: int, kv_type: str, *, n_ubatch: int = N_UBATCH) -> int | None:
    """llama.cpp's cache with ``swa_full`` off (llama-server's and llama-cli's default): a sliding layer holds
    ``min(ctx, window + n_ubatch)`` cells rounded up to 256, a full layer ``ctx``; None where llama.cpp
    runs no sliding window (then its cache is the full one either way)."""
    sliding = llama_cpp_sliding_layers(spec)
    if sliding is None:
        return None
    cells = -(-min(ctx, spec.sliding_window + n_ubatch) // SWA_PAD) * SWA_PAD
    return kv_cache_bytes(spec, ctx, kv_type, window=cells, sliding=sliding)


def compute_buffer_bytes(spec: ModelSpec) -> int:
    """Stated estimate of scratch memory: one fp32 micro-batch plus fixed runtime overhead."""
    return 4 * N_UBATCH * (spec.vocab + spec.hidden + spec.intermediate) + RUNTIME_OVERHEAD
