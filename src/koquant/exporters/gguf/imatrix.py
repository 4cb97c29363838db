"""Importance matrix from one torch pass over the Korean calibration chunks.

For every linear layer inside the transformer blocks this accumulates, per input column,
the sum of squared activations and the number of tokens seen - exactly what llama.cpp's
``llama-imatrix`` collects (``in_sum2`` and ``counts``). ``tests/test_imatrix.py`` proves
the two agree on the same text and chunking.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...source.architectures import Architecture


@dataclass
class Imatrix:
    """Per GGUF tensor name: sum of squared inputs (float64) and token count."""

    sum2: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    n_chunks: int = 0

    def values(self, name: str) -> np.ndarray:
        """Mean squared activation per input column, the form llama_model_quantize takes."""
        return (self.sum2[name] / max(self.counts[name], 1)).astype(np.float32)

    def names(self) -> list[str]:
        return sorted(self.sum2)


def compute_imatrix(model, arch: Architecture, chunks, on_layer=None) -> Imatrix:
    """Run ``model`` over token chunks and collect the importance matrix.

    ``model``: an HF causal LM or a
    :class:`~koquant.exporters.layerwise.LayerwiseModel` (one decoder layer in memory at a time; ``on_layer``
    after each layer). Both accumulate every tensor's chunks in the same order, so they give the
    same sums.
    """
    import torch

    from ..layerwise import LayerwiseModel

    result = Imatrix()
    hooks = []

    def make_hook(name: str):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            s = (x * x).sum(dim=0).numpy()
            if name in result.sum2:
                result.sum2[name] += s
            else:
                result.sum2[name] = s
            result.counts[name] = result.counts.get(name, 0) + x.shape[0]

        return hook

    hf = model.model if isinstance(model, LayerwiseModel) else model
    for mod_name, module in hf.named_modules():
        if isinstance(module, torch.nn.Linear):
            gname = arch.gguf_linear(mod_name)
            if gname:
                hooks.append(module.register_forward_pre_hook(make_hook(gname)))
    if not hooks:
        raise RuntimeError(f"no linear layers of {arch.hf_class} matched the GGUF name table")
    if isinstance(model, LayerwiseModel):
        try:
            model.run_decoder(chunks.ids, on_layer=on_layer)
            result.n_chunks = len(chunks.ids)
        finally:
            for h in hooks:
                h.remove()
        return result
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    try:
        with torch.inference_mode():
            for chunk in chunks.ids:
                base(input_ids=torch.tensor([chunk]), use_cache=False)
                result.n_chunks += 1
    finally:
        for h in hooks:
            h.remove()
    return result
