"""KV cache and compute-buffer arithmetic, and which runtime keeps what.

KV cache = layers x 2 (K and V) x cached positions x (kv_heads x head_dim) values, stored in the
runtime's cache type. Cached positions are the context length, or the sliding window when
the runtime honours the model's window:

- llama.cpp (GGUF): cache type from ``--kv-type`` (f16 default, q8_0 = 34 bytes per 32
  values); Mistral is converted to the llama architecture and runs with full attention, so
  its 4096-token window does **not** shrink the cache.
- transformers (bf16 source, GPTQ): bf16 cache; the sliding window does shrink it
  (``DynamicSlidingWindowLayer``).
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

__all__ = ["KV_TYPES", "RUNTIMES", "Runtime", "kv_cache_bytes", "compute_buffer_bytes", "N_UBATCH", "RUNTIME_OVERHEAD"]

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
    """How a runtime holds the cache: ``kv_type`` None means the user's ``--kv-type`` applies."""

    name: str
    kv_type: str | None
    honours_window: bool


RUNTIMES = {
    "llama.cpp": Runtime("llama.cpp", None, False),
    "transformers": Runtime("transformers", "bf16", True),
    "onnxruntime-genai-fp32": Runtime("onnxruntime-genai", "f32", False),
}


def check_kv_type(kv_type: str) -> str:
    key = str(kv_type).lower()
    if key not in KV_TYPES:
        raise RecipeError(f"unknown KV cache type {kv_type!r}", hint="use one of: " + ", ".join(KV_TYPES))
    return key


def kv_cache_bytes(spec: ModelSpec, ctx: int, kv_type: str = "f16", *, window: int | None = None) -> int:
    """Bytes of the K and V caches for ``ctx`` positions (``min(ctx, window)`` with a window)."""
    if ctx <= 0:
        raise RecipeError(f"context length must be positive, got {ctx}", hint="e.g. --ctx 2048,4096")
    cells = min(ctx, window) if window else ctx
    width = spec.n_kv_heads * spec.head_dim
    return spec.n_layers * 2 * cells * row_bytes(KV_TYPES[check_kv_type(kv_type)], width)


def runtime_kv_bytes(spec: ModelSpec, ctx: int, runtime: Runtime, kv_type: str) -> tuple[int, str, int | None]:
    """KV bytes in a given runtime, with the cache type and window it used."""
    t = runtime.kv_type or kv_type
    window = _window(spec, runtime)
    return kv_cache_bytes(spec, ctx, t, window=window), t, window


def _window(spec: ModelSpec, runtime: Runtime) -> int | None:
    if not spec.sliding_window:
        return None
    # llama.cpp decides per architecture (it runs Mistral as Llama, without the window)
    honoured = spec.architecture.llama_cpp_window if runtime.name == "llama.cpp" else runtime.honours_window
    return spec.sliding_window if honoured else None


def compute_buffer_bytes(spec: ModelSpec) -> int:
    """Stated estimate of scratch memory: one fp32 micro-batch plus fixed runtime overhead."""
    return 4 * N_UBATCH * (spec.vocab + spec.hidden + spec.intermediate) + RUNTIME_OVERHEAD
