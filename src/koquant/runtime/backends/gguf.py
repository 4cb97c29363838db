"""The llama.cpp backend: a GGUF file through llama-cpp-python's C API.

Token ids go straight into ``llama_decode`` (llama.cpp never re-tokenizes the prompt), the
KV cache is kept between calls and trimmed with ``llama_memory_seq_rm``, and only the last
position's logits are read back for koquant's sampler. llama-cpp-python's ``Llama`` class is
not used: it would also compile the file's chat template with its own renderer.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from ...errors import KoquantError
from ... import procs
from ...exporters.gguf.llamacpp import import_llama_cpp, open_model, tokenize
from ..loader import LoadError, Target
from ..session import Backend
from ..tokenizer import TextTokenizer

_initialized = False


def _llama_cpp():
    global _initialized
    llama_cpp = import_llama_cpp()
    if not _initialized:
        logger = logging.getLogger("llama-cpp-python")
        if logger.level == logging.NOTSET:  # its default log callback prints every level otherwise
            logger.setLevel(logging.ERROR)
        llama_cpp.llama_backend_init()
        _initialized = True
    return llama_cpp


class DecodeError(KoquantError):
    """llama.cpp failed to evaluate a batch."""


class GGUFBackend(Backend):
    name = "llama.cpp"
    format = "gguf"
    own_tokenizer = "llama.cpp's tokenizer"
    options = ("threads", "n_ctx", "n_batch", "flash_attn")

    @classmethod
    def import_runtime(cls) -> None:
        import_llama_cpp()

    @classmethod
    def not_a_model(cls, model: Path) -> str | None:
        from ...exporters.gguf.reader import not_a_model, read_gguf

        return not_a_model(read_gguf(model))

    @classmethod
    def bytes_per_token(cls, model: Path) -> int:
        from ...exporters.gguf.reader import read_gguf
        from ...source.architectures import GGUF_EMBED, GGUF_HEAD, Architecture

        gguf = read_gguf(model)
        tensors = {t.name: t.n_bytes for t in gguf.tensors}
        arch = gguf.metadata.get("general.architecture")
        experts, used = gguf.metadata.get(f"{arch}.expert_count"), gguf.metadata.get(f"{arch}.expert_used_count")
        share = used / experts if experts and used else 1.0  # a mixture of experts reads only the routed experts
        total = sum(n * share if Architecture.is_expert_weight(name) else n for name, n in tensors.items())
        if f"{GGUF_HEAD}.weight" in tensors:  # untied: the token embedding is only looked up
            total -= tensors.get(f"{GGUF_EMBED}.weight", 0)
        return round(total)

    def __init__(self, target: Target, *, threads: int | None = None, n_ctx: int | None = None,
                 n_batch: int | None = None, flash_attn: bool = False):
        from ...exporters.gguf.reader import not_a_model, read_gguf

        # koquant's bounded header parser first: a corrupt, truncated or hostile header (huge lengths,
        # impossible shapes) stops here with a clear message and never reaches llama.cpp's loader
        gguf = read_gguf(target.model)
        why = not_a_model(gguf)
        if why is not None:
            raise LoadError(f"{Path(target.model).name} is {why}",
                            hint="load a model .gguf file (an export folder holds one per quant type)")
        meta = gguf.metadata
        lib = self._lib = _llama_cpp()
        self.path = Path(target.model)
        self._model = self._ctx = None
        self._batch = None
        self.n_ctx_train = int(meta.get(f"{meta.get('general.architecture')}.context_length") or 4096)
        self.n_ctx = int(n_ctx or min(self.n_ctx_train, 4096))
        self.n_batch = int(min(n_batch or 512, self.n_ctx))
        # llama-cpp-python's default: half the logical CPUs (the physical cores on most machines)
        self._threads = int(threads or max((os.cpu_count() or 2) // 2, 1))
        with procs.step("llama.cpp", f"loading {self.path.name}"):
            self._model, self._ctx = open_model(self.path, n_ctx=self.n_ctx, n_batch=self.n_batch,
                                                threads=self._threads, flash_attn=flash_attn, error=LoadError)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self._mem = lib.llama_get_memory(self._ctx)
        self._n_past = 0

    # ------------------------------------------------------------------ evaluation
    def _decode(self, batch, what: str) -> None:
        rc = self._lib.llama_decode(self._ctx, batch)
        if rc != 0:
            raise DecodeError(f"llama.cpp failed to evaluate {what} (llama_decode returned {rc})",
                              hint="the context may be full; start a new conversation or load with a larger n_ctx")

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        lib = self._lib
        for i in range(0, len(ids), self.n_batch):
            chunk = ids[i:i + self.n_batch]
            arr = (lib.llama_token * len(chunk))(*chunk)
            self._decode(lib.llama_batch_get_one(arr, len(chunk)), f"{len(chunk)} tokens")
            self._n_past += len(chunk)
        ptr = lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        lib = self._lib
        if self._batch is None:
            self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        b = self._batch
        out = np.empty((len(ids), self.n_vocab), dtype=np.float32)
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start:start + self.n_batch]
            for i, t in enumerate(chunk):
                b.token[i] = t
                b.pos[i] = self._n_past + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 1
            b.n_tokens = len(chunk)
            self._decode(b, f"{len(chunk)} tokens")
            self._n_past += len(chunk)
            rows = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(len(chunk) * self.n_vocab,))
            out[start:start + len(chunk)] = rows.reshape(len(chunk), self.n_vocab)
        return out

    def rewind(self, n: int) -> int:
        n = max(0, min(n, self._n_past))
        if n == self._n_past:
            return n
        if n == 0 or not self._lib.llama_memory_seq_rm(self._mem, -1, n, -1):
            self._lib.llama_memory_clear(self._mem, True)
            n = 0
        self._n_past = n
        return n

    # ------------------------------------------------------------------ its own tokenizer
    def own_tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return tokenize(self._lib, self._vocab, text, add_special, parse_special=True)

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        lib = self._lib
        arr = (lib.llama_token * max(len(ids), 1))(*ids)
        cap = 16 * len(ids) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(cap)
            n = lib.llama_detokenize(self._vocab, arr, len(ids), buf, cap, False, special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            cap = -n
        raise DecodeError("llama.cpp could not detokenize the generated tokens")

    def text_tokenizer(self) -> TextTokenizer:
        return LlamaVocabTokenizer(self)

    def embedded_chat_template(self) -> str | None:
        raw = self._lib.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    # ------------------------------------------------------------------ facts
    @property
    def threads(self) -> int:
        return self._threads

    def model_bytes(self) -> int:
        return int(self._lib.llama_model_size(self._model))

    def describe(self) -> dict:
        return {"file": self.path.name, "n_ctx_train": self.n_ctx_train, "n_batch": self.n_batch}

    def close(self) -> None:
        lib = self._lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class LlamaVocabTokenizer(TextTokenizer):
    """llama.cpp's tokenizer of a GGUF, for files that come without the source tokenizer files."""

    def __init__(self, backend: GGUFBackend):
        self._b = backend
        self._lib = backend._lib
        self.source = f"llama.cpp's tokenizer in {backend.path.name}"
        self.chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._b.own_tokenize(text, add_special=add_special_tokens)

    def decode(self, ids: list[int]) -> str:
        return self._b.detokenize([i for i in ids if not self._is_control(i)]) if ids else ""

    def _is_control(self, token_id: int) -> bool:
        return bool(self._lib.llama_vocab_is_control(self._b._vocab, token_id))

    def _text(self, token_id: int) -> str | None:
        if token_id is None or token_id < 0:
            return None
        return self._lib.llama_vocab_get_text(self._b._vocab, token_id).decode("utf-8", errors="replace")

    def token_id(self, token: str) -> int | None:
        ids = self._b.own_tokenize(token)
        return ids[0] if len(ids) == 1 and self._text(ids[0]) == token else None

    @property
    def eos_token_id(self) -> int | None:
        t = int(self._lib.llama_vocab_eos(self._b._vocab))
        return t if t >= 0 else None

    @property
    def bos_token_id(self) -> int | None:
        t = int(self._lib.llama_vocab_bos(self._b._vocab))
        return t if t >= 0 else None

    @cached_property
    def special_tokens(self) -> dict[str, str]:
        out = {}
        for name, tid in (("bos_token", self.bos_token_id), ("eos_token", self.eos_token_id)):
            text = self._text(tid)
            if text is not None:
                out[name] = text
        return out

    @property
    def extra_stop_ids(self) -> set[int]:
        eot = int(self._lib.llama_vocab_eot(self._b._vocab))
        return {eot} if eot >= 0 else set()
