"""Which weights each supported architecture has, as data.

Every architecture is one registry entry: the Hugging Face classes and ``model_type`` it
answers to, the llama.cpp architecture its GGUF is written as, its defaults (tied
embeddings, sliding window) and its quirks. The weight list is shared by all planners: the
GGUF planner reads ``gguf_name``/``shape``, the GPTQ and ONNX planners read ``role`` and the
Hugging Face module name.

Adding an architecture is one ``@register`` call here plus one test case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from koquant.errors import RecipeError

if TYPE_CHECKING:  # pragma: no cover
    from koquant.plan.model_spec import ModelSpec

__all__ = ["Weight", "Architecture", "ARCHITECTURES", "register", "architecture_for", "weights"]


@dataclass(frozen=True)
class Weight:
    """One stored tensor of the checkpoint.

    ``shape`` is in ggml order: for a linear layer ``(in_features, out_features)``, so
    ``shape[0]`` is the row length that quantization blocks must divide.
    ``role`` is one of ``embed``, ``lm_head``, ``linear``, ``norm``, ``bias``, ``rope_freqs``.
    ``hf_module`` is the Hugging Face module path for linears (what GPTQ quantizes).
    """

    gguf_name: str
    shape: tuple[int, ...]
    role: str
    layer: int | None = None
    hf_module: str | None = None

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def in_features(self) -> int:
        return self.shape[0]

    @property
    def out_features(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else 1


@dataclass(frozen=True)
class Architecture:
    """What koquant knows about one model architecture.

    ``gguf_drops_lm_head``: the llama.cpp converter never writes ``output.weight`` (Gemma:
    the head is always the token embedding). ``llama_cpp_window``: llama.cpp applies the
    config's sliding window to its KV cache (False for Mistral v0.1, which llama.cpp runs
    as plain Llama with full attention).
    """

    name: str
    hf_classes: tuple[str, ...]
    model_types: tuple[str, ...]
    gguf_arch: str
    tied_default: bool
    layout: Callable[[ModelSpec], list[Weight]]
    window_default: int | None = None
    window_requires_flag: str | None = None
    gguf_drops_lm_head: bool = False
    llama_cpp_window: bool = False
    qkv_bias: bool = False
    tokenizer_kind: str | None = None  # "spm"/"bpe" when the family always uses one
    notes: tuple[str, ...] = field(default_factory=tuple)


ARCHITECTURES: dict[str, Architecture] = {}


def register(**kwargs) -> Callable[[Callable[[ModelSpec], list[Weight]]], Callable]:
    """Register an architecture whose weight layout is the decorated function."""

    def deco(layout: Callable[[ModelSpec], list[Weight]]):
        arch = Architecture(layout=layout, **kwargs)
        ARCHITECTURES[arch.name] = arch
        return layout

    return deco


def architecture_for(config: dict) -> Architecture:
    """The registry entry for a config: by ``architectures[0]``, then by ``model_type``."""
    classes = config.get("architectures") or []
    if isinstance(classes, str):
        classes = [classes]
    model_type = config.get("model_type")
    for cls in classes:
        for arch in ARCHITECTURES.values():
            if cls in arch.hf_classes:
                return arch
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    asked = ", ".join(str(c) for c in classes) or (f"model_type {model_type!r}" if model_type else "none given")
    known = "; ".join(f"{a.name} ({', '.join(a.hf_classes)})" for a in ARCHITECTURES.values())
    raise RecipeError(
        f"unsupported architecture: {asked}",
        hint=f"koquant plan knows: {known}. Check 'architectures' / 'model_type' in config.json",
    )


def weights(spec: ModelSpec) -> list[Weight]:
    """All stored weights of the model, in checkpoint order (embedding, layers, head)."""
    return ARCHITECTURES[spec.arch].layout(spec)


# --------------------------------------------------------------------------- layouts


def _decoder_layout(
    spec: ModelSpec, *, qkv_bias: bool, gguf_has_output: bool, rope_freqs: bool = False
) -> list[Weight]:
    """The Llama-style decoder: RMSNorm, GQA attention, SwiGLU MLP."""
    h, ff = spec.hidden, spec.intermediate
    q_dim = spec.n_heads * spec.head_dim
    kv_dim = spec.n_kv_heads * spec.head_dim
    out: list[Weight] = [Weight("token_embd.weight", (h, spec.vocab), "embed", hf_module="model.embed_tokens")]
    if rope_freqs and spec.rope_type == "llama3":
        # convert_hf_to_gguf writes llama3 rope scaling as a per-frequency F32 tensor
        out.append(Weight("rope_freqs.weight", (spec.head_dim // 2,), "rope_freqs"))
    attn_bias = qkv_bias or spec.attention_bias
    for i in range(spec.n_layers):
        p, m = f"blk.{i}.", f"model.layers.{i}."
        out.append(Weight(p + "attn_norm.weight", (h,), "norm", i))
        for short, hf, rows in (
            ("attn_q", "q_proj", q_dim),
            ("attn_k", "k_proj", kv_dim),
            ("attn_v", "v_proj", kv_dim),
        ):
            out.append(Weight(f"{p}{short}.weight", (h, rows), "linear", i, m + "self_attn." + hf))
            if attn_bias:
                out.append(Weight(f"{p}{short}.bias", (rows,), "bias", i))
        out.append(Weight(p + "attn_output.weight", (q_dim, h), "linear", i, m + "self_attn.o_proj"))
        if spec.attention_bias:
            out.append(Weight(p + "attn_output.bias", (h,), "bias", i))
        out.append(Weight(p + "ffn_norm.weight", (h,), "norm", i))
        for short, hf, shape in (
            ("ffn_gate", "gate_proj", (h, ff)),
            ("ffn_up", "up_proj", (h, ff)),
            ("ffn_down", "down_proj", (ff, h)),
        ):
            out.append(Weight(f"{p}{short}.weight", shape, "linear", i, m + "mlp." + hf))
            if spec.mlp_bias:
                out.append(Weight(f"{p}{short}.bias", (shape[1],), "bias", i))
    out.append(Weight("output_norm.weight", (h,), "norm"))
    if gguf_has_output:
        out.append(Weight("output.weight", (h, spec.vocab), "lm_head", hf_module="lm_head"))
    return out


def _head_is_stored(spec: ModelSpec) -> bool:
    """Untied models store ``lm_head``; tied ones only if the checkpoint has the tensor anyway."""
    if not spec.tied:
        return True
    return bool(spec.lm_head_in_checkpoint)


@register(
    name="llama",
    hf_classes=("LlamaForCausalLM", "LLaMAForCausalLM"),
    model_types=("llama",),
    gguf_arch="llama",
    tied_default=False,
    notes=("Llama 3 rope scaling ('llama3') adds an F32 rope_freqs tensor to the GGUF",),
)
def _llama(spec: ModelSpec) -> list[Weight]:
    return _decoder_layout(spec, qkv_bias=False, gguf_has_output=_head_is_stored(spec), rope_freqs=True)


@register(
    name="mistral",
    hf_classes=("MistralForCausalLM",),
    model_types=("mistral",),
    gguf_arch="llama",
    tied_default=False,
    window_default=4096,
    llama_cpp_window=False,
    notes=("llama.cpp converts Mistral to the llama architecture and ignores its sliding window",),
)
def _mistral(spec: ModelSpec) -> list[Weight]:
    return _decoder_layout(spec, qkv_bias=False, gguf_has_output=_head_is_stored(spec), rope_freqs=True)


@register(
    name="gemma",
    hf_classes=("GemmaForCausalLM",),
    model_types=("gemma",),
    gguf_arch="gemma",
    tied_default=True,
    gguf_drops_lm_head=True,
    tokenizer_kind="spm",
    notes=(
        "Gemma ties the head to the embedding: the GGUF has no output.weight and the token "
        "embedding is quantized like an output tensor (Q6_K in Q4_K_M)",
    ),
)
def _gemma(spec: ModelSpec) -> list[Weight]:
    return _decoder_layout(spec, qkv_bias=False, gguf_has_output=False)


@register(
    name="qwen2",
    hf_classes=("Qwen2ForCausalLM",),
    model_types=("qwen2",),
    gguf_arch="qwen2",
    tied_default=False,
    window_default=4096,
    window_requires_flag="use_sliding_window",
    qkv_bias=True,
    notes=("Qwen2 has q/k/v biases (kept F32 in GGUF)",),
)
def _qwen2(spec: ModelSpec) -> list[Weight]:
    return _decoder_layout(spec, qkv_bias=True, gguf_has_output=_head_is_stored(spec))
