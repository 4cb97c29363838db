"""koquant: Korean fine-tuned LLMs from a Hugging Face checkpoint to GGUF, GPTQ and ONNX.

    import koquant
    koquant.export("my-model", koquant.Recipe("gguf", ("Q4_K_M",)), "out/")

Heavy backends (torch, llama_cpp, ...) are imported only by the code that needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging as _logging

# transformers imports torchao (a GPTQModel dependency) whenever it loads a model; torchao then
# warns about CUDA-only extensions it cannot load and torch about its enum registrations. Neither
# concerns a CPU user; keep them off the console unless a logger was configured on purpose.
for _name in ("torchao", "torch.utils._pytree"):
    if _logging.getLogger(_name).level == _logging.NOTSET:
        _logging.getLogger(_name).setLevel(_logging.ERROR)

# public name -> the module that defines it, imported on first use (see __getattr__)
_LAZY = {
    "Artifact": ".artifact",
    "Checkpoint": ".source.checkpoint",
    "KoquantError": ".errors",
    "Recipe": ".quant_recipes.recipe",
    "bench": ".bench",
    "export": ".exporters.pipeline",
    "load": ".runtime.loader",
    "serve": ".serve",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'koquant' has no attribute {name!r}")


def _callable_package(name: str, function: str) -> None:
    """Make the package ``name`` callable as its ``function``.

    ``koquant.bench`` and ``koquant.serve`` name both a function of the public API and the package that
    defines it; once the package is imported, Python sets ``koquant.bench`` to the package itself, so
    the package must call through to its function for ``koquant.bench(...)`` to keep working.
    """
    import sys
    import types

    class CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function)(*args, **kwargs)

    sys.modules[name].__class__ = CallablePackage
