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

__all__ = ["Artifact", "Checkpoint", "KoquantError", "Recipe", "export", "load", "__version__"]


def __getattr__(name: str):
    if name == "export":
        from .exporters.pipeline import export

        return export
    if name == "load":
        from .runtime.loader import load

        return load
    if name == "Recipe":
        from .quant_recipes.recipe import Recipe

        return Recipe
    if name == "Checkpoint":
        from .source.checkpoint import Checkpoint

        return Checkpoint
    if name == "Artifact":
        from .artifact import Artifact

        return Artifact
    if name == "KoquantError":
        from .errors import KoquantError

        return KoquantError
    raise AttributeError(f"module 'koquant' has no attribute {name!r}")
