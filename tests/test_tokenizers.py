"""Tokenizer files of the miniatures: determinism, errors, and id parity with llama.cpp."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from koquant.errors import KoquantError
from koquant.testing.tokenizers import (
    TOKENIZER_KINDS,
    korean_text,
    trained_spm_model,
    write_tokenizer,
)

_ARCH = {
    "korean-spm-llama": ("LlamaForCausalLM", "llama"),
    "mistral-v1": ("MistralForCausalLM", "mistral"),
    "llama3-bpe": ("LlamaForCausalLM", "llama"),
    "korean-spm-gemma": ("GemmaForCausalLM", "gemma"),
}

# Prompt-format strings with special tokens written as text (parsed as specials on both sides).
_SPECIAL_TEXTS = {
    "korean-spm-llama": ["<s>[INST] 안녕 [/INST]", "</s><s> 앞 공백", " 자기소개서 첨삭</s>"],
    "mistral-v1": ["<s>[INST] 안녕 [/INST]", "<s>[INST] 안녕 [\\INST] ", "[INST]안녕 [/INST]", "  world</s>"],
    "llama3-bpe": [
        "<|begin_of_text|>### Question:\n안녕\n\n### Response:\n",
        "<|start_header_id|>user<|end_header_id|>\n\n안녕<|eot_id|>",
        "답<|end_of_text|>",
    ],
    "korean-spm-gemma": [
        "<start_of_turn>user\n안녕<end_of_turn>\n<start_of_turn>model\n",
        "Instruction: 요약 할 문장 :\n[ 회의 ]\n output:",
        "<bos> x<eos>",
    ],
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _llama_cpp_src() -> Path:
    """The vendored llama.cpp folder (converter + gguf-py) of the pinned binding."""
    from koquant.exporters.gguf.llamacpp import llama_cpp_source

    return llama_cpp_source()


def _convert_vocab(model_dir: Path, src: Path) -> Path:
    out = model_dir / "vocab.gguf"
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir),
         "--outfile", str(out), "--outtype", "f32", "--vocab-only"],
        env=env, check=True, capture_output=True,
    )
    return out


def test_unknown_kind_lists_known_kinds(tmp_path):
    with pytest.raises(KoquantError) as err:
        write_tokenizer("bert-wordpiece", tmp_path)
    for kind in TOKENIZER_KINDS:
        assert kind in str(err.value)


@pytest.mark.parametrize("kind", ["korean-spm-llama", "korean-spm-gemma"])
def test_training_is_deterministic(kind, tmp_path):
    first = trained_spm_model(kind, tmp_path / "a")
    second = trained_spm_model(kind, tmp_path / "b")
    assert first.name == second.name
    assert _sha256(first) == _sha256(second)
    assert trained_spm_model(kind, tmp_path / "a") == first  # served from the cache


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_written_files_are_deterministic_and_load(kind, tmp_path):
    from transformers import AutoTokenizer

    infos = [
        write_tokenizer(kind, tmp_path / name, chat_template="{{ messages[0]['content'] }}",
                        cache_dir=tmp_path / "cache")
        for name in ("a", "b")
    ]
    assert infos[0] == infos[1]
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert ("tokenizer.model" in files) == (kind != "llama3-bpe")
    for name in files:
        assert _sha256(tmp_path / "a" / name) == _sha256(tmp_path / "b" / name), name

    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert len(tok) == infos[0]["vocab_size"]
    assert tok.bos_token_id == infos[0]["bos_token_id"]
    assert tok.eos_token_id == infos[0]["eos_token_id"]
    assert tok.pad_token_id == infos[0]["pad_token_id"]
    assert tok("안녕")["input_ids"][0] == infos[0]["bos_token_id"]
    assert tok.apply_chat_template([{"role": "user", "content": "안녕"}], tokenize=False) == "안녕"


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_ids_match_llama_cpp(kind, tmp_path):
    src = _llama_cpp_src()
    import llama_cpp
    from transformers import AutoTokenizer

    model_dir = tmp_path / kind
    info = write_tokenizer(kind, model_dir, cache_dir=tmp_path / "cache")
    arch, model_type = _ARCH[kind]
    config = {
        "architectures": [arch], "model_type": model_type, "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "vocab_size": info["vocab_size"],
        "bos_token_id": info["bos_token_id"], "eos_token_id": info["eos_token_id"],
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    gguf = _convert_vocab(model_dir, src)

    hf = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    text = korean_text("kolaw/constitution.txt")
    hf_ids = hf(text)["input_ids"]
    assert hf_ids[0] == info["bos_token_id"]
    assert hf_ids == llm.tokenize(text.encode(), add_bos=True, special=False)
    for sample in _SPECIAL_TEXTS[kind]:
        assert hf(sample)["input_ids"] == llm.tokenize(sample.encode(), add_bos=True, special=True), sample
