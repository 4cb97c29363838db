"""Real configurations of the five seed families, so ``koquant plan --preset ID`` works offline.

The numbers are the published ``config.json`` values (see ``shared/seed-models.md``). Two
reference models used to check the planner against llama.cpp's published sizes are listed
too, marked ``seed=False``.

Tokenizer footprints: Mistral v0.1 and Llama 3 are measured from their real tokenizer
files (mistral-common's ``tokenizer.model.v1``; llama-models' tiktoken file converted to a
``tokenizer.json``: 280147 merges). EEVE (32000 Llama-2 pieces + 8960 Korean pieces) and
Gemma (256000 pieces) are estimates: their tokenizers do not ship on PyPI.
"""

from __future__ import annotations

from dataclasses import dataclass

from koquant.errors import RecipeError
from koquant.source.architectures import architecture
from koquant.plan.model_spec import ModelSpec, spec_from_config
from koquant.plan.vocab_footprint import VocabFootprint

__all__ = ["Preset", "PRESETS", "preset", "preset_spec", "SEED_IDS"]


@dataclass(frozen=True)
class Preset:
    id: str
    description: str
    config: dict
    vocab: VocabFootprint
    seed: bool = True


def _llama_like(arch: str, layers: int, vocab: int, max_pos: int, theta: float, **extra) -> dict:
    cfg = {
        "architectures": [arch],
        "model_type": architecture(arch).model_type,
        "num_hidden_layers": layers,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos,
        "rope_theta": theta,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    cfg.update(extra)
    return cfg


_MISTRAL_V01_SPM = VocabFootprint(
    "spm", 32000, 204670, chat_template_bytes=400, source="measured: Mistral v0.1 tokenizer.model"
)
_LLAMA3_BPE = VocabFootprint(
    "bpe",
    128256,
    1068763,
    280147,
    2963589,
    chat_template_bytes=300,
    source="measured: Llama 3 tiktoken -> tokenizer.json",
)

_PRESET_LIST = (
    Preset(
        "ocelot-10.8b",
        "Solar 10.7B depth-up-scaled Llama via EEVE-Korean-Instruct-10.8B (Korean vocabulary extension)",
        _llama_like("LlamaForCausalLM", 48, 40960, 4096, 10000.0),
        VocabFootprint(
            "spm",
            40960,
            204670 + 8960 * 8,
            chat_template_bytes=600,
            source="estimate: Llama 2 pieces + 8960 Korean pieces",
        ),
    ),
    Preset(
        "synatra-7b",
        "Mistral-7B-Instruct-v0.1 fine-tune (Synatra), sliding window 4096",
        _llama_like("MistralForCausalLM", 32, 32000, 32768, 10000.0, sliding_window=4096),
        _MISTRAL_V01_SPM,
    ),
    Preset(
        "komt-mistral-7b",
        "Mistral-7B-Instruct-v0.1 fine-tune (komt), sliding window 4096",
        _llama_like("MistralForCausalLM", 32, 32000, 32768, 10000.0, sliding_window=4096),
        _MISTRAL_V01_SPM,
    ),
    Preset(
        "llama3-ko-8b-aog",
        "Llama-3-Open-Ko-8B (Llama 3) fine-tune",
        _llama_like("LlamaForCausalLM", 32, 128256, 8192, 500000.0),
        _LLAMA3_BPE,
    ),
    Preset(
        "gemma-ko-2b",
        "Gemma-2B-it fine-tune, tied embeddings",
        {
            "architectures": ["GemmaForCausalLM"],
            "model_type": "gemma",
            "num_hidden_layers": 18,
            "hidden_size": 2048,
            "intermediate_size": 16384,
            "num_attention_heads": 8,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "vocab_size": 256000,
            "max_position_embeddings": 8192,
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "bfloat16",
        },
        VocabFootprint(
            "spm", 256000, round(256000 * 7.5), chat_template_bytes=300, source="estimate: Gemma SentencePiece"
        ),
    ),
    Preset(
        "llama-3.1-8b",
        "reference: Meta Llama-3.1-8B (llama.cpp's quantize README sizes)",
        _llama_like(
            "LlamaForCausalLM",
            32,
            128256,
            131072,
            500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
        _LLAMA3_BPE,
        seed=False,
    ),
    Preset(
        "mistral-7b-v0.1",
        "reference: Mistral-7B-v0.1 base model",
        _llama_like("MistralForCausalLM", 32, 32000, 32768, 10000.0, sliding_window=4096),
        _MISTRAL_V01_SPM,
        seed=False,
    ),
)

PRESETS: dict[str, Preset] = {p.id: p for p in _PRESET_LIST}
SEED_IDS: tuple[str, ...] = tuple(p.id for p in _PRESET_LIST if p.seed)


def preset(name: str) -> Preset:
    found = PRESETS.get(str(name).lower())
    if found is None:
        raise RecipeError(f"unknown preset {name!r}", hint="known presets: " + ", ".join(PRESETS))
    return found


def preset_spec(name: str) -> ModelSpec:
    p = preset(name)
    return spec_from_config(p.config, name=p.id, source=f"preset:{p.id}").with_(vocab_footprint=p.vocab)
