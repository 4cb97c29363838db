"""GGUF through llama.cpp.

- :mod:`~koquant.exporters.gguf.exporter`: the ``gguf`` format (convert, quantize, gate);
- :mod:`~koquant.exporters.gguf.llamacpp`: the pinned llama.cpp (sources, converter, quantizer, the
  portable CPU build, held-out logits);
- :mod:`~koquant.exporters.gguf.imatrix`: the importance matrix from Korean calibration text;
- :mod:`~koquant.exporters.gguf.reader`: the pure-Python GGUF header reader (plan, runtime and bench read with it).

``FORMAT`` is the format's registry entry (:class:`koquant.exporters.Format`).
"""

from __future__ import annotations

from pathlib import Path

from ...quant_recipes import gguf as _types
from .. import Format


def gguf_files(folder: Path) -> list[Path]:
    """The model files of a folder of GGUFs (an importance matrix is not a model)."""
    return sorted(f for f in folder.glob("*.gguf") if f.is_file() and not f.name.startswith("imatrix"))


def _detect(folder: Path) -> bool:
    """A folder of .gguf files that is not also a Hugging Face or onnxruntime-genai model folder."""
    return not (folder / "config.json").is_file() and not (folder / "genai_config.json").is_file() \
        and bool(gguf_files(folder))


FORMAT = Format(
    "gguf", "GGUF", "llama.cpp", "koquant.runtime.backends.gguf:GGUFBackend", _detect,
    extra="gguf", packages=("llama_cpp",), library="gguf",
    exporter="koquant.exporters.gguf.exporter:GGUFExporter",
    quants=_types.FILE_TYPES, default_quants=(_types.DEFAULT,), upper_case=True,
    sizer="koquant.plan.gguf_size:gguf_export", planned=tuple(_types.FILE_TYPES),
    file_suffix=".gguf", model_files=gguf_files,
)
