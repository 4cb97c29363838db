"""The onnxruntime-genai backend: an ONNX export folder (``genai_config.json`` + ``model.onnx``).

Token ids go in with ``Generator.append_tokens`` (the runtime's KV cache is kept between calls
and trimmed with ``rewind_to``), the last position's logits come back with ``get_logits``, and
koquant's sampler picks the token; onnxruntime-genai's own search, tokenizer and (minja) chat
template engine are never used to build the prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import missing_extra
from ..loader import LoadError, Target
from ..session import Backend


class OnnxBackend(Backend):
    name = "onnxruntime-genai"
    format = "onnx"
    own_tokenizer = "onnxruntime-genai's tokenizer"
    options = ("threads", "n_ctx")

    @classmethod
    def import_runtime(cls) -> None:
        from ...exporters.onnx import genai

        genai.import_og()

    @classmethod
    def weight_files(cls, model: Path) -> list[Path]:
        return sorted(p for p in model.iterdir()
                      if p.is_file() and (p.suffix == ".onnx" or p.name.endswith(".onnx.data")))

    @classmethod
    def bytes_per_token(cls, folder: Path) -> int:
        """Initializer bytes of model.onnx (read without its external data), less an untied embedding table."""
        model = folder / "model.onnx"
        try:
            import onnx
        except ImportError:  # the runtime without the onnx package: count the files
            return sum(p.stat().st_size for p in cls.weight_files(folder))
        graph = onnx.load(str(model), load_external_data=False).graph
        sizes: dict[str, int] = {}
        for init in graph.initializer:
            ext = {e.key: e.value for e in init.external_data}
            sizes[init.name] = int(ext["length"]) if "length" in ext else len(init.raw_data)
        uses: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        inputs = {i.name for i in graph.input}
        embed = 0
        for node in graph.node:  # the lookup table: a Gather (or its quantized form) indexed by input_ids
            if node.op_type.startswith("Gather") and len(node.input) > 1 and node.input[1] in inputs:
                tables = [n for n in node.input if n in sizes]
                if tables and all(uses.get(n, 0) == 1 for n in tables):
                    embed += sum(sizes[n] for n in tables)
        return sum(sizes.values()) - embed

    def __init__(self, target: Target, *, threads: int | None = None, n_ctx: int | None = None):
        self.folder = Path(target.model)
        cfg_path = self.folder / "genai_config.json"
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))["model"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LoadError(f"{cfg_path} is not a valid onnxruntime-genai config: {e}",
                            hint="re-run the export") from None
        self._threads = int(threads or max((os.cpu_count() or 2) // 2, 1))
        try:
            from ...exporters.onnx import genai  # koquant's onnxruntime-genai helpers: install checks, loading
        except ImportError:
            raise missing_extra("this koquant has no onnxruntime-genai support installed", "onnx") from None
        self._og = genai.import_og()
        self.model = genai.load_model(self.folder, self._threads)
        self.n_vocab = int(config["vocab_size"])
        context = int(config.get("context_length") or 4096)
        if n_ctx and n_ctx > context:
            raise LoadError(f"n_ctx={n_ctx} is longer than the export's context_length {context}",
                            hint=f"use n_ctx <= {context}")
        self.n_ctx = int(n_ctx or min(context, 4096))
        # the runtime refuses a KV cache shorter than a sliding window: ask for at least the window
        self._cache = max(self.n_ctx, genai.min_cache(self.folder))
        self._gen = None
        self._n = 0
        self._tokenizer = None

    def _generator(self):
        og = self._og
        params = og.GeneratorParams(self.model)
        # only the cache size matters: koquant samples, the runtime's own search is never asked for a token
        params.set_search_options(max_length=self._cache, do_sample=False, num_beams=1)
        return og.Generator(self.model, params)

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        if self._gen is None:
            self._gen, self._n = self._generator(), 0
        self._gen.append_tokens(np.asarray(ids, dtype=np.int32))
        self._n += len(ids)
        return np.asarray(self._gen.get_logits(), dtype=np.float32).reshape(-1)[-self.n_vocab:].copy()

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        self._gen, self._n = self._generator(), 0
        self._gen.append_tokens(np.asarray(ids, dtype=np.int32))
        self._n = len(ids)
        out = np.asarray(self._gen.get_output("logits"), dtype=np.float32)
        return out.reshape(-1, self.n_vocab)[-len(ids):].copy()

    def rewind(self, n: int) -> int:
        if self._gen is None or n <= 0:
            self._gen, self._n = None, 0
            return 0
        if n >= self._n:
            return self._n
        try:
            self._gen.rewind_to(n)
        except Exception:  # noqa: BLE001 - a model whose cache cannot rewind: start over
            self._gen, self._n = None, 0
            return 0
        self._n = n
        return n

    def own_tokenize(self, text: str) -> list[int]:
        if self._tokenizer is None:
            self._tokenizer = self._og.Tokenizer(self.model)
        return [int(t) for t in self._tokenizer.encode(text)]

    @property
    def threads(self) -> int:
        return self._threads

    def model_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir()
                   if p.is_file() and (p.suffix == ".onnx" or p.name.endswith(".onnx.data")))

    def describe(self) -> dict:
        return {"folder": self.folder.name}

    def close(self) -> None:
        self._gen = None
        self._tokenizer = None
        self.model = None
