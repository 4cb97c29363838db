"""How each format is made: the format registry, one decorator per exporter.

An exporter module (``exporters/<format>/exporter.py``, beside its backend helpers) registers
itself with ``@register_format("gguf")``; the registry maps the name to the module that defines
it, so nothing heavy is imported until a format is used. Adding a format touches its own package
plus one line in ``_MODULES``. The stages around the exporters live here too: ``pipeline.py``
(``koquant.export``), ``reference.py`` and ``layerwise.py`` (the source), ``gate.py`` (the thresholds).
"""

from __future__ import annotations

import importlib

from ..errors import RecipeError

_MODULES = {"gguf": "koquant.exporters.gguf.exporter", "onnx": "koquant.exporters.onnx.exporter",
            "gptq": "koquant.exporters.gptq.exporter"}
_REGISTRY: dict[str, type] = {}


def register_format(name: str):
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_formats() -> list[str]:
    return sorted(_MODULES)


def get_exporter(name: str):
    """An instance of the exporter for ``name``, or a clear error listing the formats."""
    if name not in _MODULES:
        raise RecipeError(f"unknown format {name!r}", hint="choose one of: " + ", ".join(available_formats()))
    if name not in _REGISTRY:
        importlib.import_module(_MODULES[name])
    return _REGISTRY[name]()
