"""The GPTQ backend: a GPTQ v1 checkpoint run by transformers with GPTQModel's CPU kernels.

It is the transformers backend with the quantized weights: ``AutoModelForCausalLM.from_pretrained
(folder, device_map="cpu")`` reads ``quantization_config`` and swaps every quantized Linear for
GPTQModel's kernel (optimum and gptqmodel must be installed, the ``gptq`` extra); a mixture of
experts loads with its experts as per-expert Linears (Defuser, :mod:`koquant.exporters.gptq.loading`).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from ...errors import missing_extra
from .hf import HFBackend
from ..loader import Target


class GPTQBackend(HFBackend):
    name = "transformers+gptqmodel"
    format = "gptq"
    options = ("threads", "n_ctx")

    @classmethod
    def import_runtime(cls) -> None:
        super().import_runtime()
        from ...exporters.gptq.loading import import_gptqmodel

        import_gptqmodel()
        import optimum  # noqa: F401

    @classmethod
    def bytes_per_token(cls, model: Path) -> int:
        """Every stored tensor a token reads (packed weights, scales, zero points, the 16-bit rest; of a mixture
        of experts only the routed share of the experts) but an untied embedding."""
        from ...source.architectures import architecture_for
        from ...source.safetensors import read_safetensors_header

        config = json.loads((model / "config.json").read_text(encoding="utf-8"))
        arch = architecture_for(config)
        tensors = {}
        for p in sorted(model.glob("*.safetensors")):
            tensors.update({n: t.nbytes for n, t in read_safetensors_header(p).items()})
        share = arch.routed_share(config)  # a mixture of experts reads only the routed experts
        total = sum(n * share if arch.is_expert_weight(name) else n for name, n in tensors.items())
        if f"{arch.head}.weight" in tensors:  # untied: the token embedding is only looked up
            total -= tensors.get(f"{arch.embed}.weight", 0)
        return round(total)

    def __init__(self, target: Target, *, threads: int | None = None, n_ctx: int | None = None):
        missing = [m for m in ("gptqmodel", "optimum") if importlib.util.find_spec(m) is None]
        if missing:
            raise missing_extra(f"running a GPTQ checkpoint needs {' and '.join(missing)}, not installed", "gptq")
        # GPTQModel crashes on machines with <= 3 cores unless it has at least two CPU workers
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
        from ...procs import cache_root

        os.environ.setdefault("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(cache_root() / "gptqmodel-extensions"))
        super().__init__(target, dtype="float32", threads=threads, n_ctx=n_ctx)

    def _load(self, auto, target: Target, dtype):
        from ...exporters.gptq.loading import load_quantized

        return load_quantized(target.model, trust_remote_code=False)

    def describe(self) -> dict:
        qc = getattr(self.model.config, "quantization_config", None)
        qc = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc or {})
        return {"bits": qc.get("bits"), "group_size": qc.get("group_size"), "desc_act": qc.get("desc_act")}
