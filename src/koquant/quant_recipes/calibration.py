"""Korean calibration and held-out evaluation text.

The built-in calibration set is the ten National Assembly bills shipped in konlpy
(``kobill``); the held-out evaluation text is the Constitution (``kolaw``). They never
overlap, and :func:`check_disjoint` refuses user calibration text that contains held-out
lines. Text is normalised to LF (konlpy's files are partly CRLF, which changes tokens).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CalibrationError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
MIN_OVERLAP_LINE = 24  # characters; shorter lines (headings, article numbers) may legitimately repeat

Document = str | tuple  # plain text, or a tuple of {"role", "content"} messages


def normalise(text: str) -> str:
    """LF line endings, no BOM, no trailing whitespace at the end."""
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").rstrip() + "\n"


@dataclass(frozen=True)
class TextSet:
    """An ordered, hashed collection of documents."""

    name: str
    documents: tuple[Document, ...]

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for d in self.documents:
            h.update(json.dumps(d, ensure_ascii=False).encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()

    def plain_text(self) -> str:
        """All documents as one text, messages flattened to their contents."""
        parts = []
        for d in self.documents:
            parts.append(d if isinstance(d, str) else "\n".join(m["content"] for m in d))
        return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"

    def chat_text(self, template: str, bos_token: str | None, eos_token: str | None) -> str:
        """All documents rendered through a chat template, one conversation each."""
        from ..source.chat_template import render_chat

        out = []
        for d in self.documents:
            messages = list(d) if not isinstance(d, str) else _as_conversation(d)
            out.append(render_chat(template, messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=False))
        return "".join(out)


def _as_conversation(text: str) -> list[dict]:
    """A plain document as user/assistant turns: paragraphs alternate, starting with the user."""
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    if len(paras) == 1:
        paras.append(paras[0])
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": p} for i, p in enumerate(paras)]


def _konlpy_corpus() -> Path:
    try:
        import konlpy
    except ImportError:
        raise CalibrationError(
            "the built-in Korean text comes from the konlpy package, which is not installed",
            hint="pip install konlpy==0.6.0 (it is a koquant dependency; reinstall koquant)",
        ) from None
    return Path(konlpy.__file__).parent / "data" / "corpus"


def korean_bills() -> TextSet:
    """The default calibration set: konlpy's kobill (ten bills, ~100 KB)."""
    folder = _konlpy_corpus() / "kobill"
    docs = tuple(normalise(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.txt")))
    return TextSet("kobill", docs)


def korean_constitution() -> TextSet:
    """The held-out evaluation text: the Constitution of the Republic of Korea (~45 KB)."""
    p = _konlpy_corpus() / "kolaw" / "constitution.txt"
    return TextSet("kolaw-constitution", (normalise(p.read_text(encoding="utf-8")),))


BUILTIN_SETS = {"kobill": korean_bills, "default": korean_bills, "kolaw": korean_constitution}


def load_text_set(spec: str | os.PathLike | None) -> TextSet:
    """A built-in name (``default``/``kobill``), a text file, a JSONL file, or a folder of those."""
    if spec is None or str(spec) in BUILTIN_SETS and not Path(str(spec)).exists():
        return BUILTIN_SETS[str(spec or "default")]()
    path = Path(spec)
    if not path.exists():
        raise CalibrationError(
            f"calibration text {path} does not exist",
            hint="pass a .txt/.jsonl file, a folder of them, or 'default' for the built-in Korean bills",
        )
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES
    )
    if not files:
        raise CalibrationError(f"no .txt, .md or .jsonl files in {path}", hint="put calibration text files in the folder")
    docs: list[Document] = []
    for f in files:
        docs.extend(_read_documents(f))
    docs = [d for d in docs if (d.strip() if isinstance(d, str) else d)]
    if not docs:
        raise CalibrationError(f"calibration text {path} is empty", hint="give at least a few KB of Korean text")
    return TextSet(path.name, tuple(docs))


def _read_documents(path: Path) -> list[Document]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(
            f"{path} is not UTF-8 text (byte {e.start})",
            hint="convert it to UTF-8, e.g. iconv -f cp949 -t utf-8",
        ) from None
    if path.suffix not in JSONL_SUFFIXES:
        return [normalise(raw)]
    docs: list[Document] = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}:{lineno} is not valid JSON ({e.msg})", hint="one JSON object per line") from None
        docs.append(_jsonl_document(obj, f"{path}:{lineno}"))
    return docs


def _jsonl_document(obj, where: str) -> Document:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return normalise(obj["text"])
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
        msgs = obj["messages"]
        if all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs):
            return tuple({"role": m["role"], "content": m["content"]} for m in msgs)
    if isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str):
        return ({"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["response"]})
    raise CalibrationError(
        f"{where}: expected an object with 'text', 'messages' (role/content list) or 'prompt'+'response'",
        hint='e.g. {"text": "..."} or {"messages": [{"role": "user", "content": "..."}]}',
    )


def check_disjoint(calibration: TextSet, heldout: TextSet) -> None:
    """Refuse calibration text that contains lines of the held-out evaluation text."""
    calib = calibration.plain_text()
    for line in heldout.plain_text().splitlines():
        line = line.strip()
        if len(line) >= MIN_OVERLAP_LINE and line in calib:
            raise CalibrationError(
                f"calibration text {calibration.name!r} overlaps the held-out evaluation text "
                f"{heldout.name!r} (e.g. {line[:40]!r}...); validation numbers would be meaningless",
                hint="remove the held-out text from the calibration set",
            )


@dataclass(frozen=True)
class Chunks:
    """Token chunks, BOS first, cut the way llama.cpp's imatrix and perplexity tools cut them."""

    ids: tuple[tuple[int, ...], ...]
    n_ctx: int
    n_tokens_total: int

    @property
    def n_tokens(self) -> int:
        return sum(len(c) for c in self.ids)

    @property
    def sha256(self) -> str:
        """The token ids themselves, hashed: equal for every format calibrated on the same chunks."""
        return hashlib.sha256(json.dumps([list(c) for c in self.ids]).encode("ascii")).hexdigest()


def chunk_tokens(tokens: list[int], n_ctx: int, max_chunks: int | None, bos_id: int | None) -> Chunks:
    """Split one token stream into ``n_ctx`` chunks; the first token of each becomes BOS."""
    n = len(tokens) // n_ctx
    if n == 0:
        raise CalibrationError(
            f"the text has only {len(tokens)} tokens, fewer than one chunk of {n_ctx}",
            hint="give more calibration text or a smaller --calib-ctx",
        )
    if max_chunks is not None:
        n = min(n, max_chunks)
    chunks = []
    for i in range(n):
        c = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if bos_id is not None:
            c[0] = bos_id
        chunks.append(tuple(c))
    return Chunks(tuple(chunks), n_ctx, len(tokens))
