"""THE architecture registry: every model family koquant knows, as data.

One :class:`Architecture` entry per family says everything the stages need to know about it:

- who it is: the Hugging Face classes and ``model_type`` it answers to, and the class koquant exports;
- where its modules are: decoder layers (``model.layers``), embedding, final norm, head;
- what a decoder layer holds: its two norms and its Linear layers (attention and MLP), each with
  its Hugging Face submodule name, its GGUF tensor name and the widths it maps between;
- its quirks: tied embeddings, sliding windows, q/k/v biases, final-logit soft-capping, what
  llama.cpp does with it;
- which exporters support it (``gguf``, ``onnx``, ``gptq``), with the ONNX builder's names for it,
  and, for a family only ``koquant plan`` knows, what is missing before it can be exported.

Export, runtime and bench get the entry of a checkpoint from :func:`resolve_architecture`
(:class:`~koquant.source.checkpoint.Checkpoint` does it), ``koquant plan`` from
:func:`architecture_for`. The module imports nothing heavy: ``koquant plan`` reads it without torch.

Adding a Llama-shaped architecture is one entry here plus its miniature in ``koquant.testing``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import CheckpointError, RecipeError

if TYPE_CHECKING:  # pragma: no cover
    from koquant.plan.model_spec import ModelSpec

__all__ = [
    "BACKENDS", "GGUF_LAYERS", "GGUF_EMBED", "GGUF_NORM", "GGUF_HEAD", "GGUF_ROPE_FREQS",
    "Linear", "Norm", "Dims", "OnnxNames", "Architecture", "Weight", "ARCHITECTURES",
    "MULTIMODAL", "architecture", "architecture_for", "resolve_architecture", "exportable_classes", "weights", "n_experts",
]

#: the exporters an entry can name in ``backends``
BACKENDS = ("gguf", "onnx", "gptq")

# GGUF's own tensor names (gguf-py constants.py, MODEL_TENSOR): the same for every architecture
GGUF_LAYERS = "blk"
GGUF_EMBED = "token_embd"
GGUF_NORM = "output_norm"
GGUF_HEAD = "output"
GGUF_ROPE_FREQS = "rope_freqs"
_HF_LAYERS = "model.layers"  # where transformers keeps the decoder layers of every family below


@dataclass(frozen=True)
class Linear:
    """One Linear of a decoder layer.

    ``hf``: its submodule inside a decoder layer; ``gguf``: its tensor inside ``blk.N.``.
    ``block``: the half of the layer it belongs to (``attention`` or ``mlp``; each half starts with
    its norm). ``in_dim``/``out_dim``: its widths, as :class:`Dims` field names. ``bias``: when it
    has a bias: ``qkv`` (the family's ``qkv_bias`` or the config's ``attention_bias``),
    ``attention`` (``attention_bias``), ``mlp`` (``mlp_bias``), ``none`` (never).
    """

    hf: str
    gguf: str
    block: str
    in_dim: str
    out_dim: str
    bias: str
    #: one per expert of a mixture-of-experts layer: ``hf`` holds ``{e}`` for the expert's index, and
    #: the GGUF stores all experts in one 3-D tensor ``gguf`` (``ffn_up_exps``: in x out x experts)
    expert: bool = False

    @property
    def router(self) -> bool:
        """A mixture of experts' router (one score per expert out): GPTQ keeps it in floating point."""
        return self.out_dim == "experts"

    def hf_names(self, n_experts: int | None) -> list[str]:
        """Its submodule name(s) inside a decoder layer: one per expert for an expert Linear."""
        return [self.hf.format(e=e) for e in range(n_experts or 0)] if self.expert else [self.hf]


@dataclass(frozen=True)
class Norm:
    """A norm of a decoder layer, in one half (``block``) of it.

    ``width``: ``hidden`` (the layer's pre- and post-norms) or ``head`` (Qwen 3's and Gemma 3's
    q/k norms, applied per attention head).
    """

    hf: str
    gguf: str
    block: str
    width: str = "hidden"


def n_experts(config: dict) -> int | None:
    """A mixture of experts' routed experts per layer from ``config.json``: ``num_experts`` as published,
    ``num_local_experts`` as transformers 5 saves it (Qwen3-MoE's config maps one to the other)."""
    return config.get("num_experts") or config.get("num_local_experts")


@dataclass(frozen=True)
class Dims:
    """The widths a decoder layer's Linears map between. ``intermediate`` None: not known."""

    hidden: int
    intermediate: int | None
    q: int  # attention heads x head_dim
    kv: int  # key/value heads x head_dim
    head: int = 0  # head_dim
    expert_intermediate: int | None = None  # an expert's intermediate width (moe_intermediate_size)
    experts: int | None = None  # routed experts per MoE layer (the router's output width)

    @classmethod
    def from_config(cls, config: dict) -> Dims:
        """The widths a Hugging Face ``config.json`` implies (its canonical keys)."""
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        head_dim = config.get("head_dim") or hidden // heads
        kv = config.get("num_key_value_heads") or heads
        return cls(hidden, config.get("intermediate_size"), heads * head_dim, kv * head_dim, head_dim,
                   config.get("moe_intermediate_size"), n_experts(config))


@dataclass(frozen=True)
class OnnxNames:
    """How onnxruntime-genai's model builder builds the family (0.18.0, builder.py ``create_model``).

    ``builder_model``: its model class. ``layers``: the layer prefix of its initializer names
    (``<layers>.N.<stem>.MatMul.weight_Q4``). ``linears``: each MatMulNBits weight stem of a layer
    -> the Hugging Face Linears (inside a decoder layer) it fuses, concatenated along the output
    dimension in this order.
    """

    builder_model: str
    layers: str
    linears: dict[str, tuple[str, ...]]

    def layer(self, i: int) -> str:
        """The prefix of decoder layer ``i``'s initializer names."""
        return f"{self.layers}.{i}"


@dataclass(frozen=True)
class Weight:
    """One stored tensor of the checkpoint, as ``koquant plan`` sizes it.

    ``shape`` is in ggml order: for a linear layer ``(in_features, out_features)``, so
    ``shape[0]`` is the row length that quantization blocks must divide.
    ``role`` is one of ``embed``, ``lm_head``, ``linear``, ``router`` (a mixture of experts' gate,
    ``ffn_gate_inp``: the converter writes it F32 and llama.cpp never quantizes it), ``norm``, ``bias``,
    ``rope_freqs``. ``hf_module`` is the Hugging Face module path for linears (what GPTQ quantizes).
    An expert Linear is one 3-D tensor ``(in, out, n_experts)`` (``ffn_up_exps``).
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

    @property
    def n_matrices(self) -> int:
        """How many ``in x out`` matrices it holds: the experts of a 3-D expert tensor, else 1."""
        return self.shape[2] if len(self.shape) > 2 else 1

    @property
    def is_expert(self) -> bool:
        """One of a mixture of experts' routed expert tensors (all experts of one projection)."""
        return Architecture.is_expert_weight(self.gguf_name)


@dataclass(frozen=True)
class Architecture:
    """What koquant knows about one model architecture.

    ``hf_classes``: the Hugging Face classes it answers to in ``koquant plan``; the first is the one
    koquant exports (``hf_class``), the one its backends key on. ``gguf_arch``: the llama.cpp
    architecture its GGUF is written as. ``gguf_drops_lm_head``: the llama.cpp converter never
    writes ``output.weight`` (Gemma: the head is always the token embedding). ``llama_cpp_window``:
    llama.cpp applies the config's sliding window to its KV cache (False for Mistral v0.1, which
    llama.cpp runs as plain Llama with full attention). ``rope_freqs``: llama3 rope scaling makes
    the converter write an F32 ``rope_freqs`` tensor. ``logit_softcap``: the model soft-caps its
    final logits by the config's ``final_logit_softcapping`` (``attn_softcap``: its attention scores
    by ``attn_logit_softcapping``). ``layer_types``: the config's ``layer_types`` gives each layer
    sliding-window or full attention (with its own rope base where the config has two).
    ``experts``: a mixture of experts (``num_experts`` routed, ``num_experts_per_tok`` per token).
    ``llama_cpp_swa_period``/``llama_cpp_swa_depth``: how the pinned llama.cpp picks its sliding
    layers (``load_swa_pattern`` in src/models/<arch>.cpp): every layer ``i`` with ``i % period <
    period - 1``, unless the GGUF carries a per-layer list, which the converter writes only where a
    depth is given and llama.cpp reads only at that depth (see :meth:`llama_cpp_sliding`). ``notes``: what ``koquant plan``
    adds to its assumptions; ``manifest_note``: what every export's manifest records.
    ``backends``: the exporters that support it; empty for a family only ``koquant plan`` knows,
    with ``missing`` saying what it lacks.
    """

    name: str
    hf_classes: tuple[str, ...]
    model_types: tuple[str, ...]
    gguf_arch: str
    tied_default: bool
    linears: tuple[Linear, ...]
    norms: tuple[Norm, ...]
    layers: str = _HF_LAYERS
    embed: str = "model.embed_tokens"
    norm: str = "model.norm"
    head: str = "lm_head"
    window_default: int | None = None
    window_requires_flag: str | None = None
    gguf_drops_lm_head: bool = False
    llama_cpp_window: bool = False
    qkv_bias: bool = False
    rope_freqs: bool = False
    logit_softcap: bool = False
    attn_softcap: bool = False
    layer_types: bool = False
    llama_cpp_swa_period: int | None = None
    llama_cpp_swa_depth: int | None = None
    experts: bool = False
    tokenizer_kind: str | None = None  # "spm"/"bpe" when the family always uses one
    notes: tuple[str, ...] = ()
    manifest_note: str = ""
    backends: tuple[str, ...] = ()
    onnx: OnnxNames | None = None
    unsupported: dict[str, str] = field(default_factory=dict)  # format -> why its pinned backend cannot
    missing: str = ""
    _layer_re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        unknown = set(self.backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"{self.name}: unknown backend(s) {sorted(unknown)}")
        if ("onnx" in self.backends) != (self.onnx is not None):
            raise ValueError(f"{self.name}: an ONNX-exportable architecture needs its builder names, and only it")
        if not self.backends and not self.missing:
            raise ValueError(f"{self.name}: no exporter supports it, so say what is missing")
        object.__setattr__(self, "_layer_re", re.compile(rf"^{re.escape(self.layers)}\.(\d+)\.(.+)$"))

    # ------------------------------------------------------------------ names
    @property
    def hf_class(self) -> str:
        return self.hf_classes[0]

    @property
    def model_type(self) -> str:
        return self.model_types[0]

    def layer(self, i: int) -> str:
        """The module path of decoder layer ``i``."""
        return f"{self.layers}.{i}"

    def split_layer(self, name: str) -> tuple[int, str] | None:
        """``model.layers.3.mlp.up_proj.weight`` -> ``(3, "mlp.up_proj.weight")``; None outside the layers."""
        m = self._layer_re.match(name)
        return (int(m.group(1)), m.group(2)) if m else None

    def linear(self, hf: str) -> Linear | None:
        """The decoder Linear whose submodule name (inside a layer) is ``hf``."""
        return next((lin for lin in self.linears if lin.hf == hf), None)

    def layer_linear(self, name: str) -> tuple[int, Linear] | None:
        """``model.layers.3.self_attn.q_proj`` (or its ``.weight``) -> ``(3, <q_proj>)``; None for anything else."""
        split = self.split_layer(name)
        lin = self.linear(split[1].removesuffix(".weight")) if split else None
        return (split[0], lin) if lin else None

    def linear_path(self, i: int, lin: Linear | None = None) -> str:
        """The module path of a Linear of decoder layer ``i`` (default: the layer's first)."""
        return f"{self.layer(i)}.{(lin or self.linears[0]).hf}"

    def gguf_linear(self, hf_module: str) -> str | None:
        """The GGUF weight of a decoder Linear: ``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q.weight``."""
        found = self.layer_linear(hf_module)
        return f"{GGUF_LAYERS}.{found[0]}.{found[1].gguf}.weight" if found else None

    # ------------------------------------------------------------------ shapes
    def linear_widths(self, dims: Dims) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of every decoder Linear whose widths ``dims`` knows."""
        out = {}
        for lin in self.linears:
            i, o = getattr(dims, lin.in_dim), getattr(dims, lin.out_dim)
            if i is not None and o is not None:
                out[lin.hf] = (i, o)
        return out

    def hf_shapes(self, dims: Dims, vocab: int, n_layers: int) -> dict[str, tuple[int, ...]]:
        """The safetensors shape (out, in) of every weight of the Hugging Face checkpoint."""
        h = dims.hidden
        shapes = {f"{self.embed}.weight": (vocab, h), f"{self.head}.weight": (vocab, h), f"{self.norm}.weight": (h,)}
        per_layer = {}
        for lin in self.linears:
            widths = self.linear_widths(dims).get(lin.hf)
            if widths is not None:
                per_layer.update({f"{n}.weight": widths[::-1] for n in lin.hf_names(dims.experts)})
        per_layer.update({f"{n.hf}.weight": (dims.head if n.width == "head" else h,) for n in self.norms})
        for i in range(n_layers):
            shapes.update({f"{self.layer(i)}.{k}": v for k, v in per_layer.items()})
        return shapes

    def llama_cpp_sliding(self, n_layers: int, layer_types: list[str] | tuple[str, ...] | None) -> tuple[bool, ...] | None:
        """The layers the pinned llama.cpp runs with the sliding window; None where it runs no window at all."""
        period = self.llama_cpp_swa_period
        if not period:
            return None
        if self.llama_cpp_swa_depth is not None:
            if n_layers != self.llama_cpp_swa_depth:
                return None
            if layer_types:  # the converter wrote them as the pattern array, which llama.cpp reads
                return tuple(t == "sliding_attention" for t in layer_types)
        return tuple(i % period < period - 1 for i in range(n_layers))

    # ------------------------------------------------------------------ experts
    def routed_share(self, config: dict) -> float:
        """The share of a mixture of experts' expert weights one token reads (experts per token / experts); 1 else."""
        if not self.experts:
            return 1.0
        return config["num_experts_per_tok"] / n_experts(config)

    @staticmethod
    def is_expert_weight(name: str) -> bool:
        """A tensor of one routed expert (``...mlp.experts.3.up_proj...``) or of all of them (GGUF ``ffn_up_exps``)."""
        return ".experts." in name or "_exps." in name

    # ------------------------------------------------------------------ backends
    def refusal(self, fmt: str | None = None) -> str | None:
        """Why koquant cannot export this architecture (to ``fmt``, or at all); None when it can."""
        if not self.backends:
            return f"no koquant exporter supports {self.hf_class} yet: {self.missing}"
        if fmt is None or fmt in self.backends:
            return None
        why = self.unsupported.get(fmt, f"{fmt} export does not support it")
        return f"{self.hf_class} cannot be exported to {fmt}: {why} (it exports to {', '.join(self.backends)})"


# --------------------------------------------------------------------------- the Llama layer
_LLAMA_LINEARS = (
    Linear("self_attn.q_proj", "attn_q", "attention", "hidden", "q", "qkv"),
    Linear("self_attn.k_proj", "attn_k", "attention", "hidden", "kv", "qkv"),
    Linear("self_attn.v_proj", "attn_v", "attention", "hidden", "kv", "qkv"),
    Linear("self_attn.o_proj", "attn_output", "attention", "q", "hidden", "attention"),
    Linear("mlp.gate_proj", "ffn_gate", "mlp", "hidden", "intermediate", "mlp"),
    Linear("mlp.up_proj", "ffn_up", "mlp", "hidden", "intermediate", "mlp"),
    Linear("mlp.down_proj", "ffn_down", "mlp", "intermediate", "hidden", "mlp"),
)
_LLAMA_NORMS = (
    Norm("input_layernorm", "attn_norm", "attention"),
    Norm("post_attention_layernorm", "ffn_norm", "mlp"),
)
_QK_NORMS = (  # per attention head, before rope (Qwen 3, Gemma 3, EXAONE 4)
    Norm("self_attn.q_norm", "attn_q_norm", "attention", "head"),
    Norm("self_attn.k_norm", "attn_k_norm", "attention", "head"),
)
_QK_NORMED = _LLAMA_NORMS + _QK_NORMS
_GEMMA2_NORMS = (  # a pre- and a post-norm around attention and around the MLP
    Norm("input_layernorm", "attn_norm", "attention"),
    Norm("post_attention_layernorm", "post_attention_norm", "attention"),
    Norm("pre_feedforward_layernorm", "ffn_norm", "mlp"),
    Norm("post_feedforward_layernorm", "post_ffw_norm", "mlp"),
)
_EXAONE4_NORMS = (  # post-norms only
    Norm("post_attention_layernorm", "post_attention_norm", "attention"),
    Norm("post_feedforward_layernorm", "post_ffw_norm", "mlp"),
) + _QK_NORMS
_MOE_LINEARS = (  # the router and each expert's SwiGLU MLP
    Linear("mlp.gate", "ffn_gate_inp", "mlp", "hidden", "experts", "none"),
    Linear("mlp.experts.{e}.gate_proj", "ffn_gate_exps", "mlp", "hidden", "expert_intermediate", "none", expert=True),
    Linear("mlp.experts.{e}.up_proj", "ffn_up_exps", "mlp", "hidden", "expert_intermediate", "none", expert=True),
    Linear("mlp.experts.{e}.down_proj", "ffn_down_exps", "mlp", "expert_intermediate", "hidden", "none", expert=True),
)
_Q, _K, _V, _O, _GATE, _UP, _DOWN = (lin.hf for lin in _LLAMA_LINEARS)
# the builder's MatMulNBits weights of a Llama-shaped layer: q/k/v fused into one
_LLAMA_BUILDER_LINEARS = {
    "attn.qkv_proj": (_Q, _K, _V),
    "attn.o_proj": (_O,),
    "mlp.gate_proj": (_GATE,),
    "mlp.up_proj": (_UP,),
    "mlp.down_proj": (_DOWN,),
}


def _llama_shaped(name: str, hf_classes: tuple[str, ...], gguf_arch: str, *, builder_model: str | None = None,
                  norms: tuple[Norm, ...] = _LLAMA_NORMS, model_types: tuple[str, ...] | None = None,
                  **quirks) -> Architecture:
    """A family with the Llama decoder Linears; ``builder_model``: every exporter supports it (the ONNX
    builder builds it as that class, naming its initializers after the Hugging Face module paths)."""
    exported = {}
    if builder_model is not None:
        exported = {"backends": BACKENDS, "onnx": OnnxNames(builder_model, _HF_LAYERS, _LLAMA_BUILDER_LINEARS)}
    return Architecture(name, hf_classes, model_types or (name,), gguf_arch, linears=_LLAMA_LINEARS, norms=norms,
                        **exported, **quirks)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        _llama_shaped(
            "llama", ("LlamaForCausalLM", "LLaMAForCausalLM"), "llama", builder_model="LlamaModel",
            tied_default=False, rope_freqs=True,
            notes=("Llama 3 rope scaling ('llama3') adds an F32 rope_freqs tensor to the GGUF",),
        ),
        _llama_shaped(
            "mistral", ("MistralForCausalLM",), "llama", builder_model="MistralModel",
            tied_default=False, window_default=4096, llama_cpp_window=False, rope_freqs=True,
            notes=("llama.cpp converts Mistral to the llama architecture and ignores its sliding window",),
            manifest_note="llama.cpp runs Mistral v0.1 without its sliding window; logits agree up to the window size",
        ),
        _llama_shaped(
            "gemma", ("GemmaForCausalLM",), "gemma", builder_model="GemmaModel",
            tied_default=True, gguf_drops_lm_head=True, tokenizer_kind="spm",
            notes=(
                "Gemma ties the head to the embedding: the GGUF has no output.weight and the token "
                "embedding is quantized like an output tensor (Q6_K in Q4_K_M)",
            ),
            manifest_note="tied embeddings: the GGUF has no output.weight; token_embd serves both",
        ),
        _llama_shaped(
            "qwen2", ("Qwen2ForCausalLM",), "qwen2", builder_model="QwenModel",
            tied_default=False, window_default=4096, window_requires_flag="use_sliding_window", qkv_bias=True,
            notes=("Qwen2 has q/k/v biases (kept F32 in GGUF)",),
        ),
        _llama_shaped(
            "qwen3", ("Qwen3ForCausalLM",), "qwen3", builder_model="Qwen3Model", norms=_QK_NORMED,
            tied_default=False, window_default=4096, window_requires_flag="use_sliding_window",
            notes=("Qwen3 normalizes queries and keys per head (attn_q_norm/attn_k_norm, F32 in GGUF)",),
        ),
        _llama_shaped(
            "gemma2", ("Gemma2ForCausalLM",), "gemma2", builder_model="Gemma2Model", norms=_GEMMA2_NORMS,
            tied_default=True, gguf_drops_lm_head=True, tokenizer_kind="spm", window_default=4096,
            llama_cpp_window=True, logit_softcap=True, attn_softcap=True, layer_types=True, llama_cpp_swa_period=2,
            notes=(
                "Gemma 2 soft-caps attention scores and final logits, and alternates sliding-window and "
                "full-attention layers",
                "tied embeddings: the GGUF has no output.weight",
            ),
            manifest_note="tied embeddings: the GGUF has no output.weight; token_embd serves both",
        ),
        _llama_shaped(
            "gemma3", ("Gemma3ForCausalLM",), "gemma3", builder_model="Gemma3Model",
            norms=_GEMMA2_NORMS + _QK_NORMS, model_types=("gemma3_text",),
            # unlike Gemma and Gemma 2, the converter's Gemma3Model does not skip lm_head.weight (and
            # llama.cpp's gemma3 loader takes an optional output.weight): a tied checkpoint, which stores no
            # lm_head, converts without output.weight
            tied_default=True, tokenizer_kind="spm", window_default=4096,
            llama_cpp_window=True, layer_types=True, llama_cpp_swa_period=6,
            notes=(
                "Gemma 3 gives each layer sliding-window (local rope base) or full attention (global rope "
                "base) by its layer_types",
                "tied embeddings: the GGUF has no output.weight (unless the checkpoint stores lm_head.weight)",
            ),
            manifest_note="tied embeddings: the GGUF has no output.weight; token_embd serves both",
        ),
        _llama_shaped(
            "exaone4", ("Exaone4ForCausalLM",), "exaone4", backends=("gguf", "gptq"), norms=_EXAONE4_NORMS,
            tied_default=False, window_default=4096, llama_cpp_window=True, layer_types=True, rope_freqs=True,
            llama_cpp_swa_period=4, llama_cpp_swa_depth=64,
            unsupported={"onnx": "onnxruntime-genai 0.18.0's model builder has no EXAONE 4 model"},
            notes=(
                "EXAONE 4 normalizes after attention and after the MLP (no pre-norms) and q/k per head; "
                "the 32B mixes sliding-window and full-attention layers",
                "its llama3 rope scaling makes the converter write an F32 rope_freqs tensor (conversion/exaone.py)",
            ),
        ),
        Architecture(
            "qwen3_moe", ("Qwen3MoeForCausalLM",), ("qwen3_moe",), "qwen3moe", tied_default=False,
            linears=_LLAMA_LINEARS[:4] + _MOE_LINEARS, norms=_QK_NORMED, experts=True,
            backends=("gguf", "gptq"),
            unsupported={"onnx": "onnxruntime-genai 0.18.0's model builder has no Qwen3-MoE model"},
            notes=(
                "Qwen3-MoE routes each token to num_experts_per_tok of num_experts experts: the GGUF stores "
                "each layer's experts as one 3-D tensor per projection (ffn_*_exps)",
            ),
        ),
    )
}


#: multimodal classes whose text model koquant exports, and how to get that text model
MULTIMODAL = {
    "Gemma3ForConditionalGeneration": (
        "Gemma3ForCausalLM",
        "load it with transformers and save its language model alone, e.g. "
        "Gemma3ForCausalLM.from_pretrained(PATH).save_pretrained(OUT) (transformers keeps the text weights "
        "and drops the vision tower), then export OUT",
    ),
}


# --------------------------------------------------------------------------- lookups
def architecture(hf_class: str) -> Architecture | None:
    """The entry that exports ``hf_class`` (its first class), or None."""
    return next((a for a in ARCHITECTURES.values() if a.hf_class == hf_class), None)


def exportable_classes() -> list[str]:
    """The Hugging Face classes at least one exporter supports, sorted."""
    return sorted(a.hf_class for a in ARCHITECTURES.values() if a.backends)


def resolve_architecture(config: dict, where: str = "config.json") -> Architecture:
    """The entry for an exported checkpoint's ``architectures[0]``, or a clear error.

    It must be the class an entry exports (the backends key on it), of an entry some exporter
    supports: export, runtime and bench accept only what koquant can export.
    """
    archs = config.get("architectures") or []
    if not archs:
        raise CheckpointError(
            f"{where} has no 'architectures' entry, so the model class is unknown",
            hint="add e.g. \"architectures\": [\"LlamaForCausalLM\"] to config.json",
        )
    name = archs[0]
    if name in MULTIMODAL:
        text_class, how = MULTIMODAL[name]
        raise CheckpointError(
            f"{name} in {where} is a multimodal model (text plus vision); koquant exports text models, "
            f"and exports this one's text model as {text_class}",
            hint=how,
        )
    arch = architecture(name) if isinstance(name, str) else None
    if arch is None:
        raise CheckpointError(
            f"unknown architecture {name!r} in {where}",
            hint="koquant supports " + ", ".join(exportable_classes()),
        )
    if not arch.backends:
        raise CheckpointError(
            f"{arch.refusal()} ({where})",
            hint="koquant exports " + ", ".join(exportable_classes()) + f"; `koquant plan` sizes {name} all the same",
        )
    return arch


def architecture_for(config) -> Architecture:
    """The entry for a config (a dict or a transformers config): by ``architectures``, then by ``model_type``."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    classes = get("architectures") or []
    if isinstance(classes, str):
        classes = [classes]
    model_type = get("model_type")
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


# --------------------------------------------------------------------------- the plan's weight list
def _head_is_stored(spec: ModelSpec) -> bool:
    """Untied models store ``lm_head``; tied ones only if the checkpoint has the tensor anyway."""
    if not spec.tied:
        return True
    return bool(spec.lm_head_in_checkpoint)


def _has_bias(lin: Linear, arch: Architecture, spec: ModelSpec) -> bool:
    if lin.bias == "none":
        return False
    if lin.bias == "qkv":
        return arch.qkv_bias or spec.attention_bias
    return spec.attention_bias if lin.bias == "attention" else spec.mlp_bias


def weights(spec: ModelSpec) -> list[Weight]:
    """All stored weights of the model, in checkpoint order (embedding, layers, head), with GGUF names."""
    arch = ARCHITECTURES[spec.arch]
    h = spec.hidden
    dims = Dims(h, spec.intermediate, spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim,
                spec.head_dim, spec.expert_intermediate, spec.n_experts)
    out = [Weight(f"{GGUF_EMBED}.weight", (h, spec.vocab), "embed", hf_module=arch.embed)]
    if arch.rope_freqs and spec.rope_type == "llama3":
        # convert_hf_to_gguf writes llama3 rope scaling as a per-frequency F32 tensor
        out.append(Weight(f"{GGUF_ROPE_FREQS}.weight", (spec.head_dim // 2,), "rope_freqs"))
    for i in range(spec.n_layers):
        p, m = f"{GGUF_LAYERS}.{i}.", f"{arch.layer(i)}."
        for block in dict.fromkeys(n.block for n in arch.norms):
            for norm in arch.norms:
                if norm.block == block:
                    out.append(Weight(f"{p}{norm.gguf}.weight", (spec.head_dim if norm.width == "head" else h,),
                                      "norm", i))
            for lin in arch.linears:
                if lin.block != block:
                    continue
                cols, rows = getattr(dims, lin.in_dim), getattr(dims, lin.out_dim)
                shape = (cols, rows, spec.n_experts) if lin.expert else (cols, rows)
                role = "router" if lin.router else "linear"
                out.append(Weight(f"{p}{lin.gguf}.weight", shape, role, i, m + lin.hf))
                if _has_bias(lin, arch, spec):
                    out.append(Weight(f"{p}{lin.gguf}.bias", (rows,), "bias", i))
    out.append(Weight(f"{GGUF_NORM}.weight", (h,), "norm"))
    if not arch.gguf_drops_lm_head and _head_is_stored(spec):
        out.append(Weight(f"{GGUF_HEAD}.weight", (h, spec.vocab), "lm_head", hf_module=arch.head))
    return out
