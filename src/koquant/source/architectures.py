"""Supported model architectures, as data.

Adding an architecture means one entry here (plus its miniature in ``koquant.testing``);
the exporters read what they need from the entry instead of branching on names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CheckpointError


@dataclass(frozen=True)
class Architecture:
    hf_class: str
    model_type: str
    # HF submodule name (inside ``model.layers.N.``) -> GGUF tensor name (inside ``blk.N.``)
    linear_names: dict[str, str] = field(default_factory=dict)
    notes: str = ""


_LLAMA_LINEARS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

ARCHITECTURES: dict[str, Architecture] = {
    a.hf_class: a
    for a in (
        Architecture("LlamaForCausalLM", "llama", _LLAMA_LINEARS),
        Architecture(
            "MistralForCausalLM",
            "mistral",
            _LLAMA_LINEARS,
            notes="llama.cpp runs Mistral v0.1 without its sliding window; logits agree up to the window size",
        ),
        Architecture(
            "GemmaForCausalLM",
            "gemma",
            _LLAMA_LINEARS,
            notes="tied embeddings: the GGUF has no output.weight; token_embd serves both",
        ),
    )
}


def resolve_architecture(config: dict, where: str = "config.json") -> Architecture:
    """Find the entry for a config's ``architectures[0]`` or raise a clear error."""
    archs = config.get("architectures") or []
    if not archs:
        raise CheckpointError(
            f"{where} has no 'architectures' entry, so the model class is unknown",
            hint="add e.g. \"architectures\": [\"LlamaForCausalLM\"] to config.json",
        )
    name = archs[0]
    if name not in ARCHITECTURES:
        raise CheckpointError(
            f"unknown architecture {name!r} in {where}",
            hint="koquant supports " + ", ".join(sorted(ARCHITECTURES)),
        )
    return ARCHITECTURES[name]
