"""The source model as the reference every export is measured against, and what calibration takes from it.

It tokenizes the held-out and calibration text and computes the reference logits that every
format's gate compares to, and (:class:`SharedCalibration`) the statistics the formats of one export
derive from the calibration chunks, in one walk over the source. The logits (and the GGUF importance matrix) come from
:class:`~koquant.exporters.layerwise.LayerwiseModel`, which holds one decoder layer in float32 at a time,
so the reference costs a few layers of memory, not the whole model; ``model`` (the whole model
in float32) is loaded only by the code that needs it (ONNX int4 GPTQ and greedy parity).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from ..quant_recipes.calibration import Chunks, TextSet, chunk_tokens
from ..source.checkpoint import Checkpoint
from ..quant_recipes.recipe import Recipe


class Reference:
    def __init__(self, ckpt: Checkpoint, staged_dir: Path, recipe: Recipe, heldout: TextSet):
        self.ckpt = ckpt
        self.dir = staged_dir
        self.recipe = recipe
        self.heldout = heldout

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.dir)

    @cached_property
    def model(self):
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.dir, dtype=torch.float32).eval()

    @cached_property
    def layerwise(self):
        """The source in float32, one decoder layer in memory at a time."""
        from .layerwise import LayerwiseModel

        return LayerwiseModel(self.dir, self.ckpt.architecture)

    @cached_property
    def bos_id(self) -> int | None:
        """BOS id if the tokenizer adds one, else None."""
        tok = self.tokenizer
        ids = tok("가")["input_ids"]
        return tok.bos_token_id if tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id else None

    def encode(self, text: str) -> list[int]:
        """Token ids the way the source tokenizer produces them (BOS included when it adds one)."""
        return list(self.tokenizer(text)["input_ids"])

    @cached_property
    def heldout_ids(self) -> list[int]:
        return self.encode(self.heldout.plain_text())

    @cached_property
    def eval_chunks(self) -> Chunks:
        return chunk_tokens(self.heldout_ids, self.recipe.eval_ctx, self.recipe.eval_chunks, self.bos_id)

    @cached_property
    def logits(self) -> list[np.ndarray]:
        """Source next-token logits (float32) for every eval chunk.

        From the whole model when something already loaded it, else layer by layer: the two are
        bit-identical (``tests/test_memory_bound.py``).
        """
        import torch

        if "model" not in self.__dict__:
            return self.layerwise.logits(self.eval_chunks.ids)
        out = []
        with torch.inference_mode():
            for chunk in self.eval_chunks.ids:
                out.append(self.model(input_ids=torch.tensor([chunk]), use_cache=False).logits[0].float().numpy())
        return out

    def calibration_chunks(self, calib: TextSet) -> Chunks:
        """The calibration text as token chunks (tokenized once per export, whichever formats use it)."""
        cache = self.__dict__.setdefault("_chunks", {})
        if calib.sha256 not in cache:
            cache[calib.sha256] = self._calibration_chunks(calib)
        return cache[calib.sha256]

    def _calibration_chunks(self, calib: TextSet) -> Chunks:
        r = self.recipe
        if r.calib_chat:
            if not self.ckpt.chat_template:
                from ..errors import CalibrationError

                raise CalibrationError("--calib-chat needs a chat template, and the model has none",
                                       hint="drop --calib-chat or add chat_template.jinja to the model folder")
            tok = self.tokenizer
            text = calib.chat_text(self.ckpt.chat_template, tok.bos_token, tok.eos_token)
            ids = list(tok(text, add_special_tokens=False)["input_ids"])
        else:
            ids = self.encode(calib.plain_text())
        return chunk_tokens(ids, r.calib_ctx, r.calib_chunks, self.bos_id)


class SharedCalibration:
    """The calibration statistics of every format of one export, from one walk over the source.

    Each exporter names the passes it needs (:meth:`~koquant.exporters.Exporter.calibration_passes`:
    GGUF's importance matrix, ONNX int4's GPTQ codes); the first one asked for runs all of them in
    one :meth:`~koquant.exporters.layerwise.LayerwiseModel.walk`, which loads each decoder layer from
    the checkpoint once and runs every pass on it, each with its own stream of hidden states, so each
    result is exactly what the pass gives alone (``tests/test_memory_bound.py``).
    """

    def __init__(self, reference: Reference, calibration: TextSet, passes: dict):
        """``passes``: key -> (label, factory of a :class:`~koquant.exporters.layerwise.LayerPass`)."""
        self.reference, self.calibration, self.passes = reference, calibration, dict(passes)
        self.results: dict | None = None

    @property
    def chunks(self) -> Chunks:
        return self.reference.calibration_chunks(self.calibration)

    def get(self, key: str, ctx):
        """The result of pass ``key``; the walk runs (with a progress bar on ``ctx``) the first time."""
        if self.results is None:
            chunks, lw = self.chunks, self.reference.layerwise
            labels = ", ".join(label for label, _ in self.passes.values())
            with ctx.task(f"calibrating on Korean text ({len(chunks.ids)}×{chunks.n_ctx} tokens): {labels}",
                          lw.n_layers) as advance:
                out = lw.walk(chunks.ids, [make() for _, make in self.passes.values()], on_layer=advance)
            self.results = dict(zip(self.passes, out))
        return self.results[key]

    def release(self, key: str) -> None:
        """Drop the result of pass ``key`` once its format has written it (int4 codes: a byte per weight)."""
        if self.results is not None:
            self.results[key] = None

    def use(self) -> dict:
        """What the manifest records of it, beside each format's own use of the text."""
        chunks = self.chunks
        return {"chunks": len(chunks.ids), "chunk_size": chunks.n_ctx, "tokens": chunks.n_tokens,
                "chunks_sha256": chunks.sha256, "one_pass": [label for label, _ in self.passes.values()]}
