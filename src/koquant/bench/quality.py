"""Quality: perplexity, KL divergence and top-1 agreement on identical token ids; a multiple-choice probe.

The parent process tokenizes once with the source tokenizer (:func:`prepare_text`,
:func:`load_choices`); every runtime is then fed those ids and scored here
(:class:`ChunkScorer`, :func:`choice_logliks`) inside its own worker process. The chunking and
scoring are llama.cpp's ``llama-perplexity`` (see :mod:`koquant.bench.settings`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..exporters.gate import _log_softmax as log_softmax
from .settings import BenchError, BenchSettings

#: rows of logits turned into float64 log-probabilities at a time (bounds memory on 256k vocabularies)
_ROW_BLOCK = 64


# ---------------------------------------------------------------------------- the text
@dataclass(frozen=True)
class BenchText:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def read_text(spec: str | Path | None) -> BenchText:
    """The held-out Korean text (default) or a UTF-8 text file, read as ``llama-perplexity -f`` reads it.

    ``llama-perplexity`` drops one trailing newline of its file; so does the bench, so that both
    tokenize the same string.
    """
    if spec is None:
        from ..quant_recipes.calibration import korean_constitution

        ts = korean_constitution()
        text, name = ts.plain_text(), ts.name
    else:
        p = Path(spec).expanduser()
        if not p.exists():
            raise BenchError(f"text file {p} does not exist", hint="pass a UTF-8 text file with --text, or drop --text "
                             "for the built-in held-out Korean text (the Constitution)")
        if not p.is_file():
            raise BenchError(f"--text {p} is not a file", hint="pass one UTF-8 text file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise BenchError(f"{p} is not UTF-8 text (byte {e.start})",
                             hint="convert it to UTF-8, e.g. iconv -f cp949 -t utf-8") from None
        except OSError as e:
            raise BenchError(f"cannot read {p}: {e.strerror}") from None
        name = p.name
    if text.endswith("\n"):
        text = text[:-1]
    if not text.strip():
        raise BenchError(f"the text {name!r} is empty", hint="give a few thousand tokens of Korean text")
    return BenchText(name, text)


@dataclass(frozen=True)
class TokenizedText:
    ids: np.ndarray  # [chunks, ctx] int32: the ids every runtime is fed (empty when quality is off)
    n_tokens: int  # tokens of the whole text
    bos_id: int | None  # what the first id of each chunk is set to
    head: tuple[int, ...]  # the text's first ids (BOS first): the latency prompts are its prefixes


def prepare_text(tokenizer, text: BenchText, settings: BenchSettings) -> TokenizedText:
    """Tokenize with the source tokenizer (BOS as it adds it) and cut llama-perplexity's chunks."""
    from ..quant_recipes.calibration import chunk_tokens

    tokens = tokenizer.encode(text.text, add_special_tokens=True)
    ctx = settings.ctx
    if settings.quality and len(tokens) < ctx:
        raise BenchError(f"the text {text.name!r} has {len(tokens)} tokens, fewer than one chunk of --ctx {ctx}",
                         hint="give a longer text, or a smaller --ctx")
    longest = max(settings.prefill) if settings.latency else 0
    if len(tokens) < longest:
        raise BenchError(f"the text {text.name!r} has {len(tokens)} tokens, fewer than the {longest}-token "
                         "latency prompt", hint="give a longer text")
    bos = tokenizer.bos_token_id if tokenizer.adds_bos else None
    ids = np.zeros((0, ctx), dtype=np.int32)
    if settings.quality:
        ids = np.asarray(chunk_tokens(tokens, ctx, settings.chunks, bos).ids, dtype=np.int32)
    return TokenizedText(ids, len(tokens), bos, tuple(int(t) for t in tokens[:longest]))


# ---------------------------------------------------------------------------- scoring
#: the baseline's scored logits are kept whole up to this many bytes; above it (large vocabularies, many
#: chunks) only each row's top :data:`TOPK` log-probabilities and the mass of the rest are kept
FULL_BASELINE_BYTES = 1 << 30
TOPK = 4096


#: the arrays a baseline of each kind keeps (:class:`BaselineRecorder`), by name
ROW_ARRAYS = {"full": ("logits",), "topk": ("ids", "logp", "rest", "top1")}


def baseline_kind(rows: int, n_vocab: int) -> str:
    """``"full"`` when the baseline's scored rows fit :data:`FULL_BASELINE_BYTES` as float32, else ``"topk"``."""
    return "full" if rows * n_vocab * 4 <= FULL_BASELINE_BYTES or n_vocab <= TOPK else "topk"


def kl_method(kind: str) -> str:
    if kind == "full":
        return "exactly, over the whole vocabulary"
    return (f"over the baseline's top {TOPK} tokens per position plus one bucket for the rest of the vocabulary "
            "(a lower bound of the exact KL; the baseline's logits were too large to keep whole)")


class BaselineRecorder:
    """Writes the baseline run's scored rows into ``folder``: whole float32 logits, or per row the
    top-:data:`TOPK` token ids with their log-probabilities, the log of the remaining mass and the argmax."""

    def __init__(self, folder: Path, rows: int, n_vocab: int):
        self.kind = baseline_kind(rows, n_vocab)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        open_ = np.lib.format.open_memmap
        if self.kind == "full":
            self.logits = open_(self.folder / "logits.npy", mode="w+", dtype=np.float32, shape=(rows, n_vocab))
        else:
            self.ids = open_(self.folder / "ids.npy", mode="w+", dtype=np.int32, shape=(rows, TOPK))
            self.logp = open_(self.folder / "logp.npy", mode="w+", dtype=np.float32, shape=(rows, TOPK))
            self.rest = open_(self.folder / "rest.npy", mode="w+", dtype=np.float64, shape=(rows,))
            self.top1 = open_(self.folder / "top1.npy", mode="w+", dtype=np.int64, shape=(rows,))

    def write(self, start: int, rows: np.ndarray) -> None:
        if self.kind == "full":
            self.logits[start:start + len(rows)] = rows
            return
        for s in range(0, len(rows), _ROW_BLOCK):
            lp = log_softmax(rows[s:s + _ROW_BLOCK])
            idx = np.argpartition(lp, -TOPK, axis=-1)[:, -TOPK:]
            top = np.take_along_axis(lp, idx, axis=-1)
            at = slice(start + s, start + s + len(lp))
            self.ids[at], self.logp[at] = idx, top
            self.rest[at] = _log_rest(top)
            self.top1[at] = np.argmax(rows[s:s + _ROW_BLOCK], axis=-1)

    def close(self) -> None:
        for name in ROW_ARRAYS[self.kind]:
            arr = getattr(self, name, None)
            if arr is not None:
                arr.flush()
                delattr(self, name)


def _log_rest(top_logp: np.ndarray) -> np.ndarray:
    """log(1 - sum(exp(top_logp))) per row, floored so an empty tail gives a very negative number, not -inf."""
    covered = np.exp(top_logp.astype(np.float64)).sum(axis=-1)
    return np.log(np.clip(1.0 - covered, 1e-300, None))


def row_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a baseline, memory-mapped: the ``.npy`` files of a :class:`BaselineRecorder` folder, or the
    tensors of a saved baseline file (:mod:`koquant.bench.baseline`)."""
    path = Path(path)
    if path.is_dir():
        return {p.stem: np.load(p, mmap_mode="r") for p in sorted(path.glob("*.npy"))}
    from ..source.safetensors import open_memmap, read_safetensors

    return {name: open_memmap(path, info) for name, info in read_safetensors(path)[0].items()}


class Baseline:
    """The baseline's scored rows (:func:`row_arrays`), memory-mapped."""

    def __init__(self, path: Path):
        arrays = row_arrays(path)
        self.kind = "full" if "logits" in arrays else "topk"
        if self.kind == "full":
            self.logits = arrays["logits"]
            self.rows = len(self.logits)
        else:
            self.ids, self.logp, self.rest, self.top1 = (arrays[n] for n in ROW_ARRAYS["topk"])
            self.rows = len(self.ids)

    def n_vocab_matches(self, n_vocab: int) -> bool:
        return self.kind == "topk" or self.logits.shape[1] == n_vocab

    def compare(self, start: int, lp: np.ndarray, export_top1: np.ndarray) -> tuple[np.ndarray, int]:
        """KL(baseline || export) per row and the number of agreeing argmaxes, for rows ``start...`` whose
        export log-probabilities are ``lp``."""
        at = slice(start, start + len(lp))
        if self.kind == "full":
            block = self.logits[at]
            lr = log_softmax(block)
            return (np.exp(lr) * (lr - lp)).sum(axis=-1), int((np.argmax(block, axis=-1) == export_top1).sum())
        lr = self.logp[at].astype(np.float64)
        lq = np.take_along_axis(lp, self.ids[at].astype(np.int64), axis=-1)
        kl = (np.exp(lr) * (lr - lq)).sum(axis=-1)
        rest_p, rest_q = self.rest[at], _log_rest(lq)
        kl += np.exp(rest_p) * (rest_p - rest_q)
        return kl, int((self.top1[at] == export_top1).sum())


class ChunkScorer:
    """Accumulates one runtime's scores over the chunks: NLL of the next token, and against a
    :class:`Baseline` KL(baseline || this) and top-1 agreement."""

    def __init__(self, settings: BenchSettings, baseline: Baseline | None = None):
        self.first = settings.first_scored
        self.n = settings.scored_per_chunk
        self.baseline = baseline
        self.nll: list[float] = []  # per chunk, summed
        self.kl: list[np.ndarray] = []
        self.agree = 0
        self.count = 0

    def scored_rows(self, logits: np.ndarray) -> np.ndarray:
        return logits[self.first:self.first + self.n]

    def add(self, chunk_index: int, ids: np.ndarray, logits: np.ndarray) -> None:
        rows = self.scored_rows(logits)
        targets = np.asarray(ids[self.first + 1:self.first + 1 + self.n], dtype=np.int64)
        base = self.baseline
        if base is not None:
            if not base.n_vocab_matches(rows.shape[-1]) or (chunk_index + 1) * self.n > base.rows:
                raise BenchError(f"logits of {rows.shape[-1]} tokens at chunk {chunk_index} cannot be compared with "
                                 "the baseline's", hint="the export's vocabulary differs from the source's; re-export it")
        nll, kls = 0.0, []
        for s in range(0, self.n, _ROW_BLOCK):
            lp = log_softmax(rows[s:s + _ROW_BLOCK])
            t = targets[s:s + _ROW_BLOCK]
            nll -= float(lp[np.arange(len(t)), t].sum())
            if base is not None:
                kl, agree = base.compare(chunk_index * self.n + s, lp, np.argmax(rows[s:s + _ROW_BLOCK], axis=-1))
                kls.append(kl)
                self.agree += agree
        self.nll.append(nll)
        if kls:
            self.kl.append(np.concatenate(kls))
        self.count += self.n

    def result(self) -> dict:
        if not self.count:
            raise BenchError("no positions were scored")
        total = float(sum(self.nll))
        out = {
            "positions": self.count,
            "nll_mean": total / self.count,
            "ppl": float(np.exp(total / self.count)),
            "chunk_ppl": [float(np.exp(v / self.n)) for v in self.nll],
        }
        if self.kl:
            kl = np.concatenate(self.kl)
            out.update(kl_mean=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)), kl_max=float(kl.max()),
                       top1=self.agree / self.count)
        return out


# ---------------------------------------------------------------------------- multiple choice
@dataclass(frozen=True)
class ChoiceItem:
    context: str
    choices: tuple[str, ...]
    label: int


def load_choices(spec: str | Path) -> tuple[str, list[ChoiceItem]]:
    """Items from a local JSONL file, one per line: ``{"context": ..., "choices": [...], "label": i}``."""
    p = Path(spec).expanduser()
    if not p.is_file():
        raise BenchError(f"multiple-choice file {p} does not exist" if not p.exists() else f"{p} is not a file",
                         hint='a JSONL file, one item per line: {"context": "...", "choices": ["...", "..."], "label": 0}')
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise BenchError(f"{p} is not UTF-8 text (byte {e.start})", hint="convert it to UTF-8") from None
    items = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p.name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchError(f"{where} is not valid JSON ({e.msg})", hint="one JSON object per line") from None
        ok = (isinstance(obj, dict) and isinstance(obj.get("context"), str) and isinstance(obj.get("choices"), list)
              and len(obj["choices"]) >= 2 and all(isinstance(c, str) and c for c in obj["choices"])
              and isinstance(obj.get("label"), int) and not isinstance(obj.get("label"), bool))
        if not ok:
            raise BenchError(f"{where}: expected {{\"context\": str, \"choices\": [two or more non-empty str], "
                             "\"label\": int}", hint="KoBEST-style items, e.g. COPA: context = premise + question")
        if not 0 <= obj["label"] < len(obj["choices"]):
            raise BenchError(f"{where}: label {obj['label']} is not an index into its {len(obj['choices'])} choices")
        items.append(ChoiceItem(obj["context"], tuple(obj["choices"]), obj["label"]))
    if not items:
        raise BenchError(f"{p} holds no items", hint="one JSON object per line")
    return p.name, items


def choice_requests(tokenizer, items: list[ChoiceItem]) -> list[tuple[list[int], int]]:
    """(ids of context + choice, index of the first scored id) per choice, item by item.

    The whole string is tokenized at once (so the boundary is tokenized as the model saw it in
    training); the scored ids are those after the longest prefix shared with the context alone.
    """
    out = []
    for item in items:
        ctx_ids = tokenizer.encode(item.context, add_special_tokens=True)
        for choice in item.choices:
            ids = tokenizer.encode(item.context + choice, add_special_tokens=True)
            start = 0
            while start < min(len(ids), len(ctx_ids)) and ids[start] == ctx_ids[start]:
                start += 1
            start = max(start, 1)  # the first id has no logits before it
            if start >= len(ids):
                raise BenchError(f"the choice {choice!r} adds no tokens to its context", hint="check the item")
            out.append((ids, start))
    return out


def choice_logliks(session, requests: list[tuple[list[int], int]]) -> list[float]:
    """Sum of log-probabilities of each choice's ids given its context."""
    out = []
    for ids, start in requests:
        logits = session.logits(ids)
        lp = log_softmax(logits[start - 1:len(ids) - 1])
        t = np.asarray(ids[start:], dtype=np.int64)
        out.append(float(lp[np.arange(len(t)), t].sum()))
    return out


def choice_scores(items: list[ChoiceItem], logliks: list[float], baseline_picks: list[int] | None = None) -> dict:
    """Accuracy by summed log-likelihood (``acc``) and per character of the choice (``acc_norm``)."""
    picks, picks_norm, k = [], [], 0
    for item in items:
        ll = logliks[k:k + len(item.choices)]
        k += len(item.choices)
        picks.append(int(np.argmax(ll)))
        picks_norm.append(int(np.argmax([v / len(c) for v, c in zip(ll, item.choices)])))
    n = len(items)
    out = {"items": n, "acc": sum(p == i.label for p, i in zip(picks, items)) / n,
           "acc_norm": sum(p == i.label for p, i in zip(picks_norm, items)) / n, "picks": picks}
    if baseline_picks is not None:
        out["agreement"] = sum(a == b for a, b in zip(picks, baseline_picks)) / n
    return out
