"""Sizes of the GPTQ, ONNX and bf16-source exports.

These are computed from the tensor layouts the exporters write. The real GPTQ and ONNX
exporters of koquant are not written yet; every layout assumption below is listed in the
plan's ``assumptions`` so that it can be calibrated against real files later.

GPTQ (GPTQModel ``save()``, v1 layout, safetensors), for each decoder linear with
``K`` inputs, ``N`` outputs, ``b`` bits and group size ``g`` (``G = ceil(K/g)`` groups, one
group when ``g = -1``):

- ``qweight`` int32 ``[K*b/32, N]``  -> ``K*N*b/8`` bytes
- ``qzeros``  int32 ``[G, N*b/32]``  -> ``G*N*b/8`` bytes
- ``scales``  fp16  ``[G, N]``       -> ``2*G*N`` bytes
- ``g_idx``   int32 ``[K]``          -> ``4*K`` bytes
- ``bias``    fp16  ``[N]`` only when the layer has one.

The token embedding, ``lm_head`` (stored once when tied), the norms and a mixture of experts'
router stay 16-bit; each routed expert's Linears are quantized like any other (one set per expert).

ONNX (onnxruntime-genai model builder, ``-e cpu``; the precisions koquant exports, fp32, int8 and
int4): float weights are stored in the graph's I/O type, fp32 on CPU. ``int8`` and ``int4`` replace
each linear, ``lm_head`` included, by ``MatMulNBits``: packed uint8 ``N x ceil(K/block) x block*bits/8``,
one scale per block in the I/O type, and for asymmetric quantization a uint8 zero point per block
(int8) or per two blocks (int4); block 32 and symmetric by default. The embedding (a Gather) stays
in the I/O type unless ``quantize_embeddings``. Tied embeddings are stored once in fp32 exports
(and in int8/int4 only when the embedding is quantized and shared with the head). The builder
also stores cos/sin rotary caches for ``max_position_embeddings`` positions and the graph
itself (estimated at 16 KiB per layer + 64 KiB).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from koquant.errors import RecipeError
from koquant.source.architectures import Weight, weights
from koquant.plan.exports import Export, active_bytes
from koquant.plan.model_spec import ModelSpec
from koquant.quant_recipes import gptq, onnx

__all__ = ["FormatPlan", "plan_gptq", "plan_onnx", "plan_source", "gptq_export", "onnx_export"]

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class FormatPlan:
    """A planned non-GGUF export. ``parts`` breaks ``file_bytes`` down by what it holds."""

    format: str
    variant: str
    file_bytes: int
    weight_bytes: int
    n_elements: int
    parts: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: bytes of the routed experts' weights (0 for a dense model)
    routed_bytes: int = 0

    @property
    def bits_per_weight(self) -> float:
        return self.weight_bytes * 8 / self.n_elements

    def export_fields(self, *, tensors: bool = False) -> dict:
        """What ``koquant plan --json`` adds to the row: the size by part."""
        return {"parts": dict(self.parts)}

    def export(self, runtime: str, share: float = 1.0) -> Export:
        """The plan's row; ``share``: the part of the routed experts one token uses."""
        return Export(self.format, self.variant, runtime, self.file_bytes, self.weight_bytes, self.bits_per_weight,
                      self.notes, self, active_weight_bytes=active_bytes(self.weight_bytes, self.routed_bytes, share))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _hf_weights(spec: ModelSpec) -> list[Weight]:
    """Weights as the Hugging Face checkpoint stores them (no GGUF-only tensors)."""
    return [w for w in weights(spec) if w.role != "rope_freqs"]


def _safetensors_header(n_tensors: int) -> int:
    # 8-byte length + JSON entry per tensor (name, dtype, shape, offsets), about 110 bytes
    return 8 + 110 * n_tensors


def _n_elements(spec: ModelSpec) -> int:
    return sum(w.n_elements for w in _hf_weights(spec))


def plan_gptq(
    spec: ModelSpec,
    bits: int = gptq.DEFAULT.bits,
    group_size: int = gptq.DEFAULT.group_size,
    *,
    sixteen_bit_bytes: int = 2,
) -> FormatPlan:
    """Size of a GPTQModel v1 checkpoint (see module docstring for the layout); only the variants
    koquant exports (:mod:`koquant.quant_recipes.gptq`)."""
    variant = gptq.variant(bits, group_size)
    parts = {"qweight": 0, "qzeros": 0, "scales": 0, "g_idx": 0, "16-bit": 0}
    n_tensors = 0
    routed = 0
    notes: list[str] = []
    odd = set()
    for w in _hf_weights(spec):
        if w.role == "linear":  # an expert tensor is one Linear per expert, each quantized on its own
            k, n, m = w.in_features, w.out_features, w.n_matrices
            g = 1 if group_size == -1 else _ceil_div(k, group_size)
            if group_size != -1 and k % group_size:
                odd.add(k)
            layer = {"qweight": _ceil_div(k * bits, 32) * n * 4, "qzeros": g * _ceil_div(n * bits, 32) * 4,
                     "scales": g * n * 2, "g_idx": k * 4}
            for part, nbytes in layer.items():
                parts[part] += nbytes * m
            if w.is_expert:
                routed += sum(layer.values()) * m
            n_tensors += 4 * m
        else:  # embedding, head, norms, biases and a mixture of experts' router stay 16-bit
            parts["16-bit"] += w.n_elements * sixteen_bit_bytes
            n_tensors += 1
    if spec.tied and not spec.lm_head_in_checkpoint:
        notes.append("lm_head is tied to the embedding and stored once")
    if odd:
        notes.append(
            f"group size {group_size} does not divide in_features {sorted(odd)}: GPTQModel saves it but its "
            "Aten kernel fails at run time"
        )
    if spec.is_moe:
        notes.append("the router (mlp.gate) stays 16-bit, as GPTQModel's module tree leaves it (assumption)")
    parts["header"] = _safetensors_header(n_tensors)
    total = sum(parts.values())
    return FormatPlan("gptq", variant.name, total, total - parts["header"], _n_elements(spec), parts, tuple(notes),
                      routed)


def plan_onnx(
    spec: ModelSpec,
    precision: str = onnx.DEFAULT,
    *,
    block_size: int = 32,
    symmetric: bool = True,
    quantize_embeddings: bool = False,
    ep: str = "cpu",
) -> FormatPlan:
    """Size of an onnxruntime-genai builder export (see module docstring for the layout); only the
    precisions koquant exports (:mod:`koquant.quant_recipes.onnx`)."""
    row = onnx.PRECISIONS.get(precision)
    if row is None or not row.exportable:
        hint = "use one of: " + ", ".join(onnx.EXPORTABLE)
        if row is None:
            raise RecipeError(f"unknown ONNX precision {precision!r}", hint=hint)
        raise RecipeError(f"{precision} ONNX export is not supported on CPU: {row.not_on_cpu}", hint=hint)
    if block_size < 16 or block_size & (block_size - 1):
        raise RecipeError(f"MatMulNBits block size must be a power of two >= 16, got {block_size}", hint="use 32")
    bits, blockwise = row.weight_bits, row.matmulnbits
    io_bytes = 2 if blockwise and ep != "cpu" else 4
    q = "int8" if bits == 8 else "int4"  # fp32 lists the int4 parts, at 0
    parts = {"float weights": 0, f"{q} weights": 0, f"{q} scales": 0, f"{q} zero points": 0}

    def matmulnbits(k: int, n: int, m: int = 1) -> int:
        blocks = _ceil_div(k, block_size)
        layer = {f"{q} weights": n * blocks * block_size * bits // 8, f"{q} scales": n * blocks * io_bytes,
                 f"{q} zero points": 0 if symmetric else n * _ceil_div(blocks * bits, 8)}
        for part, nbytes in layer.items():
            parts[part] += nbytes * m
        return sum(layer.values()) * m

    ws = _hf_weights(spec)
    embed = next(w for w in ws if w.role == "embed")
    routed = 0
    for w in ws:
        if blockwise and w.role in ("linear", "lm_head"):
            nbytes = matmulnbits(w.in_features, w.out_features, w.n_matrices)
        elif blockwise and w.role == "embed" and quantize_embeddings:
            nbytes = matmulnbits(w.in_features, w.out_features)
        else:
            nbytes = w.n_elements * io_bytes
            parts["float weights"] += nbytes
        routed += nbytes if w.is_expert else 0
    head_stored = any(w.role == "lm_head" for w in ws)
    notes = []
    if not head_stored:  # tied: the head reuses the embedding
        if blockwise and not quantize_embeddings:
            matmulnbits(embed.in_features, embed.out_features)
            notes.append(f"tied head: {precision} copy for lm_head plus the float embedding")
        else:
            notes.append("tied embeddings stored once")
    positions = spec.max_positions or 4096
    parts["rotary caches"] = 2 * positions * (spec.head_dim // 2) * io_bytes
    parts["graph"] = 64 * 1024 + 16 * 1024 * spec.n_layers
    total = sum(parts.values())
    weights_ram = total - parts["graph"]
    return FormatPlan("onnx", precision, total, weights_ram, _n_elements(spec), parts, tuple(notes), routed)


def gptq_export(spec: ModelSpec, quant: str, *, imatrix: bool = False) -> Export:
    """The plan's row for one GPTQ variant (``w4g128``; the format registry's GPTQ sizer)."""
    v = gptq.parse_quant(quant)
    return plan_gptq(spec, v["bits"], v["group_size"]).export("transformers", spec.expert_share)


def onnx_export(spec: ModelSpec, quant: str, *, imatrix: bool = False) -> Export:
    """The plan's row for one ONNX precision (the format registry's ONNX sizer); the CPU graphs koquant
    exports keep their cache in fp32."""
    return plan_onnx(spec, quant).export("onnxruntime-genai-fp32", spec.expert_share)


def plan_source(spec: ModelSpec) -> FormatPlan:
    """The Hugging Face checkpoint in its own dtype (bf16 for the seed models)."""
    nbytes = _DTYPE_BYTES.get(spec.dtype.replace("torch.", ""), 2)
    ws = _hf_weights(spec)
    tensors = sum(w.n_elements for w in ws) * nbytes
    if spec.tied and spec.lm_head_in_checkpoint:
        tensors += spec.vocab * spec.hidden * nbytes
    planned = tensors + _safetensors_header(sum(w.n_matrices for w in ws))  # one tensor per expert
    notes = []
    total = planned
    if spec.checkpoint_bytes:
        total = spec.checkpoint_bytes
        notes.append(f"measured from the safetensors files (computed: {planned} bytes)")
    dtype = {4: "fp32", 2: "bf16" if "bfloat" in spec.dtype or spec.dtype == "bf16" else "fp16"}[nbytes]
    return FormatPlan(
        "source",
        dtype,
        total,
        tensors,
        _n_elements(spec),
        {"tensors": tensors, "header": planned - tensors},
        tuple(notes),
        sum(w.n_elements for w in ws if w.is_expert) * nbytes,
    )
