"""How many bytes the tokenizer adds to a GGUF header.

A GGUF stores the whole vocabulary in its key/value metadata: every token string
(``tokenizer.ggml.tokens``, each an 8-byte length plus UTF-8 bytes), an int32 type per token,
a float32 score per token for SentencePiece vocabularies, and for byte-level BPE every merge
rule as a string. For a 128k-token Llama 3 vocabulary that is about 7 MB, which matters for
miniature models and is noise for real ones.

:func:`footprint_from_dir` reads the tokenizer files the converter would read
(``tokenizer.model`` parsed as SentencePiece protobuf without the sentencepiece library,
else ``tokenizer.json``), mirroring ``convert_hf_to_gguf``'s choices: ids missing from the
tokenizer are written as ``[PAD<id>]``, ``added_tokens_decoder`` entries replace the piece at
their id. :func:`estimated_footprint` guesses from the vocabulary size alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from koquant.errors import CheckpointError

__all__ = ["VocabFootprint", "footprint_from_dir", "estimated_footprint"]

# The tokenizer files koquant will read are bounded; anything larger is not a tokenizer.
_MAX_TOKENIZER_FILE = 256 * 1024 * 1024


@dataclass(frozen=True)
class VocabFootprint:
    """Sizes of the tokenizer arrays a GGUF will hold.

    ``kind`` is ``"spm"`` (SentencePiece: tokens + scores + types) or ``"bpe"`` (byte-level
    BPE: tokens + types + merges). ``source`` says where the numbers come from.
    """

    kind: str
    n_tokens: int
    token_text_bytes: int
    n_merges: int = 0
    merge_text_bytes: int = 0
    chat_template_bytes: int = 0
    source: str = "estimate"

    def gguf_kv_bytes(self) -> int:
        """Bytes of the tokenizer key/value entries (key names included)."""
        n = 0
        n += _kv_array("tokenizer.ggml.tokens") + 8 * self.n_tokens + self.token_text_bytes
        n += _kv_array("tokenizer.ggml.token_type") + 4 * self.n_tokens
        if self.kind == "spm":
            n += _kv_array("tokenizer.ggml.scores") + 4 * self.n_tokens
        if self.n_merges:
            n += _kv_array("tokenizer.ggml.merges") + 8 * self.n_merges + self.merge_text_bytes
        if self.chat_template_bytes:
            n += _kv_key("tokenizer.chat_template") + 4 + 8 + self.chat_template_bytes
        return n

    def to_dict(self) -> dict:
        return asdict(self)


def _kv_key(key: str) -> int:
    return 8 + len(key.encode())


def _kv_array(key: str) -> int:
    # key, value type (ARRAY), element type, element count
    return _kv_key(key) + 4 + 4 + 8


# --------------------------------------------------------------------------- estimates

# Average UTF-8 bytes per token string, measured on real vocabularies: Mistral v0.1
# SentencePiece (32000 tokens) and Llama 3 byte-level BPE (128256 tokens, 280147 merges).
_SPM_BYTES_PER_TOKEN = 6.4
_BPE_BYTES_PER_TOKEN = 8.33
_BPE_MERGES_PER_TOKEN = 280147 / 128256
_BPE_BYTES_PER_MERGE = 10.58


def estimated_footprint(vocab: int, kind: str | None = None, chat_template_bytes: int = 0) -> VocabFootprint:
    """A footprint from the vocabulary size alone.

    Without ``kind``, vocabularies of 100k tokens or more are assumed to be byte-level BPE
    (Llama 3, Qwen2), smaller ones SentencePiece (Llama 2, Mistral, Gemma, EEVE).
    """
    if kind is None:
        kind = "bpe" if vocab >= 100_000 else "spm"
    if kind == "spm":
        return VocabFootprint("spm", vocab, round(vocab * _SPM_BYTES_PER_TOKEN), 0, 0, chat_template_bytes)
    merges = round(vocab * _BPE_MERGES_PER_TOKEN)
    return VocabFootprint(
        "bpe",
        vocab,
        round(vocab * _BPE_BYTES_PER_TOKEN),
        merges,
        round(merges * _BPE_BYTES_PER_MERGE),
        chat_template_bytes,
    )


# --------------------------------------------------------------------------- from files


def _read_bounded(path: Path) -> bytes:
    size = path.stat().st_size
    if size > _MAX_TOKENIZER_FILE:
        raise CheckpointError(
            f"{path} is {size} bytes, too large to be a tokenizer file",
            hint="check that the model folder holds the right tokenizer",
        )
    return path.read_bytes()


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int):
    """Walk the protobuf fields in ``buf[pos:end]``: yield ``(field number, start, length)`` of
    each length-delimited one and skip the others."""
    while pos < end:
        tag, pos = _varint(buf, pos)
        field_no, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            yield field_no, pos, n
            pos += n
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _spm_piece_lengths(buf: bytes) -> list[int]:
    """UTF-8 byte lengths of the pieces of a SentencePiece ``ModelProto`` (field 1)."""
    lengths: list[int] = []
    end = len(buf)
    for field_no, pos, n in _fields(buf, 0, end):
        if pos + n > end:
            raise ValueError("truncated field")
        if field_no == 1:
            lengths.append(_piece_text_length(buf, pos, pos + n))
    if not lengths:
        raise ValueError("no pieces")
    return lengths


def _piece_text_length(buf: bytes, pos: int, end: int) -> int:
    for field_no, _, n in _fields(buf, pos, end):
        if field_no == 1:
            return n
    return 0


def _chat_template_bytes(model_dir: Path, tokenizer_config: dict) -> int:
    """The chat template gguf-py's SpecialVocab would store (tokenizer_config wins)."""
    tpl = tokenizer_config.get("chat_template")
    if tpl is None:
        jinja = model_dir / "chat_template.jinja"
        json_file = model_dir / "chat_template.json"
        if jinja.is_file():
            tpl = _read_bounded(jinja).decode("utf-8", "replace")
        elif json_file.is_file():
            try:
                tpl = json.loads(_read_bounded(json_file)).get("chat_template")
            except (ValueError, AttributeError):
                tpl = None
    if isinstance(tpl, str):
        return len(tpl.encode())
    if isinstance(tpl, list):  # named templates: stored as tokenizer.chat_template.<name> entries
        total = 0
        for entry in tpl:
            if isinstance(entry, dict) and isinstance(entry.get("template"), str):
                total += len(entry["template"].encode()) + 40
        return total
    return 0


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(_read_bounded(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}", hint="re-save the tokenizer with transformers") from e
    return data if isinstance(data, dict) else {}


def _added_tokens(tokenizer_config: dict, vocab: int) -> dict[int, int]:
    """id -> UTF-8 length for ``added_tokens_decoder`` entries (they replace the piece)."""
    out: dict[int, int] = {}
    for key, entry in (tokenizer_config.get("added_tokens_decoder") or {}).items():
        try:
            tid = int(key)
        except (TypeError, ValueError):
            continue
        if 0 <= tid < vocab and isinstance(entry, dict) and isinstance(entry.get("content"), str):
            out[tid] = len(entry["content"].encode())
    return out


def _pad_len(i: int) -> int:
    return 5 + len(str(i))  # "[PAD" + digits + "]"


def _pad_bytes_below(n: int) -> int:
    """Total length of ``[PAD0]`` .. ``[PAD{n-1}]`` without building the strings."""
    total, lo, digits = 0, 0, 1
    while lo < n:
        hi = min(n, 10**digits)
        total += (hi - lo) * (5 + digits)
        lo, digits = hi, digits + 1
    return total


def _text_bytes(per_id: dict[int, int], vocab: int) -> int:
    """Token text bytes: known ids take their length, the rest are ``[PAD<id>]``."""
    return sum(per_id.values()) + _pad_bytes_below(vocab) - sum(_pad_len(i) for i in per_id)


def footprint_from_dir(model_dir: str | os.PathLike, vocab: int, prefer: str | None = None) -> VocabFootprint | None:
    """The footprint of the tokenizer in ``model_dir``, or None when it has none koquant can read.

    ``vocab`` is the config's ``vocab_size`` (the GGUF vocabulary is padded or cut to it).
    ``prefer="spm"`` (Gemma) only looks at ``tokenizer.model``.
    """
    d = Path(model_dir)
    tok_cfg_path = d / "tokenizer_config.json"
    tok_cfg = _load_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
    template = _chat_template_bytes(d, tok_cfg)

    spm_path = d / "tokenizer.model"
    if spm_path.is_file():
        try:
            lengths = _spm_piece_lengths(_read_bounded(spm_path))
        except ValueError:
            lengths = None  # e.g. a tiktoken file named tokenizer.model
        if lengths is not None:
            n_sp = min(len(lengths), vocab)
            per_id = dict(enumerate(lengths[:n_sp]))
            added_json = d / "added_tokens.json"
            if added_json.is_file():
                for text, tid in _load_json(added_json).items():
                    if isinstance(tid, int) and 0 <= tid < vocab:
                        per_id[tid] = len(str(text).encode())
            per_id.update(_added_tokens(tok_cfg, vocab))
            return VocabFootprint("spm", vocab, _text_bytes(per_id, vocab), 0, 0, template, "tokenizer.model")
    if prefer == "spm":
        return None

    tj_path = d / "tokenizer.json"
    if not tj_path.is_file():
        return None
    tj = _load_json(tj_path)
    model = tj.get("model") or {}
    vocab_map = model.get("vocab")
    if model.get("type") != "BPE" or not isinstance(vocab_map, dict):
        return None
    per_id: dict[int, int] = {}
    for text, tid in vocab_map.items():
        if isinstance(tid, int) and 0 <= tid < vocab:
            per_id[tid] = len(text.encode())
    for entry in tj.get("added_tokens") or []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), int) and 0 <= entry["id"] < vocab:
            per_id[entry["id"]] = len(str(entry.get("content", "")).encode())
    text_bytes = _text_bytes(per_id, vocab)
    merges = model.get("merges") or []
    merge_bytes = 0
    for m in merges:
        if isinstance(m, str):
            merge_bytes += len(m.encode())
        elif isinstance(m, (list, tuple)) and len(m) == 2:
            a, b = str(m[0]), str(m[1])
            # gguf-py joins pairs with a space and stores spaces inside a part as U+0120 (2 bytes)
            merge_bytes += len(a.encode()) + len(b.encode()) + 1 + a.count(" ") + b.count(" ")
    return VocabFootprint("bpe", vocab, text_bytes, len(merges), merge_bytes, template, "tokenizer.json")
