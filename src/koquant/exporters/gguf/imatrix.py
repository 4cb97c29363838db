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
from ..layerwise import ForwardPass


@dataclass
class Imatrix:
    """Per GGUF tensor name: sum of squared inputs (float64) and token count.

    A mixture of experts' 3-D tensor (``ffn_up_exps``) has one row of sums and one count per expert
    (the tokens routed to it), as llama-imatrix keeps them: ``sum2`` is then experts x columns and
    ``counts`` has one entry per expert; every other tensor has one row and one count.
    """

    sum2: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    n_chunks: int = 0

    def add(self, name: str, sum2: np.ndarray, count: np.ndarray) -> None:
        """Accumulate ``sum2`` (rows x columns) and ``count`` (one per row) into tensor ``name``."""
        if name in self.sum2:
            self.sum2[name] += sum2
            self.counts[name] += count
        else:
            self.sum2[name], self.counts[name] = sum2.copy(), count.copy()

    def values(self, name: str) -> np.ndarray:
        """Mean squared activation per input column (per expert, flattened), the form llama_model_quantize
        takes; an expert no calibration token reached gets 1 everywhere, as llama-quantize gives it."""
        sums, counts = self.sum2[name], self.counts[name].astype(np.float64)
        mean = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 1.0)
        return mean.reshape(-1).astype(np.float32)

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

    if isinstance(model, LayerwiseModel):
        return model.walk(chunks.ids, [ImatrixPass(arch)], on_layer=on_layer)[0]
    result = Imatrix()
    hooks = _hooks(model, arch, result, lambda: True)
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


class ImatrixPass(ForwardPass):
    """The importance matrix as one pass of a :meth:`~koquant.exporters.layerwise.LayerwiseModel.walk`:
    the source's own float activations (its stream of hidden states), collected only while this pass
    runs a layer, so other passes of the same walk (a GPTQ pass running its partly quantized copy of
    the layer) add nothing to it."""

    def __init__(self, arch: Architecture | None = None):
        self.arch = arch
        self.imatrix = Imatrix()
        self._active = False
        self._hooks = []

    def begin(self, model, inputs) -> None:
        super().begin(model, inputs)
        self._hooks = _hooks(model.model, self.arch or model.arch, self.imatrix, lambda: self._active)
        self.imatrix.n_chunks = len(inputs)

    def layer(self, index: int, layer) -> None:
        self._active = True
        try:
            super().layer(index, layer)
        finally:
            self._active = False

    def end(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def result(self) -> Imatrix:
        return self.imatrix


def _hooks(hf, arch: Architecture, result: Imatrix, active) -> list:
    """Forward pre-hooks on every linear (and experts module) of ``hf`` the GGUF name table knows, adding
    each input's squared sums to ``result`` while ``active()``."""
    import torch

    def make_hook(name: str):
        def hook(_module, args):
            if active():
                x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
                result.add(name, (x * x).sum(dim=0).numpy()[None, :], np.array([x.shape[0]]))

        return hook

    hooks = []
    for mod_name, module in hf.named_modules():
        if isinstance(module, torch.nn.Linear):
            gname = arch.gguf_linear(mod_name)
            if gname:
                hooks.append(module.register_forward_pre_hook(make_hook(gname)))
        elif arch.experts and hasattr(module, "gate_up_proj") and (split := arch.split_layer(mod_name + ".")):
            hooks.append(module.register_forward_pre_hook(_experts_hook(result, arch, split[0], module, active)))
    if not hooks:
        raise RuntimeError(f"no linear layers of {arch.hf_class} matched the GGUF name table")
    return hooks


def _experts_hook(result: Imatrix, arch: Architecture, layer: int, experts, active):
    """The importance of a layer's experts, from what its router sends each one.

    transformers' experts module gets the layer's tokens and each token's chosen experts; expert
    ``e``'s gate and up projections see the tokens routed to it, its down projection their
    ``act(gate) * up`` (recomputed here, in float32 as the model does), each counted per expert
    like llama-imatrix counts a ``MUL_MAT_ID``.
    """
    import torch

    from ...source.architectures import GGUF_LAYERS

    # the registry's expert tensors: those reading the layer's hidden states, and the one reading act(gate)*up
    expert_linears = [lin for lin in arch.linears if lin.expert]
    inputs = [f"{GGUF_LAYERS}.{layer}.{lin.gguf}.weight" for lin in expert_linears if lin.in_dim == "hidden"]
    down_inputs = [f"{GGUF_LAYERS}.{layer}.{lin.gguf}.weight" for lin in expert_linears if lin.in_dim != "hidden"]

    def hook(_module, args):
        if not active():
            return
        hidden, top_k_index = args[0].detach(), args[1]
        n_exp = experts.gate_up_proj.shape[0]
        width, inner = hidden.shape[-1], experts.down_proj.shape[-1]
        s_in = np.zeros((n_exp, width))
        s_down = np.zeros((n_exp, inner))
        counts = np.zeros(n_exp, dtype=np.int64)
        with torch.no_grad():
            for e in range(n_exp):
                rows = (top_k_index == e).any(dim=-1).nonzero().reshape(-1)
                if not len(rows):
                    continue
                x = hidden[rows]
                gate, up = torch.nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
                inner_x = experts.act_fn(gate) * up
                s_in[e] = (x.to(torch.float64) ** 2).sum(dim=0).numpy()
                s_down[e] = (inner_x.to(torch.float64) ** 2).sum(dim=0).numpy()
                counts[e] = len(rows)
        for name in inputs:
            result.add(name, s_in, counts)
        for name in down_inputs:
            result.add(name, s_down, counts)

    return hook
