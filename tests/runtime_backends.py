"""Which runtime columns the runtime tests cover (shared by the parity, CLI and security tests)."""

from __future__ import annotations

from koquant.exporters import available_formats
from koquant.runtime.loader import available_backends


def onnx_available() -> bool:
    """The ONNX column: koquant has both the ONNX exporter and the onnxruntime-genai runtime."""
    return "onnx" in available_backends() and "onnx" in available_formats()


def gptq_available() -> bool:
    return "gptq" in available_backends() and "gptq" in available_formats()
