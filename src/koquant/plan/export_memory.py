"""How much RAM ``koquant export`` itself needs, per format, from config.json alone.

A coarse model of what the export holds at its peak, fitted to the measurements of
``benchmarks/export_memory_1b.md`` (a 1.1 B Llama: GGUF Q8_0 1824 MiB, GPTQ w4g128 2313 MiB, ONNX int4
7949 MiB) and written per piece so it scales with the model:

- every export: the imports (torch, transformers, the backend) and the tokenizer, ~450 MiB;
- GGUF: koquant's layerwise reference (the float32 embedding or head, or one float32 decoder layer, held
  twice while the next one loads) plus llama.cpp mapping the largest file it validates;
- GPTQ: the gate loads the finished checkpoint as users do (the float32 embedding and head, the packed
  layers and torch's kernel buffers, about twice the file);
- ONNX int4: koquant's layerwise GPTQ pass keeps every code (a byte per decoder weight) until it writes
  them as a GPTQ checkpoint, which the builder reads instead of the float model: its peak is about the
  float32 embedding and head twice plus 3.5 times the int4 file (measured 1.1 B: koquant 2659 MiB, builder
  3280 MiB, both alive 4817 MiB; this model says 5.9 GiB, on the safe side); fp32 and int8 still go through the builder's
  float path, which holds the model in float32 twice (4 + 2 bytes per parameter, and koquant's side).

A multi-format export runs its formats one after another: its peak is the largest of theirs.
``koquant matrix`` asks Ray for this much memory per cell, so two large exports are never packed onto a
node that cannot hold both.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model_spec import ModelSpec

BASE_BYTES = 450 * 2**20


def _f32_pieces(spec: ModelSpec) -> tuple[int, int, int]:
    """float32 bytes of (the embedding table, the largest decoder layer, the whole model)."""
    embed = spec.vocab * spec.hidden * 4
    attn = spec.hidden * (spec.n_heads + 2 * spec.n_kv_heads) * spec.head_dim + spec.n_heads * spec.head_dim * spec.hidden
    if spec.is_moe:
        mlp = 3 * spec.hidden * (spec.expert_intermediate or spec.intermediate) * (spec.n_experts or 1)
    else:
        mlp = 3 * spec.hidden * spec.intermediate
    return embed, (attn + mlp) * 4, spec.n_params * 4


def export_peak_bytes(spec: ModelSpec, fmt: str, file_bytes: int, quant: str | None = None) -> int:
    """Estimated peak RAM of exporting ``spec`` to ``fmt`` whose largest output file is ``file_bytes``
    (``quant``: the quant making it, where the format's peak depends on it)."""
    embed, layer, model = _f32_pieces(spec)
    if fmt == "gguf":
        return BASE_BYTES + 2 * max(embed, layer) + file_bytes
    if fmt == "gptq":
        return BASE_BYTES + 2 * embed + 2 * file_bytes
    if fmt == "onnx" and quant == "int4":  # koquant's process and the builder, alive at once
        koquant = BASE_BYTES + spec.n_params + 2 * layer + embed
        return koquant + BASE_BYTES + 2 * embed + int(3.5 * file_bytes)
    if fmt == "onnx":
        return BASE_BYTES + 2 * model
    raise ValueError(f"no export memory model for format {fmt!r}")


def export_peak(spec: ModelSpec, quants: dict[str, Sequence[str]], *, imatrix: bool = True) -> int:
    """Peak RAM of one export of ``spec`` making ``quants`` ({format: [quant, ...]}): the largest format's."""
    from ..exporters import format_of

    peaks = []
    for fmt, qs in quants.items():
        sizer = format_of(fmt, exported=True).sizer_function()
        peaks += [export_peak_bytes(spec, fmt, sizer(spec, q, imatrix=imatrix).file_bytes, q) for q in qs]
    return max(peaks)
