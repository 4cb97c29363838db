"""Which ggml type llama.cpp's quantizer gives each tensor, for each file type.

This restates the rules of ``src/llama-quant.cpp`` in the pinned llama.cpp (Falcon-only and
MXFP4_MOE branches are left out) so that a plan names the same type per tensor that
``llama-quantize`` writes:

1. Only tensors with two or more dimensions (3-D expert tensors included) whose name ends in
   ``weight`` and is neither a ``*_norm.weight`` nor a mixture of experts' router
   (``ffn_gate_inp``) are quantized; the rest keep their converter type (F32).
2. The output tensor, and the token embedding when there is no output tensor (tied
   embeddings), get Q6_K in most mixes (Q8_0 when the row length is not a multiple of the
   base type's block; Q5_K in the very low-bit i-quants).
3. Each mix raises some tensors above its base type: e.g. Q4_K_M gives Q6_K to ``attn_v``
   and ``ffn_down`` of the layers ``use_more_bits`` picks (the first and last eighth and
   every third in between), IQ4_XS gives Q5_K to ``attn_v`` when 4+ heads share a KV head.
   Layers are counted in the order the quantizer walks them (sorted by block number).
4. Mixtures of experts: with exactly 8 experts ``attn_v`` and ``attn_k`` become Q8_0 (most mixes),
   ``attn_output`` Q5_K in the 2- to 4-bit mixes, and IQ3_M bumps ``ffn_down`` on use_more_bits
   layers; the very low-bit i-quants give ``attn_v`` Q4_K from 4 experts on. The ``ffn_*_exps``
   rules take the layer from the tensor's name (its ``blk.N``), and the block must divide the
   row (``ne[0]``) of every expert, as for a 2-D tensor.
5. Finally a row length the chosen type's block does not divide falls back: Q4_K->Q5_0,
   Q5_K->Q5_1, Q6_K->Q8_0, Q2_K/Q3_K->Q4_0, IQ*->IQ4_NL, and F16 if even 32 does not divide.

Whether an importance matrix is given changes a few choices (IQ4_XS/IQ4_NL ``ffn_down``,
Q4_0/Q5_0 ``ffn_down``, IQ3_XXS); the i-quants at or below 3 bits cannot be made without one.
"""

from __future__ import annotations

from dataclasses import dataclass

from koquant.source.architectures import Weight
from koquant.quant_recipes.gguf import FileType, file_type, ggml_type, tensor_needs_imatrix

__all__ = ["TensorChoice", "MixContext", "choose_types", "category"]

# tensor categories (llama-quant.cpp's tensor_category)
TOKEN_EMBD, OUTPUT, ATTN_Q, ATTN_K, ATTN_V, ATTN_OUT, FFN_UP, FFN_GATE, FFN_DOWN, OTHER = (
    "token_embd",
    "output",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_up",
    "ffn_gate",
    "ffn_down",
    "other",
)

_IQ_VERY_LOW = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}
_IQ_HEAD_Q5K = _IQ_VERY_LOW | {"IQ3_XXS"}
# the mixes whose attn_output an 8-expert model gets in Q5_K
_ATTN_OUT_Q5K_8_EXPERTS = {"Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S",
                           "IQ3_M", "IQ4_XS"}
_FALLBACK = {
    "IQ1_S": "IQ4_NL",
    "IQ1_M": "IQ4_NL",
    "IQ2_XXS": "IQ4_NL",
    "IQ2_XS": "IQ4_NL",
    "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL",
    "IQ3_S": "IQ4_NL",
    "IQ4_XS": "IQ4_NL",
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "TQ1_0": "Q4_0",
    "TQ2_0": "Q4_0",
    "Q2_0": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}


@dataclass(frozen=True)
class TensorChoice:
    """The type one tensor gets. ``fallback`` names the type that was wanted when the row length forced another."""

    weight: Weight
    type: str
    fallback: str | None = None
    needs_imatrix: bool = False


@dataclass(frozen=True)
class MixContext:
    """Model facts the rules look at."""

    n_layers: int
    n_gqa: int
    is_70b: bool = False
    imatrix: bool = False
    n_expert: int = 0  # llama.cpp's hparams.n_expert: routed experts per layer, 0 for a dense model


def category(name: str) -> str:
    if name == "output.weight":
        return OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TOKEN_EMBD
    for key, cat in (
        ("attn_v.weight", ATTN_V),
        ("attn_k.weight", ATTN_K),
        ("attn_q.weight", ATTN_Q),
        ("attn_output.weight", ATTN_OUT),
        ("ffn_up", FFN_UP),
        ("ffn_gate", FFN_GATE),
        ("ffn_down", FFN_DOWN),
    ):
        if key in name:
            return cat
    return OTHER


def quantizable(w: Weight) -> bool:
    """llama.cpp's ``tensor_allows_quantization`` for the tensors our architectures have (the router,
    ``ffn_gate_inp``, is written F32 by the converter and never quantized)."""
    return (len(w.shape) >= 2 and w.gguf_name.endswith("weight") and "_norm.weight" not in w.gguf_name
            and "ffn_gate_inp.weight" not in w.gguf_name)


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _block(type_name: str) -> int:
    return ggml_type(type_name).block_size


class _Counters:
    """llama.cpp's ``i_attention_wv``, ``i_ffn_down``, ...: how many tensors of a category came before."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def take(self, cat: str) -> int:
        """This tensor's index among those of category ``cat``; counts it."""
        i = self._seen.get(cat, 0)
        self._seen[cat] = i + 1
        return i


def _mix_rule(ft: str, new: str, w: Weight, cat: str, ctx: MixContext, tied: bool, c: _Counters) -> str:
    """``llama_tensor_get_type_impl`` for non-Falcon models."""
    n, gqa, experts8 = ctx.n_layers, ctx.n_gqa, ctx.n_expert == 8
    if cat == OUTPUT or (tied and cat == TOKEN_EMBD):
        if w.shape[0] % _block(new):
            return "Q8_0"
        if ft in _IQ_HEAD_Q5K:
            return "Q5_K"
        return new if new == "Q8_0" else "Q6_K"
    if cat == TOKEN_EMBD:
        if ft in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "Q2_K"
        if ft in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "IQ3_S"
        if ft in ("TQ1_0", "TQ2_0"):
            return "Q4_K"
        return new
    if ft in _IQ_VERY_LOW:
        if cat == ATTN_V:
            c.take(ATTN_V)
            if gqa >= 4 or ctx.n_expert >= 4:
                return "Q4_K"
            return "IQ3_S" if ft in ("IQ2_S", "IQ2_M") else "Q2_K"
        if experts8 and cat == ATTN_K:
            return "Q4_K"
        if cat == FFN_DOWN:
            if c.take(FFN_DOWN) < n // 8:
                return "IQ3_S" if ft in ("IQ2_S", "IQ2_M") else "Q2_K"
            return new
        if cat == ATTN_OUT:
            if experts8:
                return "Q5_K"
            if ft in ("IQ1_S", "IQ1_M"):
                return "IQ2_XXS"
            if ft in ("IQ2_S", "IQ2_M"):
                return "IQ3_S"
        return new
    if cat == ATTN_V:
        i = c.take(ATTN_V)
        if ft == "Q2_K":
            new = "Q4_K" if gqa >= 4 else "Q3_K"
        elif ft == "Q2_K_S" and gqa >= 4:
            new = "Q4_K"
        elif ft == "IQ3_XXS":
            new = "Q4_K" if gqa >= 4 else ("IQ3_XXS" if ctx.imatrix else "IQ3_S")
        elif ft in ("IQ3_XS", "IQ3_S") and gqa >= 4:
            new = "Q4_K"
        elif ft == "IQ3_M":
            new = "Q4_K"
        elif ft == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif ft == "Q3_K_L":
            new = "Q5_K"
        elif ft in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
            new = "Q5_K"
        elif ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
            new = "Q6_K"
        elif ft == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if ctx.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if experts8:
            new = "Q8_0"
        return new
    if cat in (ATTN_K, ATTN_Q):
        if cat == ATTN_K and experts8:
            return "Q8_0"
        if ft == "IQ3_XS":
            return "IQ3_XXS"
        if ft == "IQ3_XXS":
            return "IQ2_S"
        return new
    if cat == FFN_DOWN:
        # a dense model's i-th ffn_down is layer i; with experts llama.cpp reads the layer from the name
        i = _layer_of(w, c.take(FFN_DOWN), ctx)
        if ft == "Q2_K":
            return "Q3_K"
        if ft == "Q2_K_S":
            return "Q4_K" if i < n // 8 else new
        if ft == "IQ3_XXS" and not ctx.imatrix:
            return "Q4_K" if i < n // 8 else "Q3_K"
        if ft == "Q3_K_M":
            return "Q5_K" if i < n // 16 else "Q4_K"
        if ft == "IQ3_M" and (i < n // 8 or (experts8 and _use_more_bits(i, n))):
            return "Q4_K"
        if ft == "Q3_K_L":
            return "Q5_K"
        if ft == "Q4_K_M":
            return "Q6_K" if _use_more_bits(i, n) else new
        if i < n // 8 and ft in ("IQ4_NL", "IQ4_XS") and not ctx.imatrix:
            return "Q5_K"
        if ft == "Q5_K_M" and _use_more_bits(i, n):
            return "Q6_K"
        if ft == "Q4_K_S" and i < n // 8:
            return "Q5_K"
        if ft in ("Q4_0", "Q5_0") and ctx.imatrix and i < n // 8:
            return "Q4_1" if ft == "Q4_0" else "Q5_1"
        return new
    if cat == ATTN_OUT:
        if experts8:
            return "Q5_K" if ft in _ATTN_OUT_Q5K_8_EXPERTS else new
        return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(ft, new)
    if cat in (FFN_GATE, FFN_UP):
        i = _layer_of(w, c.take(cat), ctx)
        if ft == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
            return "IQ3_XXS"
        return new
    return new


def _layer_of(w: Weight, i: int, ctx: MixContext) -> int:
    """``layer_info``: the counter for a dense model, the tensor's own block with more than one expert."""
    return w.layer if ctx.n_expert > 1 and w.layer is not None else i


def _fallback(ncols: int, wanted: str) -> str:
    """``tensor_type_fallback``: a compatible type when the block does not divide the row."""
    block = _block(wanted)
    if ncols % block == 0:
        return wanted
    got = _FALLBACK.get(wanted, wanted if block <= 32 else None)
    if got is None:
        got = "F16"
    if ncols % _block(got):
        got = "F16"
    return got


def _walk_order(ws: list[Weight]) -> list[Weight]:
    """The quantizer's order: tensors outside blocks first, then by block number, then by name."""
    return sorted(ws, key=lambda w: (-1 if w.layer is None else w.layer, w.gguf_name))


def choose_types(ws: list[Weight], ftype: str | FileType, ctx: MixContext) -> list[TensorChoice]:
    """The type of every GGUF tensor for one file type, in the quantizer's walk order.

    Tensors the converter writes as F32 (norms, biases, rope factors) stay F32; for the
    float file types (F32/F16/BF16) every quantizable tensor takes that type.
    """
    ft = file_type(ftype)
    base = ggml_type(ft.base)
    tied = not any(w.gguf_name == "output.weight" for w in ws)
    counters = _Counters()
    out: list[TensorChoice] = []
    for w in _walk_order(ws):
        if not quantizable(w):
            out.append(TensorChoice(w, "F32"))
            continue
        if not base.quantized:
            out.append(TensorChoice(w, base.name))
            continue
        wanted = _mix_rule(ft.name, base.name, w, category(w.gguf_name), ctx, tied, counters)
        got = _fallback(w.shape[0], wanted)
        needs = tensor_needs_imatrix(w.gguf_name, got, ft.name)
        out.append(TensorChoice(w, got, wanted if got != wanted else None, needs))
    return out
