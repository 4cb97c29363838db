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
from koquant.source.chat_template import TemplateError, render_chat
from koquant.testing.templates import TEMPLATE_FILES, TEMPLATE_NAMES, chat_template
from koquant.testing.tokenizers import (
    TOKENIZER_KINDS,
    korean_text,
    trained_exaone4_tokenizer,
    trained_spm_model,
    write_tokenizer,
)

# Kinds llama.cpp's converter takes (exaone4-bpe's trained vocabulary has an unknown pre-tokenizer hash).
_ARCH = {
    "korean-spm-llama": ("LlamaForCausalLM", "llama"),
    "mistral-v1": ("MistralForCausalLM", "mistral"),
    "llama3-bpe": ("LlamaForCausalLM", "llama"),
    "korean-spm-gemma": ("GemmaForCausalLM", "gemma"),
    "qwen2-bpe": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3-bpe": ("Qwen3ForCausalLM", "qwen3"),
}
_SPM_KINDS = ("korean-spm-llama", "mistral-v1", "korean-spm-gemma")

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
    "qwen2-bpe": [
        "<|im_start|>system\n당신은 비서입니다.<|im_end|>\n<|im_start|>user\n안녕<|im_end|>\n<|im_start|>assistant\n",
        "답<|endoftext|>",
    ],
    "qwen3-bpe": [
        "<|im_start|>user\n안녕<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n답<|im_end|>",
        "<tool_call>\n{\"name\": \"검색\"}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n결과\n</tool_response>",
    ],
}

_KOREAN_CHAT = [
    {"role": "user", "content": "안녕하세요? 자기소개를 부탁드려요."},
    {"role": "assistant", "content": "네, 저는 한국어로 답하는 비서입니다."},
    {"role": "user", "content": "대한민국 헌법 제1조는 무엇인가요?"},
]
_SYSTEM = {"role": "system", "content": "당신은 친절한 한국어 비서입니다."}


@pytest.fixture(scope="module")
def tok_cache(tmp_path_factory):
    """One tokenizer cache for the module: trained models and the parsed Qwen2 GGUF are made once."""
    return tmp_path_factory.mktemp("tokenizer-cache")


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
def test_written_files_are_deterministic_and_load(kind, tmp_path, tok_cache):
    from transformers import AutoTokenizer

    infos = [
        write_tokenizer(kind, tmp_path / name, chat_template="{{ messages[0]['content'] }}",
                        cache_dir=tok_cache)
        for name in ("a", "b")
    ]
    assert infos[0] == infos[1]
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert ("tokenizer.model" in files) == (kind in _SPM_KINDS)
    for name in files:
        assert _sha256(tmp_path / "a" / name) == _sha256(tmp_path / "b" / name), name

    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert len(tok) == infos[0]["vocab_size"]
    assert tok.bos_token_id == infos[0]["bos_token_id"]
    assert tok.eos_token_id == infos[0]["eos_token_id"]
    assert tok.pad_token_id == infos[0]["pad_token_id"]
    ids = tok("안녕")["input_ids"]
    assert (ids[0] == infos[0]["bos_token_id"]) == infos[0]["add_bos_token"]
    assert tok.decode(ids, skip_special_tokens=True) == "안녕"
    assert tok.apply_chat_template([{"role": "user", "content": "안녕"}], tokenize=False) == "안녕"


@pytest.mark.parametrize("kind", list(_ARCH))
def test_ids_match_llama_cpp(kind, tmp_path, tok_cache):
    src = _llama_cpp_src()
    import llama_cpp
    from transformers import AutoTokenizer

    model_dir = tmp_path / kind
    info = write_tokenizer(kind, model_dir, cache_dir=tok_cache)
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
    add_bos = info["add_bos_token"]
    hf_ids = hf(text)["input_ids"]
    assert (hf_ids[0] == info["bos_token_id"]) == add_bos
    assert hf_ids == llm.tokenize(text.encode(), add_bos=add_bos, special=False)
    for sample in _SPECIAL_TEXTS[kind]:
        assert hf(sample)["input_ids"] == llm.tokenize(sample.encode(), add_bos=add_bos, special=True), sample


def _llama_cpp_vocab_tests(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors models/ggml-vocab-<name>.gguf.inp/.out, read the way
    tests/test-tokenizer-0.cpp reads them (inputs end with a separator line, one id line each)."""
    models = _llama_cpp_src() / "models"
    raw = (models / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    sep = "\n__ggml_vocab_test__\n"
    assert raw.endswith(sep)
    inputs = raw[: -len(sep)].split(sep)
    outputs = (models / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()
    assert len(inputs) == len(outputs)
    return [(text, [int(t) for t in ids.split()]) for text, ids in zip(inputs, outputs)]


def _qwen_special_ids(kind: str) -> dict[str, int]:
    ids = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    if kind == "qwen3-bpe":
        ids.update({"<|object_ref_start|>": 151646, "<|video_pad|>": 151656, "<tool_call>": 151657,
                    "</tool_call>": 151658, "<|fim_prefix|>": 151659, "<|file_sep|>": 151664,
                    "<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667, "</think>": 151668})
    return ids


@pytest.mark.parametrize("kind", ["qwen2-bpe", "qwen3-bpe"])
def test_qwen_matches_llama_cpp_test_vectors(kind, tmp_path, tok_cache):
    from transformers import AutoTokenizer

    info = write_tokenizer(kind, tmp_path, cache_dir=tok_cache)
    assert info["vocab_size"] == (151669 if kind == "qwen3-bpe" else 151646)
    assert (info["bos_token_id"], info["eos_token_id"], info["pad_token_id"]) == (None, 151645, 151643)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    cases = _llama_cpp_vocab_tests("qwen2")
    assert len(cases) > 40
    for text, ids in cases:
        assert tok.encode(text, add_special_tokens=False) == ids, text
    for content, i in _qwen_special_ids(kind).items():
        assert tok.convert_tokens_to_ids(content) == i
        assert tok.encode(f"가{content}나", add_special_tokens=False)[1:-1] == [i], content
    if kind == "qwen2-bpe":  # Qwen2's vocabulary ends at <|im_end|>: no tool or think tokens
        assert len(tok) == 151646 and "<think>" not in tok.get_vocab()


@pytest.mark.parametrize("kind", ["qwen2-bpe", "qwen3-bpe"])
def test_qwen_pre_tokenizer_is_recognised_by_the_converter(kind, tmp_path, tok_cache):
    """The pinned converter's get_vocab_base_pre (hash of a fixed string's ids) says "qwen2"."""
    from transformers import AutoTokenizer

    from koquant.exporters.gguf.llamacpp import _vendored_gguf

    write_tokenizer(kind, tmp_path, cache_dir=tok_cache)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    _vendored_gguf()  # the converter's gguf is the vendored one
    src = str(_llama_cpp_src())
    sys.path.insert(0, src)
    try:
        from conversion.base import TextModel
    finally:
        sys.path.remove(src)
    assert TextModel.get_vocab_base_pre(None, tok) == "qwen2"


@pytest.mark.parametrize("kind", ["qwen3-bpe", "exaone4-bpe"])
def test_transformers_keeps_tokenizer_json(kind, tmp_path, tok_cache):
    """AutoTokenizer uses tokenizer.json as written: saving it back gives the same pipeline."""
    from transformers import AutoTokenizer

    write_tokenizer(kind, tmp_path / "a", cache_dir=tok_cache)
    AutoTokenizer.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    written, saved = (json.loads((tmp_path / d / "tokenizer.json").read_text(encoding="utf-8")) for d in "ab")
    assert saved == written


def test_exaone4_specials_and_korean_round_trip(tmp_path):
    from transformers import AutoTokenizer

    first = trained_exaone4_tokenizer(tmp_path / "a")
    second = trained_exaone4_tokenizer(tmp_path / "b")
    assert first.name == second.name and _sha256(first) == _sha256(second)

    info = write_tokenizer("exaone4-bpe", tmp_path / "tok", cache_dir=tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "[|system|]", "[|user|]", "[|assistant|]",
                "[|endofturn|]", "[|tool|]", "<think>", "</think>"]
    assert tok.convert_ids_to_tokens(list(range(len(specials)))) == specials
    assert info == {"vocab_size": 4096, "bos_token_id": 1, "add_bos_token": False, "eos_token_id": 7,
                    "pad_token_id": 0, "unk_token_id": 3}
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 7, 3)

    text = korean_text("kolaw/constitution.txt")  # not in the training text
    ids = tok.encode(text, add_special_tokens=False)
    assert 3 not in ids and max(ids) < 4096
    assert len(ids) < len(text.encode())  # Korean merges learned, not bytes
    assert tok.decode(ids) == text
    prompt = render_chat(chat_template("exaone4"), [_SYSTEM, *_KOREAN_CHAT])
    ids = tok.encode(prompt + "<think>\n\n</think>\n\n네.[|endofturn|]", add_special_tokens=False)
    assert ids[0] == 4 and ids.count(7) == 5 and ids.count(6) == 2 and 9 in ids and 10 in ids
    assert tok.decode(ids, skip_special_tokens=True).startswith(_SYSTEM["content"] + "\n")


def test_template_files_are_named():
    assert set(TEMPLATE_NAMES) == {"qwen2.5", "qwen3", "gemma2", "gemma3", "exaone4"}
    with pytest.raises(KoquantError):
        chat_template("qwen1")
    for name, file in TEMPLATE_FILES.items():
        assert chat_template(name) == (_llama_cpp_src() / "models" / "templates" / file).read_text(encoding="utf-8")


# name -> (start of the rendered system turn or None if the template refuses one, user turn, generation prompt)
_TURNS = {
    "qwen2.5": ("<|im_start|>system\n", "<|im_start|>user\n{}<|im_end|>\n", "<|im_start|>assistant\n"),
    "qwen3": ("<|im_start|>system\n", "<|im_start|>user\n{}<|im_end|>\n", "<|im_start|>assistant\n"),
    "gemma2": (None, "<start_of_turn>user\n{}<end_of_turn>\n", "<start_of_turn>model\n"),
    "gemma3": ("<bos><start_of_turn>user\n", "<start_of_turn>user\n{}<end_of_turn>\n", "<start_of_turn>model\n"),
    "exaone4": ("[|system|]", "[|user|]{}[|endofturn|]\n", "[|assistant|]"),
}


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_chat_template_renders_korean_in_the_sandbox(name):
    template = chat_template(name)
    system_turn, user_turn, generation = _TURNS[name]
    prompt = render_chat(template, _KOREAN_CHAT, bos_token="<bos>", eos_token="<eos>")
    for message in _KOREAN_CHAT:
        assert message["content"] in prompt
    assert user_turn.format(_KOREAN_CHAT[-1]["content"]) + generation in prompt
    assert prompt.endswith(generation)
    assert not render_chat(template, _KOREAN_CHAT, add_generation_prompt=False).endswith(generation)
    if name == "qwen2.5":  # Qwen2.5's default system turn
        assert prompt.startswith("<|im_start|>system\nYou are Qwen")
    with_system = [_SYSTEM, *_KOREAN_CHAT]
    if system_turn is None:  # Gemma 2's template has no system turn
        with pytest.raises(TemplateError, match="System role not supported"):
            render_chat(template, with_system)
        return
    prompt = render_chat(template, with_system, bos_token="<bos>")
    assert prompt.startswith(system_turn + _SYSTEM["content"])  # Gemma 3: folded into the first user turn
    assert prompt.endswith(user_turn.format(_KOREAN_CHAT[-1]["content"]) + generation)
