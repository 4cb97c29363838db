"""The transformers backend: a Hugging Face folder run by PyTorch (float32 or bfloat16), on the CPU or CUDA."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ...errors import BackendMissingError, CheckpointError
from ..loader import Target
from ..session import Backend

_DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda", "auto")  # auto: CUDA when torch sees a GPU, else the CPU


class HFBackend(Backend):
    name = "transformers"
    format = "hf"
    own_tokenizer = ""  # it runs on the source tokenizer itself
    options = ("dtype", "threads", "n_ctx", "device")

    @classmethod
    def import_runtime(cls) -> None:
        import torch  # noqa: F401
        from transformers import AutoModelForCausalLM  # noqa: F401

    @classmethod
    def bytes_per_token(cls, model: Path) -> int:
        from ...source.checkpoint import Checkpoint

        return checkpoint_bytes_per_token(Checkpoint.open(model), None)

    def __init__(self, target: Target, *, dtype: str | None = None, threads: int | None = None,
                 n_ctx: int | None = None, device: str | None = None):
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise BackendMissingError("running a Hugging Face folder needs torch and transformers",
                                      hint="pip install koquant (they are koquant dependencies)") from None
        from ...source.checkpoint import Checkpoint

        dtype = dtype or "float32"
        if dtype not in _DTYPES:
            raise CheckpointError(f"dtype {dtype!r} is not supported", hint="choose one of " + ", ".join(_DTYPES))
        self.device = _device(torch, device or "cpu")
        ckpt = Checkpoint.open(target.model)  # the same checks as export: no pickle, vocab fits, ...
        if threads:
            torch.set_num_threads(threads)
        with _quiet_loading():
            try:
                self.model = self._load(AutoModelForCausalLM, target, getattr(torch, dtype))
            except (OSError, ValueError) as e:
                raise CheckpointError(f"transformers could not load {target.model}: {e}",
                                      hint="check that the folder loads with AutoModelForCausalLM") from None
        if self.device != "cpu":
            self.model = self.model.to(self.device)
        self._torch = torch
        self.dtype = dtype
        self.n_vocab = int(self.model.get_output_embeddings().weight.shape[0])
        max_pos = ckpt.config.get("max_position_embeddings")
        if n_ctx and max_pos and n_ctx > max_pos:
            raise CheckpointError(f"n_ctx={n_ctx} is longer than the model's {max_pos} positions",
                                  hint=f"use n_ctx <= {max_pos}")
        self.n_ctx = n_ctx or max_pos or 4096
        self.cache = None

    def _load(self, auto, target: Target, dtype):
        return auto.from_pretrained(str(target.model), dtype=dtype, use_safetensors=True,
                                    trust_remote_code=False).eval()

    def _run(self, ids: Sequence[int]):
        torch = self._torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long, device=self.device),
                             past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0]

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids)[-1].float().cpu().numpy()

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        self.cache = None
        return self._run(ids).float().cpu().numpy()

    def rewind(self, n: int) -> int:
        if self.cache is None or n <= 0:
            self.cache = None
            return 0
        have = self.cache.get_seq_length()
        if n >= have:
            return have
        try:
            self.cache.crop(n - have)  # a negative count: the tokens to drop
        except (RuntimeError, ValueError):  # e.g. a sliding-window layer past its window
            self.cache = None
            return 0
        return n

    @property
    def threads(self) -> int:
        return self._torch.get_num_threads()

    def model_bytes(self) -> int:
        seen, total = set(), 0
        for t in [*self.model.parameters(), *self.model.buffers()]:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    def describe(self) -> dict:
        return {"dtype": self.dtype, "device": self.device}

    def close(self) -> None:
        self.cache = None


def _device(torch, device: str) -> str:
    if device not in DEVICES:
        raise CheckpointError(f"device {device!r} is not supported", hint="choose one of " + ", ".join(DEVICES))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendMissingError(f"device cuda was asked for, but torch {torch.__version__} sees no CUDA GPU here",
                                  hint="use device cpu (or auto, which takes CUDA only where there is a GPU)")
    return device


@contextmanager
def _quiet_loading():
    """No "Loading weights" progress bar on the chat console."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


_ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def checkpoint_bytes_per_token(ckpt, dtype: str | None) -> int:
    """The source's weights one token reads, as the baseline holds them (``dtype``; None: as stored)."""
    arch = ckpt.architecture
    share = arch.routed_share(ckpt.config)  # a mixture of experts reads only the experts a token is routed to
    total, embed = 0, 0
    for name, t in ckpt.tensors.items():
        n = t.nbytes
        if dtype is not None and t.dtype in ("F32", "BF16", "F16"):
            elements = 1
            for d in t.shape:
                elements *= d
            n = elements * _ELEMENT_BYTES[dtype]
        if arch.is_expert_weight(name):
            n *= share
        total += n
        if name == f"{arch.embed}.weight":
            embed = n
    tied = bool(ckpt.config.get("tie_word_embeddings")) or f"{arch.head}.weight" not in ckpt.tensors
    return round(total - (0 if tied else embed))
