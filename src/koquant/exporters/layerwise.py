"""The source model run one decoder layer at a time, straight from its safetensors files.

Loading a whole checkpoint in float32 to compute reference logits costs 4 bytes per parameter
(43 GB for a 10.8 B model) before any export starts. :class:`LayerwiseModel` builds the model's
modules on the ``meta`` device (no memory), then materializes the weights of one piece at a
time - the embedding, each decoder layer, the final norm and head - runs every chunk through
it and drops it again. Peak memory is one layer (or the embedding) plus the activations of the
chunks, whatever the depth of the model.

The pieces are the model's own transformers modules, fed exactly what its ``forward`` feeds
them (captured at the first decoder layer: hidden states, rotary embeddings, causal mask), one
chunk at a time with the same shapes, so the logits are bit-identical to
``AutoModelForCausalLM.from_pretrained(..., dtype=float32)`` (``tests/test_memory_bound.py``).
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..source.architectures import Architecture, architecture_for


class _Captured(Exception):
    pass


def capture_layer_inputs(model, first_layer, chunks) -> list[tuple]:
    """(hidden_states, kwargs) entering ``first_layer`` (decoder layer 0 of ``model``) for every chunk of token ids.

    The one layer-input capture: a forward pre-hook records what the model's own forward hands the first
    layer (embeddings, position embeddings, masks) and stops the forward there. Used by the layer-by-layer
    reference and by the ONNX int4 GPTQ pass.
    """
    import torch

    captured = []

    def grab(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), dict(kwargs)))
        raise _Captured

    hook = first_layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            for ids in chunks:
                try:
                    model(input_ids=torch.tensor([list(ids)]), use_cache=False)
                except _Captured:
                    pass
    finally:
        hook.remove()
    return captured


def run_layer(layer, states) -> list[tuple]:
    """Every (hidden_states, kwargs) of ``states`` through one decoder layer: its output states, same kwargs."""
    import torch

    out = []
    with torch.inference_mode():
        for hidden, kwargs in states:
            y = layer(hidden, **kwargs)
            out.append((y[0] if isinstance(y, tuple) else y, kwargs))
    return out


@contextmanager
def _parameters_on_meta():
    """Build modules with every parameter on the ``meta`` device (no memory, no initialization cost).

    Buffers stay on the CPU: the non-persistent ones (rotary ``inv_freq``, Gemma's ``embed_scale``)
    are computed in the constructors and never stored in the checkpoint.
    """
    import torch

    register = torch.nn.Module.register_parameter

    def to_meta(module, name, param):
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = to_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _release_freed_memory() -> None:
    """Give the freed layer back to the OS. glibc keeps freed blocks of a few MiB in its heap (its
    mmap threshold grows after the first large free), and the next layer's tensors rarely fit the
    holes exactly, so without this the process grows by about half a layer per layer."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


class LayerwiseModel:
    """A causal LM whose weights stay on disk until the layer that needs them runs."""

    def __init__(self, folder: Path, arch: Architecture | None = None):
        """``arch``: the registry entry (module paths); by default the one the folder's config names."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.folder = Path(folder)
        self.config = AutoConfig.from_pretrained(self.folder)
        self.arch = arch or architecture_for(self.config)
        with _parameters_on_meta():
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32).eval()
        self._where = self._weight_map()
        tied = getattr(self.model, "_tied_weights_keys", None) or {}
        self._tied = dict(tied) if isinstance(tied, dict) and getattr(self.config, "tie_word_embeddings", False) else {}

    # ------------------------------------------------------------------ weights
    def _weight_map(self) -> dict[str, Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return {name: self.folder / file for name, file in wm.items()}
        from safetensors import safe_open

        where = {}
        for f in sorted(self.folder.glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                where.update({name: f for name in st.keys()})
        return where

    def _tensor(self, name: str):
        import torch
        from safetensors import safe_open

        source = name if name in self._where else self._tied.get(name, name)
        if source not in self._where:
            raise KeyError(f"{name} is not in the checkpoint's safetensors files")
        with safe_open(self._where[source], "pt") as st:
            return st.get_tensor(source).to(torch.float32)

    def _load(self, prefix: str) -> None:
        module = self.model.get_submodule(prefix)
        state = {n: self._tensor(f"{prefix}.{n}") for n, _ in module.named_parameters()}
        module.load_state_dict(state, assign=True, strict=True)

    def _drop(self, prefix: str) -> None:
        """Release the weights of ``prefix`` (its buffers stay: they are small and not in the checkpoint)."""
        import torch

        for module in self.model.get_submodule(prefix).modules():
            for name, param in list(module._parameters.items()):
                if param is not None and not param.is_meta:
                    module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)
        _release_freed_memory()

    # ------------------------------------------------------------------ running
    @property
    def n_layers(self) -> int:
        return len(self.model.get_submodule(self.arch.layers))

    def layer_inputs(self, chunks: Sequence[Sequence[int]]) -> list[tuple]:
        """(hidden_states, kwargs) at the first decoder layer for every chunk, as the model's forward makes them."""
        embed = self.arch.embed
        self._load(embed)
        try:
            return capture_layer_inputs(self.model, self.model.get_submodule(self.arch.layer(0)), chunks)
        finally:
            self._drop(embed)

    def run_decoder(self, chunks: Sequence[Sequence[int]], on_layer: Callable[[], None] | None = None) -> list:
        """Every chunk through every decoder layer, one layer in memory at a time; the last hidden states."""
        states = self.layer_inputs(chunks)
        for i in range(self.n_layers):
            prefix = self.arch.layer(i)
            self._load(prefix)
            try:
                states = run_layer(self.model.get_submodule(prefix), states)
            finally:
                self._drop(prefix)
            if on_layer is not None:
                on_layer()
        return [h for h, _ in states]

    def logits(self, chunks: Sequence[Sequence[int]], on_layer: Callable[[], None] | None = None) -> list[np.ndarray]:
        """Next-token logits (float32) of every chunk: what ``model(input_ids).logits[0]`` gives."""
        import torch

        hidden = self.run_decoder(chunks, on_layer)
        norm, head = self.arch.norm, self.arch.head
        self._load(norm)
        self._load(head)
        softcap = getattr(self.config, "final_logit_softcapping", None) if self.arch.logit_softcap else None
        out = []
        try:
            with torch.inference_mode():
                for h in hidden:
                    logits = self.model.get_submodule(head)(self.model.get_submodule(norm)(h))
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                    out.append(logits[0].float().numpy())
        finally:
            self._drop(norm)
            self._drop(head)
        return out
