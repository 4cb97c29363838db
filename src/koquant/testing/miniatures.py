"""Miniature checkpoints of the five seed families and of every other registered architecture.

Each miniature keeps what makes its family hard to export - the HF class, the GQA ratio,
rope theta, Gemma's tied embeddings and 256-wide heads, Mistral's sliding window, the real
tokenizer kind and the exact prompt format - at dimensions small enough for a laptop, but
multiples of 256 so llama.cpp's K-quants never fall back. Builds are deterministic and
cached under ``$KOQUANT_CACHE/miniatures`` (default ``~/.cache/koquant``); weights are never
committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import KoquantError
from ..procs import cache_root
from . import templates

BUILD_VERSION = 4  # bump when the build recipe changes, to invalidate caches

_COMMON = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "torch_dtype": "float32",
    "use_cache": True,
}


@dataclass(frozen=True)
class Family:
    id: str  # miniature name
    seed_id: str  # the real model it stands for (shared/seed-models.md, or the plan preset)
    hf_class: str
    model_type: str
    tokenizer_kind: str  # koquant.testing.tokenizers.TOKENIZER_KINDS
    chat_template: str  # the template itself, or the name of a real one (koquant.testing.templates.chat_template)
    config: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    # Every miniature is briefly trained on kobill, so its next-token distributions are peaked like a real
    # model's (a random model's near-uniform logits make top-1 agreement a coin toss). The default model is
    # trained longest, so that quality numbers (perplexity, imatrix gains) mean something.
    train: dict = field(default_factory=lambda: {"steps": 40, "batch": 4, "seq_len": 128})


FAMILIES: dict[str, Family] = {
    f.id: f
    for f in (
        Family(
            "ocelot-mini", "ocelot-10.8b", "LlamaForCausalLM", "llama", "korean-spm-llama", templates.OCELOT,
            # deeper and wider than the others, so that (as in the real 10.8B model) the transformer
            # blocks, not the embeddings, hold most weights and decide quantization quality
            {**_COMMON, "num_hidden_layers": 8, "intermediate_size": 1024, "rope_theta": 10000.0,
             "max_position_embeddings": 4096},
            {"do_sample": True, "temperature": 0.2, "max_new_tokens": 4096},
            train={"steps": 150, "batch": 8, "seq_len": 256, "lr": 1.5e-3},
        ),
        Family(
            "synatra-mini", "synatra-7b", "MistralForCausalLM", "mistral", "mistral-v1", templates.SYNATRA,
            {**_COMMON, "rope_theta": 10000.0, "max_position_embeddings": 32768, "sliding_window": 4096},
            {"do_sample": True, "max_new_tokens": 1000},
        ),
        Family(
            "komt-mini", "komt-mistral-7b", "MistralForCausalLM", "mistral", "mistral-v1", templates.KOMT,
            {**_COMMON, "rope_theta": 10000.0, "max_position_embeddings": 32768, "sliding_window": 4096},
            {"do_sample": True, "temperature": 0.8, "top_p": 0.8, "top_k": 100, "max_new_tokens": 1024},
        ),
        Family(
            "llama3-ko-mini", "llama3-ko-8b-aog", "LlamaForCausalLM", "llama", "llama3-bpe", templates.AOG,
            {**_COMMON, "rope_theta": 500000.0, "max_position_embeddings": 8192},
            {"do_sample": False, "max_new_tokens": 512},
        ),
        Family(
            "gemma-ko-mini", "gemma-ko-2b", "GemmaForCausalLM", "gemma", "korean-spm-gemma", templates.GEMMA,
            {**_COMMON, "intermediate_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 1,
             "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh",
             "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True},
            {"do_sample": True, "temperature": 0.1, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.2,
             "max_new_tokens": 512},
        ),
        # ---- the classes Korean models are built on since 2025 (issue 15). Sliding windows are
        # smaller than an evaluation chunk, so the layers of each attention type really differ.
        Family(
            "qwen2-ko-mini", "ax-4.0-light", "Qwen2ForCausalLM", "qwen2", "qwen2-bpe", "qwen2.5",
            {**_COMMON, "rope_theta": 1000000.0, "max_position_embeddings": 32768, "tie_word_embeddings": False,
             "use_sliding_window": False},
            {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
             "max_new_tokens": 512},
        ),
        Family(
            # Qwen3's head_dim (128) is not hidden/heads: the attention is wider than the model
            "qwen3-ko-mini", "qwen3-ko", "Qwen3ForCausalLM", "qwen3", "qwen3-bpe", "qwen3",
            {**_COMMON, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128, "rms_norm_eps": 1e-6,
             "rope_theta": 1000000.0, "max_position_embeddings": 40960, "tie_word_embeddings": True,
             "use_sliding_window": False},
            {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_new_tokens": 512},
        ),
        Family(
            "gemma2-ko-mini", "gemma2-ko", "Gemma2ForCausalLM", "gemma2", "korean-spm-gemma", "gemma2",
            {**_COMMON, "intermediate_size": 1024, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 256, "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh",
             "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 8192,
             "sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"],
             "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "tie_word_embeddings": True},
            {"do_sample": True, "temperature": 0.7, "max_new_tokens": 512},
        ),
        Family(
            # Gemma 3: five local layers (sliding window, rope base 10k) to one global (full, 1M), as released
            "gemma3-ko-mini", "gemma3-ko", "Gemma3ForCausalLM", "gemma3_text", "korean-spm-gemma", "gemma3",
            {**_COMMON, "num_hidden_layers": 6, "intermediate_size": 1024, "num_attention_heads": 4,
             "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256,
             "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
             "sliding_window": 128, "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
             "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                 "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
             "tie_word_embeddings": True},
            {"do_sample": True, "temperature": 1.0, "top_k": 64, "top_p": 0.95, "max_new_tokens": 512},
        ),
        Family(
            # EXAONE 4.0 1.2B's layout: post-norms, q/k norms, every layer full attention, tied head
            "exaone4-mini", "exaone-4.0-1.2b", "Exaone4ForCausalLM", "exaone4", "exaone4-bpe", "exaone4",
            {**_COMMON, "rope_theta": 1000000.0, "max_position_embeddings": 65536, "tie_word_embeddings": True,
             "sliding_window": None, "layer_types": ["full_attention"] * 2},
            {"do_sample": False, "max_new_tokens": 512},
        ),
        Family(
            # a 30B-A3B-class mixture of experts: 8 experts, 2 per token, every layer sparse
            "qwen3moe-ko-mini", "qwen3-30b-a3b", "Qwen3MoeForCausalLM", "qwen3_moe", "qwen3-bpe", "qwen3",
            {**_COMMON, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "rms_norm_eps": 1e-6,
             "moe_intermediate_size": 256, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True,
             "decoder_sparse_step": 1, "mlp_only_layers": [], "rope_theta": 1000000.0,
             "max_position_embeddings": 40960, "tie_word_embeddings": False, "use_sliding_window": False},
            {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_new_tokens": 512},
        ),
    )
}
DEFAULT_MODEL = "ocelot-mini"
#: the five seed families of shared/seed-models.md (their exact prompt formats are tested per family)
SEED_FAMILIES = ("ocelot-mini", "synatra-mini", "komt-mini", "llama3-ko-mini", "gemma-ko-mini")


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KoquantError(f"no miniature called {name!r}", hint="choose one of " + ", ".join(FAMILIES))
    return FAMILIES[name]


def cache_dir() -> Path:
    return cache_root() / "miniatures"


def _key(fam: Family, trained: bool) -> str:
    import torch
    import transformers

    blob = json.dumps(
        {"family": asdict(fam), "trained": trained, "v": BUILD_VERSION,
         "torch": torch.__version__, "transformers": transformers.__version__},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_miniature(name: str = DEFAULT_MODEL, *, trained: bool = True, root: Path | None = None,
                    progress=None) -> Path:
    """The folder of a miniature checkpoint, built and briefly trained once, then cached.

    ``trained=False`` gives the random-weight model (for tests of structure, not quality).
    """
    fam = get_family(name)
    root = Path(root) if root else cache_dir()
    dest = root / f"{fam.id}{'' if trained else '-random'}-{_key(fam, trained)}"
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{fam.id}-") as tmp:
        work = Path(tmp) / "model"
        _build(fam, work, trained, progress)
        try:
            os.rename(work, dest)
        except OSError:  # built concurrently by another process: keep theirs
            if not (dest / "model.safetensors").is_file():
                raise
    return dest


def _template_text(value: str) -> str:
    """A family's chat template: ``value`` itself (jinja text), or the real template of that name."""
    return value if "{" in value else templates.chat_template(value)


def _build(fam: Family, out: Path, trained: bool, progress) -> None:
    import torch
    import transformers

    from .tokenizers import write_tokenizer

    out.mkdir(parents=True)
    tok_info = write_tokenizer(fam.tokenizer_kind, out, chat_template=_template_text(fam.chat_template))
    cfg = transformers.AutoConfig.for_model(
        fam.model_type,
        **fam.config,
        vocab_size=tok_info["vocab_size"],
        bos_token_id=tok_info["bos_token_id"],
        eos_token_id=tok_info["eos_token_id"],
        pad_token_id=tok_info.get("pad_token_id"),
    )
    cfg.architectures = [fam.hf_class]
    torch.manual_seed(int(hashlib.sha256(fam.id.encode()).hexdigest()[:8], 16))
    model = getattr(transformers, fam.hf_class)(cfg).to(torch.float32).eval()
    if trained:
        from .train import train_on_korean

        train_on_korean(model, out, **fam.train, progress=progress)
    # Like the seed models (trained in bf16, published in bf16), every weight is a bf16 value;
    # it is stored as float32, so the source is exact and F16/BF16 exports are lossless.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    model.save_pretrained(out)
    gen = {"bos_token_id": tok_info["bos_token_id"], "eos_token_id": tok_info["eos_token_id"], **fam.generation}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    # save_pretrained may rewrite tokenizer-side files; make sure the originals are in place
    for extra in out.glob("*.bin"):
        extra.unlink()


def materialize(name: str, dest: Path, **kw) -> Path:
    """A private copy of a miniature (for tests that damage or edit the folder)."""
    src = build_miniature(name, **kw)
    shutil.copytree(src, dest)
    return dest
