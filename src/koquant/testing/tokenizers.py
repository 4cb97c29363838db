"""Tokenizer files for the miniature models of the seed families.

Everything is built offline from files shipped in installed PyPI packages:
the Mistral v0.1 SentencePiece model (mistral-common), the Llama 3 tiktoken
ranks (llama-models), the Qwen2 vocabulary (``models/ggml-vocab-qwen2.gguf`` in the
pinned llama-cpp-python sdist) and Korean text (konlpy) for the two SentencePiece
models and the byte-level BPE trained here. Outputs are deterministic, and the ids from
``AutoTokenizer.from_pretrained(out_dir)`` equal llama.cpp's for a GGUF converted
from ``out_dir`` (``exaone4-bpe`` excepted: llama.cpp's converter does not know the
pre-tokenizer hash of a vocabulary trained here).
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

TOKENIZER_KINDS = (
    "korean-spm-llama", "mistral-v1", "llama3-bpe", "korean-spm-gemma",
    "qwen2-bpe", "qwen3-bpe", "exaone4-bpe",
)

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


# Qwen's pre-tokenizer split, as in the tokenizer.json Qwen ships (llama.cpp's "qwen2" pre-type).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# GPT-2's split, which llama.cpp applies for the "exaone4" pre-tokenizer (LLAMA_VOCAB_PRE_TYPE_GPT2).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

# The three control tokens of ggml-vocab-qwen2.gguf (ids 151643..151645, checked against the file).
_QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Added tokens 151646.. of Qwen2.5 and then Qwen3, as their tokenizer_config.json lists them
# (content, special): the vision/box markers are special, tool-call, FIM and think tags are not.
_QWEN25_ADDED = [
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]
_QWEN3_ADDED = [
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]

#: Vocabulary of the trained EXAONE 4 style byte-level BPE, specials included (kobill supports at
#: most ~4750 byte-level BPE tokens: by then every word of it is one token).
EXAONE4_VOCAB_SIZE = 4096

# EXAONE 4.0's special tokens, ids 0.. of the trained vocabulary (content, special).
_EXAONE4_SPECIALS = [
    ("[PAD]", True), ("[BOS]", True), ("[EOS]", True), ("[UNK]", True),
    ("[|system|]", True), ("[|user|]", True), ("[|assistant|]", True), ("[|endofturn|]", True),
    ("[|tool|]", True), ("<think>", False), ("</think>", False),
]


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
    path = _trained_path(kind, [options, spm.__version__, lines], ".model", cache_dir)
    if not path.exists():
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buffer, minloglevel=2, **options
        )
        _publish(path, buffer.getvalue())
    return path


def _trained_path(kind: str, recipe: list, suffix: str, cache_dir: Path | None) -> Path:
    """Where the tokenizer trained by ``recipe`` (options, trainer version, text) is cached."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "koquant" / "tokenizers"
    return cache_dir / f"{kind}-{key}{suffix}"


def _publish(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (concurrent builders each write whole files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


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


def _byte_level(tokenizer, split: str, nfc: bool):
    """Byte-level BPE plumbing: NFC (Qwen) or none, ``split`` then ByteLevel, ByteLevel decoding."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tokenizer


def _add_tokens(tokenizer, added: list[tuple[str, bool]], first_id: int) -> dict:
    """Add ``added`` (or re-flag them where present) as ids ``first_id``..; their added_tokens_decoder entries."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(c, special=sp, normalized=False) for c, sp in added])
    decoder = {}
    for offset, (content, special) in enumerate(added):
        if tokenizer.token_to_id(content) != first_id + offset:
            raise KoquantError(f"added token {content!r} did not get id {first_id + offset}")
        decoder[str(first_id + offset)] = _added(content, special)
    return decoder


def qwen2_vocab(cache_dir: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]], dict[int, str]]:
    """The byte-level BPE vocabulary, merges and control tokens (id -> text) of the Qwen2 tokenizer,
    from ``models/ggml-vocab-qwen2.gguf`` of the pinned llama.cpp sources.

    gguf-py takes ~10 s to parse the file's 300k strings, so what it read is cached (as JSON,
    keyed by the file's hash) like the trained models.
    """
    from koquant.exporters.gguf.llamacpp import llama_cpp_source

    path = llama_cpp_source() / "models" / "ggml-vocab-qwen2.gguf"
    key = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "koquant" / "tokenizers"
    cached = cache_dir / f"qwen2-vocab-{key}.json"
    if not cached.exists():
        _publish(cached, json.dumps(_read_qwen2_gguf(path), ensure_ascii=False).encode("utf-8"))
    data = json.loads(cached.read_text(encoding="utf-8"))
    vocab = {token: i for i, token in enumerate(data["tokens"])}
    merges = [tuple(m.split(" ")) for m in data["merges"]]
    return vocab, merges, {int(i): t for i, t in data["controls"].items()}


def _read_qwen2_gguf(path: Path) -> dict:
    from koquant.exporters.gguf.llamacpp import _vendored_gguf, gguf_reader

    gguf = _vendored_gguf()
    fields = gguf_reader(path).fields
    pre = fields["tokenizer.ggml.pre"].contents()
    if fields["tokenizer.ggml.model"].contents() != "gpt2" or pre != "qwen2":
        raise KoquantError(f"{path.name} is not a Qwen2 byte-level BPE vocabulary (pre-tokenizer {pre!r})")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    normal: list[str] = []
    controls: dict[str, str] = {}
    for i, (token, kind) in enumerate(zip(tokens, types)):
        if kind == gguf.TokenType.NORMAL:
            if i != len(normal):
                raise KoquantError(f"{path.name}: the BPE tokens are not ids 0..{len(normal)}")
            normal.append(token)
        elif kind == gguf.TokenType.CONTROL:
            controls[str(i)] = token
        elif token != f"[PAD{i}]":  # the converter's padding up to the embedding rows
            raise KoquantError(f"{path.name}: unexpected token {i} {token!r} of type {kind}")
    return {"tokens": normal, "merges": fields["tokenizer.ggml.merges"].contents(), "controls": controls}


def _write_qwen(kind: str, out_dir: Path, cache_dir: Path | None) -> dict:
    """Qwen2 (``qwen2-bpe``) or Qwen3 (``qwen3-bpe``) tokenizer files.

    Ids 0..151642 (BPE tokens and merges) and the control tokens 151643..151645
    (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``) come from ggml-vocab-qwen2.gguf,
    which holds the Qwen1.5/Qwen2 vocabulary (151646 tokens; the file's ``[PAD…]`` rows up to
    151935 are the converter's embedding padding, not tokens). ``qwen3-bpe`` adds the tokens
    Qwen2.5 added (151646..151664: vision/box markers, ``<tool_call>``, FIM) and Qwen3's own
    (151665..151668: ``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>``),
    written by koquant from the published tokenizer configs: 151669 tokens.
    """
    from tokenizers import Tokenizer, models

    vocab, merges, controls = qwen2_vocab(cache_dir)
    first = len(vocab)
    if [controls.get(first + i) for i in range(len(_QWEN2_SPECIALS))] != _QWEN2_SPECIALS:
        raise KoquantError(f"ggml-vocab-qwen2.gguf: control tokens {controls} are not {_QWEN2_SPECIALS}")
    tokenizer = Tokenizer(models.BPE(
        vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
        byte_fallback=False,
    ))
    _byte_level(tokenizer, _QWEN2_SPLIT, nfc=True)
    added = [(t, True) for t in _QWEN2_SPECIALS]
    if kind == "qwen3-bpe":
        added += _QWEN25_ADDED + _QWEN3_ADDED
    decoder = _add_tokens(tokenizer, added, first)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "extra_special_tokens": [t for t, special in added[1:] if special],
        "model_max_length": 131072 if kind == "qwen3-bpe" else 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    return config


def _exaone4_trainer_options() -> dict:
    return dict(
        vocab_size=EXAONE4_VOCAB_SIZE,
        min_frequency=0,
        special_tokens=[content for content, _ in _EXAONE4_SPECIALS],
        split=_GPT2_SPLIT,
    )


def trained_exaone4_tokenizer(cache_dir: Path | None = None) -> Path:
    """Train (or reuse from the cache) the EXAONE 4 style byte-level BPE; the path of its tokenizer.json.

    Byte-level BPE on the kobill lines with GPT-2's split (what llama.cpp runs for EXAONE 4's
    "exaone4" pre-tokenizer), the 256 byte symbols in the alphabet (so no text is unknown) and
    EXAONE 4.0's special tokens at ids 0..10.
    """
    import tokenizers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    options = _exaone4_trainer_options()
    lines = _training_lines()
    path = _trained_path("exaone4-bpe", [options, tokenizers.__version__, lines], ".json", cache_dir)
    if not path.exists():
        tokenizer = _byte_level(Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False)),
                                options["split"], nfc=False)
        trainer = trainers.BpeTrainer(
            vocab_size=options["vocab_size"],
            min_frequency=options["min_frequency"],
            special_tokens=options["special_tokens"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(lines, trainer=trainer)
        _publish(path, tokenizer.to_str().encode("utf-8"))
    return path


def _write_exaone4(out_dir: Path, cache_dir: Path | None) -> dict:
    """EXAONE 4 style tokenizer files: [PAD]=0, [BOS]=1, [EOS]=2, [UNK]=3, chat tokens 4..10, no BOS added."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(trained_exaone4_tokenizer(cache_dir)))
    # The trainer made every one special; <think>/</think> are plain added tokens, as in Qwen3.
    decoder = _add_tokens(tokenizer, _EXAONE4_SPECIALS, 0)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": "[BOS]",
        "clean_up_tokenization_spaces": False,
        "eos_token": "[|endofturn|]",
        "extra_special_tokens": ["[|system|]", "[|user|]", "[|assistant|]", "[|tool|]"],
        "model_max_length": _MAX_LENGTH,
        "pad_token": "[PAD]",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "[UNK]",
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

    The result has ``vocab_size`` (the number of tokens, added ones included: a model's
    embedding may have more rows), ``bos_token_id`` (None when the family has no BOS token),
    ``add_bos_token`` (whether encoding puts the BOS token in front), ``eos_token_id``,
    ``pad_token_id`` (None when the family has no pad token) and ``unk_token_id``.
    """
    if kind not in TOKENIZER_KINDS:
        raise KoquantError(
            f"unknown tokenizer kind {kind!r}",
            hint="known kinds: " + ", ".join(TOKENIZER_KINDS),
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind in ("llama3-bpe", "qwen2-bpe", "qwen3-bpe", "exaone4-bpe"):
        # A stale tokenizer.model would make llama.cpp's converter take the SentencePiece path.
        (out_dir / "tokenizer.model").unlink(missing_ok=True)
    if kind == "llama3-bpe":
        config = _write_llama3(out_dir)
    elif kind in ("qwen2-bpe", "qwen3-bpe"):
        config = _write_qwen(kind, out_dir, cache_dir)
    elif kind == "exaone4-bpe":
        config = _write_exaone4(out_dir, cache_dir)
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
    elif kind in ("qwen2-bpe", "qwen3-bpe", "exaone4-bpe"):
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
        vocab_size = backend.get_vocab_size(with_added_tokens=True)
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
        vocab_size = sp.vocab_size()
    return {
        "vocab_size": vocab_size,
        "bos_token_id": ids[config["bos_token"]] if config.get("bos_token") else None,
        "add_bos_token": kind not in ("qwen2-bpe", "qwen3-bpe", "exaone4-bpe"),
        "eos_token_id": ids[config["eos_token"]],
        "pad_token_id": ids[config["pad_token"]] if config.get("pad_token") else None,
        "unk_token_id": ids[config["unk_token"]] if config.get("unk_token") else None,
    }
