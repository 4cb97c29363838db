"""``Session``: one runtime over every export format.

A Session is a backend (transformers, llama.cpp, onnxruntime-genai, ...) that only turns
token ids into next-token logits, plus everything that must not differ between backends,
done once here:

- the prompt: the source model's chat template, rendered in koquant's sandbox
  (:func:`koquant.source.chat_template.render_chat`) and tokenized by the source tokenizer, exactly
  as transformers' ``apply_chat_template(..., tokenize=True)`` does; those ids are what the
  backend is fed (its own tokenizer is only cross-checked, see :meth:`Session.check_tokenizer`);
- the choice of each token (:mod:`koquant.runtime.sampling`), with defaults from the source's
  ``generation_config.json``;
- the stop tokens: the source's EOS ids plus the end-of-turn markers its template uses;
- the text: streamed without splitting Korean characters (:class:`StreamDecoder`);
- the KV cache: a new prompt that extends the previous one (the next chat turn) only feeds
  the new tokens.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..source.chat_template import TemplateError, render_chat
from ..errors import KoquantError
from .sampling import Sampler, SamplingParams
from .tokenizer import StreamDecoder, TextTokenizer

#: end-of-turn tokens of common chat formats; a stop token when the template writes it
END_OF_TURN_MARKERS = ("<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|im_end|>", "<|end|>")


class ContextLengthError(KoquantError):
    """The prompt does not fit the backend's context window."""


class Backend:
    """What one runtime implements. Everything else lives in :class:`Session`.

    ``forward`` appends ids to the backend's KV cache and returns the logits after the last
    one; ``rewind(n)`` keeps the first ``n`` cached positions (returning how many it could
    keep); ``all_logits`` runs ids from an empty cache and returns logits for every position
    (the cache then holds those ids).
    """

    name = ""  # the runtime, e.g. "llama.cpp"
    format = ""  # the export format it runs, e.g. "gguf"
    n_vocab = 0
    n_ctx: int | None = None
    own_tokenizer = ""  # what the cross-check compares against; "" if the backend has none of its own
    options: tuple[str, ...] = ()  # the keyword options koquant.load passes on

    # ------------------------------------------------------------------ before any model is opened
    @classmethod
    def import_runtime(cls) -> None:
        """Import the runtime's libraries (the bench times this apart from loading)."""

    @classmethod
    def weight_files(cls, model: Path) -> list[Path]:
        """The weight files a user ships for ``model`` (the file, or the folder's weight files)."""
        if model.is_file():
            return [model]
        return sorted(p for p in model.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))

    @classmethod
    def not_a_model(cls, model: Path) -> str | None:
        """Why ``model``, found as this format, holds nothing to run (a GGUF importance matrix), read from its
        files without the runtime; None for a model. A damaged file raises :class:`KoquantError`."""
        return None

    @classmethod
    def bytes_per_token(cls, model: Path) -> int:
        """Weight bytes one decode step reads: every weight once, but of an input embedding table that is
        not also the head only one row (the bench's bandwidth bound)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ running
    def forward(self, ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def rewind(self, n: int) -> int:
        raise NotImplementedError

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def own_tokenize(self, text: str) -> list[int] | None:
        """The backend's own ids for ``text`` (special tokens parsed, nothing added), if it has a tokenizer."""
        return None

    def text_tokenizer(self) -> TextTokenizer:
        """The backend's own tokenizer as a TextTokenizer, for models without source tokenizer files."""
        raise KoquantError(f"the {self.name} backend needs the source tokenizer files next to the model",
                           hint="load the export folder koquant wrote (it keeps them in tokenizer/)")

    def embedded_chat_template(self) -> str | None:
        """A chat template stored inside the model file itself (GGUF metadata), if any."""
        return None

    @property
    def threads(self) -> int:
        raise NotImplementedError

    def model_bytes(self) -> int:
        raise NotImplementedError

    def describe(self) -> dict:
        return {}

    def close(self) -> None:
        pass


@dataclass
class TokenizerCheck:
    """The backend's own tokenization of a prompt against the source tokenizer's."""

    backend_tokenizer: str
    identical: bool
    first_difference: int | None = None
    source_ids: list[int] = field(default_factory=list, repr=False)
    backend_ids: list[int] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        if self.identical:
            return f"{self.backend_tokenizer} tokenizes the prompt identically ({len(self.source_ids)} tokens)"
        i = self.first_difference
        return (f"{self.backend_tokenizer} tokenizes the prompt differently from the source tokenizer from token {i} "
                f"(source {self.source_ids[i:i + 4]}, {self.backend_tokenizer} {self.backend_ids[i:i + 4]}); "
                "koquant feeds the source ids")


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens already in the KV cache from the previous call
    new_tokens: int = 0
    stop_reason: str = "interrupted"  # stop_token | max_new_tokens | context | interrupted
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        # the first new token comes from the prefill; the decode steps made the others
        steps = max(self.new_tokens - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 and steps else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "decode_tokens_per_s": self.decode_tokens_per_s}


class Session:
    """A loaded model: ``chat``, ``complete``, ``encode_chat``, ``generate``, ``logits``, ``tokenize``.

    Made by :func:`koquant.load`; use it as a context manager or call :meth:`close`.
    """

    def __init__(self, backend: Backend, tokenizer: TextTokenizer, *, path: Path, chat_template: str | None,
                 generation_config: dict | None, quant: str | None = None, manifest: dict | None = None,
                 notes: Sequence[str] = ()):
        self._backend = backend
        self.tokenizer = tokenizer
        self.path = Path(path)
        self.chat_template = chat_template
        self.generation_config = dict(generation_config or {})
        self.quant = quant
        self.manifest = manifest
        self.notes: list[str] = list(notes)
        self.defaults = SamplingParams.from_generation_config(self.generation_config)
        self.stop_ids = frozenset(self._stop_ids())
        self.last: GenerationStats | None = None
        self.last_tokenizer_check: TokenizerCheck | None = None
        self._cached: list[int] = []
        self._generation = 0  # the id of the newest generation; an older iterator stops working

    # ------------------------------------------------------------------ facts
    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def format(self) -> str:
        return self._backend.format

    @property
    def threads(self) -> int:
        return self._backend.threads

    @property
    def n_ctx(self) -> int | None:
        return self._backend.n_ctx

    @property
    def n_vocab(self) -> int:
        return self._backend.n_vocab

    def memory(self) -> dict:
        """Bytes: the model's weights as the backend holds them, and this process's resident memory."""
        return {"model_bytes": self._backend.model_bytes(), "rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()}

    def info(self) -> dict:
        return {
            "path": str(self.path), "format": self.format, "backend": self.backend, "quant": self.quant,
            "threads": self.threads, "n_ctx": self.n_ctx, "n_vocab": self.n_vocab, "memory": self.memory(),
            "tokenizer": self.tokenizer.source, "chat_template": self.chat_template is not None,
            "stop_ids": sorted(self.stop_ids), "defaults": self.defaults.to_dict(), "notes": list(self.notes),
            **self._backend.describe(),
        }

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = self.generation_config.get("eos_token_id")
        for v in eos if isinstance(eos, list) else [eos]:
            if isinstance(v, int):
                ids.add(v)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        ids.update(self.tokenizer.extra_stop_ids)
        for marker in END_OF_TURN_MARKERS:
            tid = self.tokenizer.token_id(marker)
            if tid is not None and self.chat_template and marker in self.chat_template:
                ids.add(tid)
        return ids

    # ------------------------------------------------------------------ prompts
    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text of ``messages`` under the source's chat template."""
        if not self.chat_template:
            raise TemplateError(f"{self.path} has no chat template",
                                hint="pass one with koquant.load(..., chat_template=...), or use generate() on token ids")
        return render_chat(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           **self.tokenizer.special_tokens)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The exact ids :meth:`chat` feeds the backend for ``messages``."""
        return self._encode_prompt(self.render(messages, add_generation_prompt))

    def _encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            while len(ids) > 1 and ids[1] == bos:
                ids.pop(1)
            note = "the chat template rendered BOS more than once at the start; koquant keeps one"
            if note not in self.notes:
                self.notes.append(note)
        return ids

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Source-tokenizer ids of ``text`` (with BOS when the source tokenizer adds one)."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def check_tokenizer(self, text: str) -> TokenizerCheck:
        """Compare the backend's own tokenizer with the source tokenizer on ``text`` (a rendered prompt)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        own = self._backend.own_tokenize(text)
        if own is None:
            return TokenizerCheck(f"{self.backend} (uses the source tokenizer)", True, None, ids, ids)
        first = next((i for i, (a, b) in enumerate(zip(ids, own)) if a != b), None)
        if first is None and len(ids) != len(own):
            first = min(len(ids), len(own))
        return TokenizerCheck(self._backend.own_tokenizer, first is None, first, ids, own)

    # ------------------------------------------------------------------ generation
    def chat(self, messages: list[dict], stream: bool = False, ignore_eos: bool = False,
             **sampling) -> str | Iterator[str]:
        """The assistant's reply to ``messages``: the full text, or (``stream=True``) an iterator of pieces.

        Sampling parameters (``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``,
        ``max_new_tokens``, ``seed``, ``do_sample``) default to the source's generation_config.json.
        ``ignore_eos=True`` keeps going through stop tokens (for benchmarks).
        """
        params = self.defaults.with_overrides(**sampling)
        prompt = self.render(messages)
        ids = self._encode_prompt(prompt)
        self.last_tokenizer_check = check = self.check_tokenizer(prompt)
        if not check.identical:
            note = check.describe()
            if note not in self.notes:
                self.notes.append(note)
        pieces = self._text_pieces(self._tokens(ids, params, ignore_eos=ignore_eos))
        return pieces if stream else "".join(pieces)

    def complete(self, prompt: str, stream: bool = False, ignore_eos: bool = False,
                 **sampling) -> str | Iterator[str]:
        """The continuation of raw ``prompt`` text (no chat template; BOS added as the source tokenizer adds
        it): the full text, or (``stream=True``) an iterator of pieces. Sampling as in :meth:`chat`."""
        params = self.defaults.with_overrides(**sampling)
        ids = self.tokenize(prompt, add_special_tokens=True)
        pieces = self._text_pieces(self._tokens(ids, params, ignore_eos=ignore_eos))
        return pieces if stream else "".join(pieces)

    def generate(self, ids: Sequence[int], stream: bool = False, ignore_eos: bool = False,
                 **sampling) -> list[int] | Iterator[int]:
        """New token ids after ``ids`` (stop tokens are not included).

        ``ignore_eos=True`` keeps going through stop tokens (for benchmarks).
        """
        params = self.defaults.with_overrides(**sampling)
        ids = [int(t) for t in ids]
        tokens = self._tokens(ids, params, ignore_eos)
        return tokens if stream else list(tokens)

    def _text_pieces(self, tokens: Iterator[int]) -> Iterator[str]:
        dec = StreamDecoder(self.tokenizer)
        for t in tokens:
            piece = dec.push(t)
            if piece:
                yield piece
        rest = dec.flush()
        if rest:
            yield rest

    def _tokens(self, ids: list[int], params: SamplingParams, ignore_eos: bool) -> Iterator[int]:
        if not ids:
            raise KoquantError("the prompt is empty", hint="give at least one token (or message)")
        n_ctx = self._backend.n_ctx
        if n_ctx is not None and len(ids) >= n_ctx:
            raise ContextLengthError(
                f"the prompt has {len(ids)} tokens but the context window is {n_ctx}",
                hint="shorten the conversation (/reset in koquant chat), or load with a larger n_ctx")
        bad = [t for t in ids if not 0 <= t < self._backend.n_vocab]
        if bad:
            raise KoquantError(f"token id {bad[0]} is outside the model's vocabulary (0..{self._backend.n_vocab - 1})")
        return self._token_loop(ids, params, ignore_eos, n_ctx)

    def _token_loop(self, ids, params, ignore_eos, n_ctx) -> Iterator[int]:
        self._generation += 1
        me = self._generation
        stats = GenerationStats(prompt_tokens=len(ids))
        self.last = stats
        t0 = time.perf_counter()
        logits, stats.reused_tokens = self._prefill(ids)
        t1 = time.perf_counter()
        stats.prefill_s = t1 - t0
        sampler = Sampler(params, ids)
        stop = frozenset() if ignore_eos else self.stop_ids
        budget = params.max_new_tokens
        try:
            if budget == 0:
                stats.stop_reason = "max_new_tokens"
                return
            while True:
                tok = sampler(logits)
                if tok in stop:
                    stats.stop_reason = "stop_token"
                    return
                stats.new_tokens += 1
                yield tok
                if stats.new_tokens >= budget:
                    stats.stop_reason = "max_new_tokens"
                    return
                if n_ctx is not None and len(self._cached) + 1 >= n_ctx:
                    stats.stop_reason = "context"
                    return
                if self._generation != me:
                    raise KoquantError("another generation was started on this session while this one was running",
                                       hint="finish (or close) one chat/generate iterator before starting the next")
                sampler.observe((tok,))
                logits = self._feed(tok)
        finally:
            stats.decode_s = time.perf_counter() - t1

    # ------------------------------------------------------------------ logits and the KV cache
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits at every position of ``ids`` (float32, ``[len(ids), n_vocab]``), from scratch."""
        ids = [int(t) for t in ids]
        if not ids:
            raise KoquantError("logits() needs at least one token id")
        self._generation += 1  # a running generate/chat iterator no longer owns the KV cache
        self._cached = []
        try:
            self._backend.rewind(0)
            out = self._backend.all_logits(ids)
        except BaseException:
            self._invalidate()
            raise
        self._cached = ids
        return np.asarray(out, dtype=np.float32)

    def next_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits after the last of ``ids``, reusing the KV cache for a shared prefix."""
        self._generation += 1
        logits, _ = self._prefill([int(t) for t in ids])
        return logits

    def reset(self) -> None:
        """Forget the KV cache (the next call prefills from scratch)."""
        self._generation += 1
        self._invalidate()

    def _prefill(self, ids: list[int]) -> tuple[np.ndarray, int]:
        cached = self._cached
        common = 0
        for a, b in zip(cached, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one token is fed, for fresh logits
        try:
            kept = self._backend.rewind(common)
            self._cached = ids[:kept]
            logits = self._backend.forward(ids[kept:])
        except BaseException:
            self._invalidate()
            raise
        self._cached = list(ids)
        return logits, kept

    def _feed(self, token: int) -> np.ndarray:
        try:
            logits = self._backend.forward((token,))
        except BaseException:
            self._invalidate()
            raise
        self._cached.append(token)
        return logits

    def _invalidate(self) -> None:
        self._cached = []
        try:
            self._backend.rewind(0)
        except Exception:  # noqa: BLE001 - a broken backend is reported by the call that broke it
            pass

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        q = f" {self.quant}" if self.quant else ""
        return f"<koquant.Session {self.path.name}{q} on {self.backend}, {self.threads} threads>"


def rss_bytes() -> int:
    """This process's resident memory now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far.

    Linux's ``VmHWM`` belongs to the process's own address space; ``ru_maxrss`` would not do there,
    as it carries the parent's peak across ``exec`` (a worker would report its parent's footprint).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return 0
