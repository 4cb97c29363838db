"""The source model as the reference every export is measured against.

It tokenizes the held-out and calibration text and computes the reference logits that every
format's gate compares to. The logits (and the GGUF importance matrix) come from
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
