"""Tokenizer files for the miniature models of the seed families.

Everything is built offline from files shipped in installed PyPI packages:
the Mistral v0.1 SentencePiece model (mistral-common), the Llama 3 tiktoken
ranks (llama-models) and Korean text (konlpy) for the two SentencePiece models
trained here. Outputs are deterministic, and the ids from
``AutoTokenizer.from_pretrained(out_dir)`` equal llama.cpp's for a GGUF converted
from ``out_dir``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

from koquant.errors import KoquantError

TOKENIZER_KINDS = ("korean-spm-llama", "mistral-v1", "llama3-bpe", "korean-spm-gemma")

#: Vocabulary of the two trained Korean models (kobill supports at most ~7250 BPE pieces).
KOREAN_VOCAB_SIZE = 6144

_MAX_LENGTH = 1000000000000000019884624838656  # "no limit", as in the published configs

# Gemma's reserved ids 4..107, in Gemma's order (<start_of_turn>=106, <end_of_turn>=107).
_GEMMA_RESERVED = (
    ["<mask>", "<2mass>", "[@BOS@]"]
    + [f"<unused{i}>" for i in range(99)]
    + ["<start_of_turn>", "<end_of_turn>"]
)

# Meta-Llama-3 special tokens, ids 128000..128255.
_LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]


def package_file(package: str, relpath: str) -> Path:
    """Path of a data file or folder inside an installed package (the package is not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise KoquantError(
            f"package {package!r} is not installed",
            hint="pip install 'koquant[testing]'",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.exists():
        raise KoquantError(f"{package} has no {relpath}", hint="reinstall 'koquant[testing]'")
    return path


def korean_text(name: str) -> str:
    """A konlpy corpus file (e.g. ``kolaw/constitution.txt``) with CRLF turned into LF."""
    raw = package_file("konlpy", f"data/corpus/{name}").read_bytes()
    return raw.decode("utf-8").replace("\r\n", "\n")


def _training_lines() -> list[str]:
    folder = package_file("konlpy", "data/corpus/kobill")
    lines: list[str] = []
    for path in sorted(folder.glob("*.txt")):
        lines += [line for line in korean_text(f"kobill/{path.name}").split("\n") if line.strip()]
    return lines


def _spm_options(kind: str) -> dict:
    """Trainer options: a BPE model with byte fallback, like Llama's and Gemma's."""
    options = dict(
        model_type="bpe",
        vocab_size=KOREAN_VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        num_threads=1,
    )
    if kind == "korean-spm-llama":
        options.update(add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    else:
        options.update(
            add_dummy_prefix=False,
            pad_id=0, eos_id=1, bos_id=2, unk_id=3,
            pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
            user_defined_symbols=_GEMMA_RESERVED + ["\n"],
        )
    return options


def trained_spm_model(kind: str, cache_dir: Path | None = None) -> Path:
    """Train (or reuse from the cache) the SentencePiece model of a Korean kind."""
    import sentencepiece as spm

    options = _spm_options(kind)
    lines = _training_lines()
    key = hashlib.sha256(
        json.dumps([options, spm.__version__, lines], sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "koquant" / "tokenizers"
    path = cache_dir / f"{kind}-{key}.model"
    if not path.exists():
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buffer, minloglevel=2, **options
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(buffer.getvalue())
        os.replace(partial, path)
    return path


def _added(content: str, special: bool = True) -> dict:
    return {
        "content": content, "lstrip": False, "normalized": False,
        "rstrip": False, "single_word": False, "special": special,
    }


def _spm_config(kind: str) -> dict:
    """tokenizer_config.json of a SentencePiece kind (ours: transformers 5 would drop keys)."""
    common = {
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _MAX_LENGTH,
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "use_default_system_prompt": False,
    }
    if kind == "korean-spm-gemma":
        names = ["<pad>", "<eos>", "<bos>", "<unk>", *_GEMMA_RESERVED]
        decoder = {str(i): _added(name) for i, name in enumerate(names)}
        decoder[str(len(names))] = _added("\n", special=False)
        return {
            **common,
            "added_tokens_decoder": decoder,
            "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
            "extra_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
            "tokenizer_class": "GemmaTokenizer",
        }
    # PreTrainedTokenizerFast: transformers 5 then uses tokenizer.json as written. Its
    # LlamaTokenizer class rebuilds a Metaspace pre-tokenizer that adds no "▁" to text
    # already starting with a space, where SentencePiece and llama.cpp do (" a" -> "▁▁a").
    return {
        **common,
        "added_tokens_decoder": {str(i): _added(t) for i, t in enumerate(["<unk>", "<s>", "</s>"])},
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": None, "unk_token": "<unk>",
        "legacy": True,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _spm_backend(model_path: Path, config: dict, prefix_space: bool):
    """A ``tokenizers`` BPE equal to the SentencePiece BPE model, merges ordered by piece score."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    for i, entry in config["added_tokens_decoder"].items():
        if sp.id_to_piece(int(i)) != entry["content"]:
            raise KoquantError(f"{model_path.name}: id {i} is not {entry['content']!r}")
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    normal = {
        sp.id_to_piece(i): i
        for i in range(sp.vocab_size())
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))
        and str(i) not in config["added_tokens_decoder"]
    }
    # SentencePiece merges the adjacent pair whose result scores highest (ties: leftmost).
    # Mistral's whitespace runs score -1e9: ordering merges by id instead breaks " world".
    merges = []
    for piece, _ in sorted(normal.items(), key=lambda item: (-sp.get_score(item[1]), item[1])):
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        merges += [(left, right) for left, right in splits if left in normal and right in normal]
    unk = sp.id_to_piece(sp.unk_id())
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    if prefix_space:  # "▁" before every text segment (legacy), as SentencePiece and llama.cpp do
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
    else:
        tokenizer.normalizer = normalizers.Replace(" ", "▁")
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix_space else []))
    tokenizer.add_tokens([
        AddedToken(entry["content"], special=entry["special"], normalized=False)
        for _, entry in sorted(config["added_tokens_decoder"].items(), key=lambda item: int(item[0]))
    ])
    bos = config["bos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])]
    )
    return tokenizer


def _write_spm(kind: str, out_dir: Path, cache_dir: Path | None) -> dict:
    if kind == "mistral-v1":
        model_path = package_file("mistral_common", "data/tokenizer.model.v1")
    else:
        model_path = trained_spm_model(kind, cache_dir)
    config = _spm_config(kind)
    backend = _spm_backend(model_path, config, prefix_space=kind != "korean-spm-gemma")
    shutil.copyfile(model_path, out_dir / "tokenizer.model")
    backend.save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "tokenizer_config.json", config)
    return config


def _write_llama3(out_dir: Path) -> dict:
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(path: str) -> dict[bytes, int]:
            # Read the ranks ourselves: tiktoken's loader copies files into a temp cache.
            ranks = {}
            for line in Path(path).read_text(encoding="ascii").splitlines():
                if line.strip():
                    token, rank = line.split()
                    ranks[base64.b64decode(token)] = int(rank)
            return ranks

    ranks_path = package_file("llama_models", "llama3/tokenizer.model")
    converter = _Converter(vocab_file=str(ranks_path), extra_special_tokens=_LLAMA3_SPECIALS)
    tokenizer = converter.converted()
    bos = _LLAMA3_SPECIALS[0]
    # Meta's post-processor: byte-level offsets, then BOS in front of every sequence.
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, 128000)]
        ),
    ])
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "added_tokens_decoder": {str(128000 + i): _added(t) for i, t in enumerate(_LLAMA3_SPECIALS)},
        "bos_token": bos,
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|end_of_text|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": _MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    return config


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer(
    kind: str,
    out_dir: Path,
    *,
    chat_template: str | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Write the tokenizer files of ``kind`` into ``out_dir``; return ids for the model config.

    The result has ``vocab_size``, ``bos_token_id``, ``eos_token_id``, ``pad_token_id``
    (None when the family has no pad token) and ``unk_token_id``.
    """
    if kind not in TOKENIZER_KINDS:
        raise KoquantError(
            f"unknown tokenizer kind {kind!r}",
            hint="known kinds: " + ", ".join(TOKENIZER_KINDS),
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "llama3-bpe":
        # A stale tokenizer.model would make llama.cpp's converter take the SentencePiece path.
        (out_dir / "tokenizer.model").unlink(missing_ok=True)
        config = _write_llama3(out_dir)
    else:
        config = _write_spm(kind, out_dir, cache_dir)
    template_path = out_dir / "chat_template.jinja"
    if chat_template is not None:
        template_path.write_text(chat_template, encoding="utf-8")
    elif template_path.exists():
        template_path.unlink()

    special_map = {
        name: config[name]
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        if config.get(name)
    }
    _write_json(out_dir / "special_tokens_map.json", special_map)

    ids = {content["content"]: int(i) for i, content in config["added_tokens_decoder"].items()}
    if kind == "llama3-bpe":
        vocab_size = 128000 + len(_LLAMA3_SPECIALS)
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
        vocab_size = sp.vocab_size()
    return {
        "vocab_size": vocab_size,
        "bos_token_id": ids[config["bos_token"]],
        "eos_token_id": ids[config["eos_token"]],
        "pad_token_id": ids[config["pad_token"]] if config.get("pad_token") else None,
        "unk_token_id": ids[config["unk_token"]] if config.get("unk_token") else None,
    }
