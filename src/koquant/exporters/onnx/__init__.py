"""ONNX through onnxruntime-genai's model builder.

- :mod:`~koquant.exporters.onnx.exporter`: the ``onnx`` format (build, int4 GPTQ, gate);
- :mod:`~koquant.exporters.onnx.builder`: the pinned onnxruntime-genai model builder;
- :mod:`~koquant.exporters.onnx.genai`: onnxruntime-genai install checks, loading and the gate's child job;
- :mod:`~koquant.exporters.onnx.int4_gptq`: GPTQ for the int4 MatMulNBits weights;
- :mod:`~koquant.exporters.onnx.matmulnbits`: reading MatMulNBits graphs (storage types, the builder's own int4 codes);
- :mod:`~koquant.exporters.onnx.quantized_input`: koquant's int4 codes as the builder's GPTQ-checkpoint input;
- :mod:`~koquant.exporters.onnx.parity`: tokenizer and chat-template parity with the source.

``FORMAT`` is the format's registry entry (:class:`koquant.exporters.Format`).
"""

from __future__ import annotations

from pathlib import Path

from ...quant_recipes import onnx as _precisions
from .. import Format

GENAI_CONFIG = "genai_config.json"  # what makes a folder an onnxruntime-genai model


def _detect(folder: Path) -> bool:
    return (folder / GENAI_CONFIG).is_file()


FORMAT = Format(
    "onnx", "ONNX (onnxruntime-genai)", "onnxruntime-genai", "koquant.runtime.backends.onnx:OnnxBackend", _detect,
    extra="onnx", packages=("onnxruntime_genai",), library="onnxruntime-genai",
    exporter="koquant.exporters.onnx.exporter:ONNXExporter",
    quants=_precisions.PRECISIONS, default_quants=(_precisions.DEFAULT,),
    sizer="koquant.plan.other_formats:onnx_export", planned=_precisions.EXPORTABLE,
)
