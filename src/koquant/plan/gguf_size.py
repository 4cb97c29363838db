"""The size of a GGUF file, tensor by tensor.

A GGUF file is a 24-byte header, the key/value metadata, one info record per tensor
(name, dimensions, type, offset), padding to the 32-byte alignment, and the tensor data with
each tensor padded to 32 bytes. The tensors and their types come from
:mod:`koquant.source.architectures` and :mod:`koquant.plan.gguf_mix`; the metadata is the
tokenizer (:mod:`koquant.plan.vocab_footprint`) plus about thirty small hyper-parameter keys.

The plan assumes the usual pipeline: ``convert_hf_to_gguf.py --outtype f16`` (or bf16) then
``llama-quantize`` without ``--pure``, ``--output-tensor-type`` or ``--token-embedding-type``.
The quantizer copies the converter's metadata, so every file type has the same header.
"""

from __future__ import annotations

from dataclasses import dataclass

from koquant.exporters.gguf.reader import GGUFTensor
from koquant.source.architectures import Weight, weights
from koquant.plan.exports import Export, active_bytes
from koquant.plan.gguf_mix import MixContext, choose_types
from koquant.plan.model_spec import ModelSpec
from koquant.quant_recipes.gguf import FILE_TYPES, file_type, tensor_bytes

__all__ = ["GGUFTensorPlan", "GGUFPlan", "plan_gguf", "gguf_export", "gguf_tensor_weights", "metadata_bytes", "ALIGNMENT"]

ALIGNMENT = 32
_HEADER = 4 + 4 + 8 + 8  # magic, version, tensor count, kv count


@dataclass(frozen=True)
class GGUFTensorPlan(GGUFTensor):
    """One planned tensor. ``wanted`` is set when a row-length fallback replaced that type."""

    wanted: str | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "type": self.type, "shape": list(self.shape), "bytes": self.n_bytes}
        if self.wanted:
            d["wanted"] = self.wanted
        return d


@dataclass(frozen=True)
class GGUFPlan:
    """A planned GGUF file for one llama.cpp file type."""

    ftype: str
    tensors: tuple[GGUFTensorPlan, ...]
    metadata_bytes: int
    tensor_bytes: int
    file_bytes: int
    n_elements: int
    needs_imatrix: bool
    imatrix: bool
    #: bytes of the routed experts' tensors (``ffn_*_exps``; 0 for a dense model)
    routed_bytes: int = 0

    @property
    def bits_per_weight(self) -> float:
        return self.tensor_bytes * 8 / self.n_elements

    @property
    def fallbacks(self) -> list[GGUFTensorPlan]:
        return [t for t in self.tensors if t.wanted]

    def types(self) -> dict[str, str]:
        return {t.name: t.type for t in self.tensors}

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.type] = counts.get(t.type, 0) + 1
        return counts

    def export_fields(self, *, tensors: bool = False) -> dict:
        """What ``koquant plan --json`` adds to a GGUF row."""
        d = {"metadata_bytes": self.metadata_bytes, "needs_imatrix": self.needs_imatrix,
             "type_counts": self.type_counts(), "fallbacks": [t.to_dict() for t in self.fallbacks]}
        if tensors:
            d["tensors"] = [t.to_dict() for t in self.tensors]
        return d


def _align(n: int, a: int = ALIGNMENT) -> int:
    return -(-n // a) * a


def gguf_tensor_weights(spec: ModelSpec) -> list[Weight]:
    """The tensors the llama.cpp converter writes for this model."""
    ws = weights(spec)
    if spec.architecture.gguf_drops_lm_head:
        ws = [w for w in ws if w.role != "lm_head"]
    return ws


def _kv_str(key: str, value: str) -> int:
    return 8 + len(key) + 4 + 8 + len(value.encode())


def _kv_num(key: str, size: int = 4) -> int:
    return 8 + len(key) + 4 + size


def metadata_bytes(spec: ModelSpec, ws: list[Weight]) -> int:
    """Header, key/value pairs and tensor infos, padded to the data alignment."""
    a = spec.architecture.gguf_arch
    kv = _kv_str("general.architecture", a) + _kv_str("general.type", "model")
    kv += _kv_str("general.name", spec.name) + _kv_str("general.size_label", "10B")
    for key in (
        "block_count",
        "context_length",
        "embedding_length",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "rope.freq_base",
        "attention.layer_norm_rms_epsilon",
        "attention.key_length",
        "attention.value_length",
        "vocab_size",
        "rope.dimension_count",
    ):
        kv += _kv_num(f"{a}.{key}")
    if spec.is_moe:  # llm_kv expert_count / expert_used_count / expert_feed_forward_length
        kv += sum(_kv_num(f"{a}.{key}") for key in ("expert_count", "expert_used_count", "expert_feed_forward_length"))
    if spec.sliding_window and any(spec.sliding_layers):
        kv += _kv_num(f"{a}.attention.sliding_window")
        if spec.arch == "exaone4":  # the converter writes layer_types as a bool array
            kv += 8 + len(f"{a}.attention.sliding_window_pattern") + 4 + 4 + 8 + spec.n_layers
    if spec.architecture.logit_softcap:
        kv += _kv_num(f"{a}.final_logit_softcapping") + _kv_num(f"{a}.attn_logit_softcapping")
    kv += _kv_num("general.file_type") + _kv_num("general.quantization_version")
    tok = spec.tokenizer
    kv += _kv_str("tokenizer.ggml.model", "llama" if tok.kind == "spm" else "gpt2")
    kv += _kv_str("tokenizer.ggml.pre", "default" if tok.kind == "spm" else "llama-bpe")
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"):
        kv += _kv_num(f"tokenizer.ggml.{key}")
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        kv += _kv_num(f"tokenizer.ggml.{key}", 1)
    kv += tok.gguf_kv_bytes()
    infos = sum(8 + len(w.gguf_name) + 4 + 8 * len(w.shape) + 4 + 8 for w in ws)
    return _align(_HEADER + kv + infos)


def _is_70b(spec: ModelSpec) -> bool:
    # llama.cpp's LLM_TYPE_70B, the only model size its quantizer looks at
    if spec.n_layers != 80:
        return False
    gguf_arch = spec.architecture.gguf_arch
    return gguf_arch == "qwen2" or (gguf_arch == "llama" and spec.n_heads != spec.n_kv_heads)


def plan_gguf(spec: ModelSpec, ftype: str, *, imatrix: bool = False) -> GGUFPlan:
    """Plan one GGUF file. File types that cannot be made without an importance matrix are
    planned as if one is given (``needs_imatrix`` says so)."""
    ft = file_type(ftype)
    ws = gguf_tensor_weights(spec)
    n_expert = spec.n_experts if spec.is_moe else 0
    ctx = MixContext(spec.n_layers, spec.n_gqa, _is_70b(spec), imatrix, n_expert)
    choices = choose_types(ws, ft, ctx)
    needs = any(c.needs_imatrix for c in choices)
    if needs and not imatrix:
        ctx = MixContext(spec.n_layers, spec.n_gqa, ctx.is_70b, True, n_expert)
        choices = choose_types(ws, ft, ctx)
    tensors = tuple(
        GGUFTensorPlan(c.weight.gguf_name, c.type, c.weight.shape, tensor_bytes(c.type, c.weight.shape), c.fallback)
        for c in choices
    )
    meta = metadata_bytes(spec, ws)
    data = sum(t.n_bytes for t in tensors)
    padded = sum(_align(t.n_bytes) for t in tensors)
    n_el = sum(w.n_elements for w in ws)
    routed = sum(t.n_bytes for t, c in zip(tensors, choices) if c.weight.is_expert)
    return GGUFPlan(ft.name, tensors, meta, data, meta + padded, n_el, needs, ctx.imatrix, routed)


def gguf_export(spec: ModelSpec, quant: str, *, imatrix: bool = False) -> Export:
    """The plan's row for one llama.cpp file type (the format registry's GGUF sizer)."""
    p = plan_gguf(spec, quant, imatrix=imatrix)
    notes = []
    if p.needs_imatrix:
        notes.append("needs an importance matrix (--imatrix)")
    if p.fallbacks:
        notes.append(f"{len(p.fallbacks)} tensor(s) fall back to another type (row length not a block multiple)")
    return Export("gguf", p.ftype, "llama.cpp", p.file_bytes, p.tensor_bytes, p.bits_per_weight, tuple(notes), p,
                  active_weight_bytes=active_bytes(p.tensor_bytes, p.routed_bytes, spec.expert_share))


def all_file_types() -> list[str]:
    return list(FILE_TYPES)
