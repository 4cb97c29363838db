"""GPTQ through GPTQModel.

- :mod:`~koquant.exporters.gptq.exporter`: the ``gptq`` format (checks, worker jobs, gate);
- :mod:`~koquant.exporters.gptq.worker`: GPTQModel in a child process;
- :mod:`~koquant.exporters.gptq.loading`: transformers loading a GPTQ checkpoint (a mixture of experts'
  experts defused), shared by the gate and the runtime backend.

``FORMAT`` is the format's registry entry (:class:`koquant.exporters.Format`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...quant_recipes import gptq as _variants
from .. import Format


def _detect(folder: Path) -> bool:
    """``config.json`` with a GPTQ ``quantization_config``, or GPTQModel's ``quantize_config.json``."""
    if not (folder / "config.json").is_file() or (folder / "genai_config.json").is_file():
        return False
    if (folder / "quantize_config.json").is_file():
        return True
    try:
        qc = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("quantization_config")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False  # an unreadable config is the Hugging Face loader's to report
    return isinstance(qc, dict) and qc.get("quant_method") == "gptq"


FORMAT = Format(
    "gptq", "GPTQ", "transformers with GPTQModel", "koquant.runtime.backends.gptq:GPTQBackend", _detect,
    extra="gptq", packages=("gptqmodel",), library="transformers",
    exporter="koquant.exporters.gptq.exporter:GPTQExporter",
    quants=_variants.VARIANTS, default_quants=(_variants.DEFAULT.name,),
    sizer="koquant.plan.other_formats:gptq_export", planned=_variants.PLANNED,
)
