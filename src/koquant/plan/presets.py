"""Real configurations of the five seed families, so ``koquant plan --preset ID`` works offline.

The numbers are the published ``config.json`` values (see ``shared/seed-models.md``). Two
reference models used to check the planner against llama.cpp's published sizes are listed
too, marked ``seed=False``, and so are the current Korean models (SKT A.X 4.0 Light, LG EXAONE
4.0 1.2B and 32B) and the Gemma 3 / Qwen 3 / Qwen3-MoE classes they are compared with. Those were
written from the published config.json values as remembered, without network access: each says
where it comes from, and what is not certain is marked "unsure" (none of it changes a GGUF size by
more than a fraction of a percent unless said).

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
from koquant.plan.vocab_footprint import VocabFootprint, estimated_footprint

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

# byte-level BPE of Qwen 2/2.5/3: 151643 tokens + 22 added ones, padded to vocab_size with [PAD] ids by the
# converter; 151387 merges (Qwen's tokenizer.json); token text bytes estimated
def _bpe(vocab: int, merges: int | None, template: int, source: str) -> VocabFootprint:
    est = estimated_footprint(vocab, "bpe", template)
    if merges is None:
        return VocabFootprint("bpe", vocab, est.token_text_bytes, est.n_merges, est.merge_text_bytes, template,
                              f"estimate: {source}")
    return VocabFootprint("bpe", vocab, est.token_text_bytes, merges, round(merges * 10.58), template,
                          f"estimate: {source}")


_QWEN_BPE = _bpe(151936, 151387, 4000, "Qwen2/3 BPE, 151387 merges")
_EXAONE_BPE = _bpe(102400, None, 2500, "EXAONE 4.0 BPE, 102400 ids (merges unknown)")
_AX_BPE = _bpe(102400, None, 1500, "A.X 4.0 BPE, 102400 ids (merges unknown)")
_GEMMA3_SPM = VocabFootprint("spm", 262208, round(262208 * 6.4), chat_template_bytes=1500,
                             source="estimate: Gemma 3 SentencePiece (262144 pieces, padded to 262208)")

_LLLG = ["sliding_attention"] * 3 + ["full_attention"]
_EXAONE4_ROPE = {  # EXAONE 4.0's config.json: llama3 scaling (the converter then writes rope_freqs)
    "rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _cfg(arch: str, **values) -> dict:
    return {"architectures": [arch], "model_type": architecture(arch).model_type, "torch_dtype": "bfloat16", **values}


_PRESET_LIST += (
    Preset(
        "ax-4.0-light",
        "SKT A.X 4.0 Light (Qwen2.5-7B-shaped, Korean 102400-token vocabulary)",
        # skt/A.X-4.0-Light config.json: Qwen2ForCausalLM with vocab_size 102400. The layer widths are
        # Qwen2.5-7B's (A.X 4.0 continues Qwen2.5): hidden 3584, 28 layers, 28 heads / 4 KV, FFN 18944
        # (unsure: recalled, not re-read); max_position_embeddings 16384 (unsure); q/k/v biases (Qwen2)
        _cfg("Qwen2ForCausalLM", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
             num_attention_heads=28, num_key_value_heads=4, vocab_size=102400, max_position_embeddings=16384,
             rope_theta=1000000.0, tie_word_embeddings=False, use_sliding_window=False, sliding_window=None),
        _AX_BPE,
        seed=False,
    ),
    Preset(
        "exaone-4.0-1.2b",
        "LG EXAONE 4.0 1.2B (full attention on every layer, tied embeddings)",
        # LGAI-EXAONE/EXAONE-4.0-1.2B config.json: 30 layers (llama.cpp's LLM_TYPE_1_2B), hidden 2048,
        # FFN 4096, 32 heads / 8 KV x 64, vocab 102400, tied; 1.07 B parameters without embeddings as the
        # model card says. layer_types all full_attention; max_position_embeddings 65536, rope_theta 1e6 and
        # llama3 rope scaling (unsure for the 1.2B: at most a 128-byte rope_freqs tensor);
        # sliding_window written null here (unsure: the file may carry 4096 with no sliding layer; same plan)
        _cfg("Exaone4ForCausalLM", hidden_size=2048, intermediate_size=4096, num_hidden_layers=30,
             num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=102400,
             max_position_embeddings=65536, rope_theta=1000000.0, rope_scaling=_EXAONE4_ROPE,
             tie_word_embeddings=True, sliding_window=None, layer_types=["full_attention"] * 30),
        _EXAONE_BPE,
        seed=False,
    ),
    Preset(
        "exaone-4.0-32b",
        "LG EXAONE 4.0 32B (three sliding-window layers to one full, window 4096)",
        # LGAI-EXAONE/EXAONE-4.0-32B config.json: 64 layers, hidden 5120, FFN 27392, 40 heads / 8 KV x 128,
        # vocab 102400, untied (30.95 B parameters without embeddings, as the model card says);
        # sliding_window 4096, sliding_window_pattern "LLLG" with layer_types to match;
        # max_position_embeddings 131072, rope_theta 1e6, llama3 rope scaling factor 16 from 8192
        _cfg("Exaone4ForCausalLM", hidden_size=5120, intermediate_size=27392, num_hidden_layers=64,
             num_attention_heads=40, num_key_value_heads=8, head_dim=128, vocab_size=102400,
             max_position_embeddings=131072, rope_theta=1000000.0, rope_scaling=_EXAONE4_ROPE,
             tie_word_embeddings=False, sliding_window=4096, sliding_window_pattern="LLLG", layer_types=_LLLG * 16),
        _EXAONE_BPE,
        seed=False,
    ),
    Preset(
        "gemma-3-4b",
        "reference: Gemma 3 4B text model (Gemma3ForCausalLM), five 1024-window layers to one global",
        # google/gemma-3-4b-it text_config with Gemma3TextConfig's defaults filled in (what
        # Gemma3ForCausalLM.save_pretrained writes): hidden 2560, 34 layers, 8 heads / 4 KV x 256, FFN 10240,
        # vocab 262208, sliding_window 1024 on five of six layers, rope_theta 1e6 global / 1e4 local with
        # linear scaling 8, max_position_embeddings 131072, tied. (The published -it GGUFs convert from the
        # multimodal config, whose text_config has no vocab_size: their token_embd has the tokenizer's 262144
        # rows, 64 fewer; 0.004 % of the file.)
        _cfg("Gemma3ForCausalLM", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
             num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208,
             max_position_embeddings=131072, rope_theta=1000000.0, rope_local_base_freq=10000.0,
             rope_scaling={"rope_type": "linear", "factor": 8.0}, query_pre_attn_scalar=256,
             sliding_window=1024, layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 5
             + ["sliding_attention"] * 4, tie_word_embeddings=True),
        _GEMMA3_SPM,
        seed=False,
    ),
    Preset(
        "qwen3-8b",
        "reference: Qwen3-8B (q/k norms, untied)",
        # Qwen/Qwen3-8B config.json: hidden 4096, 36 layers, 32 heads / 8 KV x 128, FFN 12288, vocab 151936,
        # max_position_embeddings 40960, rope_theta 1e6, tie_word_embeddings false
        _cfg("Qwen3ForCausalLM", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
             num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
             max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=False,
             use_sliding_window=False),
        _QWEN_BPE,
        seed=False,
    ),
    Preset(
        "qwen3-30b-a3b",
        "reference: Qwen3-30B-A3B mixture of experts (128 experts, 8 per token)",
        # Qwen/Qwen3-30B-A3B config.json: hidden 2048, 48 layers, 32 heads / 4 KV x 128, 128 experts of FFN
        # 768, 8 per token, every layer sparse (decoder_sparse_step 1, mlp_only_layers []), vocab 151936,
        # max_position_embeddings 40960, rope_theta 1e6, untied; intermediate_size 6144 is unused
        _cfg("Qwen3MoeForCausalLM", hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
             num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
             moe_intermediate_size=768, decoder_sparse_step=1, mlp_only_layers=[], vocab_size=151936,
             max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=False,
             use_sliding_window=False),
        _QWEN_BPE,
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
