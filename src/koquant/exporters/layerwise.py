"""The source model run one decoder layer at a time, straight from its safetensors files.

Loading a whole checkpoint in float32 to compute reference logits costs 4 bytes per parameter
(43 GB for a 10.8 B model) before any export starts. :class:`LayerwiseModel` builds the model's
modules on the ``meta`` device (no memory), then materializes the weights of one piece at a
time - the embedding, each decoder layer, the final norm and head - runs every chunk through
it and drops it again. Peak memory is one layer (or the embedding) plus the activations of the
chunks, whatever the depth of the model.

The pieces are the model's own transformers modules, fed exactly what its ``forward`` feeds
them (captured per decoder layer: hidden states, rotary embeddings, the mask of its attention
type), one chunk at a time with the same shapes, so the logits are bit-identical to
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


def capture_layer_inputs(model, layers, chunks) -> list[tuple]:
    """What the model's own forward hands each decoder layer in ``layers``, for every chunk of token ids.

    Returns one ``(hidden_states, kwargs_per_layer)`` per chunk: the hidden states entering the first
    layer and, for every layer, the keyword arguments its forward receives (position embeddings,
    attention mask). Those differ between layers in families that mix attention types (Gemma 2/3,
    EXAONE 4: a sliding-window mask and local rope on some layers, a full mask and global rope on the
    others), so each layer is later fed its own. While capturing, every layer passes its input
    through unchanged, and the forward stops after the last layer. The one layer-input capture:
    used by the layer-by-layer reference and by the ONNX int4 GPTQ pass.
    """
    import torch

    captured = []
    current: dict = {}
    last = len(layers) - 1

    def recorder(i):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if i == 0:
                current["hidden"] = hidden.detach()
            current.setdefault("kwargs", []).append(dict(kwargs))
            if i == last:
                raise _Captured
            return hidden
        return forward

    for i, layer in enumerate(layers):
        layer.forward = recorder(i)
    try:
        with torch.inference_mode():
            for ids in chunks:
                current.clear()
                try:
                    model(input_ids=torch.tensor([list(ids)]), use_cache=False)
                except _Captured:
                    pass
                captured.append((current["hidden"], current["kwargs"]))
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward
    return captured


def run_layer(layer, index: int, states) -> list[tuple]:
    """Every ``(hidden_states, kwargs_per_layer)`` of ``states`` through decoder layer ``index``:
    its output states, fed that layer's own kwargs; the kwargs are passed on unchanged."""
    import torch

    out = []
    with torch.inference_mode():
        for hidden, kwargs in states:
            y = layer(hidden, **kwargs[index])
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


class LayerPass:
    """Something computed from the calibration chunks layer by layer (:meth:`LayerwiseModel.walk`).

    ``begin`` gets the model and the first layer's inputs, ``layer`` each decoder layer while it is in
    memory (in order), ``end`` is called once the walk stops (also on an error), ``result`` after it.
    A pass must leave the layer's weights as it found them: the next pass runs the same layer.
    """

    def begin(self, model: "LayerwiseModel", inputs: list[tuple]) -> None:
        self.states = inputs

    def layer(self, index: int, layer) -> None:
        raise NotImplementedError

    def end(self) -> None:
        pass

    def result(self):
        raise NotImplementedError


class ForwardPass(LayerPass):
    """The chunks through every layer as the model's forward runs them; the last layer's hidden states."""

    def layer(self, index: int, layer) -> None:
        self.states = run_layer(layer, index, self.states)

    def result(self) -> list:
        return [h for h, _ in self.states]


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
        #: (parameter name, float32 tensor) -> tensor, applied to every weight as it is loaded (see ``transformed``)
        self.weight_transform = None

    @contextmanager
    def transformed(self, fn):
        """Run the model with every weight passed through ``fn(name, tensor)`` as it is loaded: e.g. weights
        rounded to a quantization grid, to measure round-to-nearest without writing a file."""
        self.weight_transform = fn
        try:
            yield self
        finally:
            self.weight_transform = None

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
            fused = self._fused_experts(name)
            if fused is None:
                raise KeyError(f"{name} is not in the checkpoint's safetensors files")
            return fused
        with safe_open(self._where[source], "pt") as st:
            return st.get_tensor(source).to(torch.float32)

    def _fused_experts(self, name: str):
        """A mixture of experts' 3-D parameter from the per-expert Linears checkpoints store.

        transformers 5 keeps a layer's experts as ``experts.gate_up_proj`` (experts x 2*ffn x hidden:
        each expert's gate rows, then its up rows) and ``experts.down_proj`` (experts x hidden x ffn),
        and converts the ``experts.E.{gate,up,down}_proj.weight`` tensors of a saved checkpoint to
        them as it loads; the same here. None for any other name.
        """
        import torch

        stem, _, kind = name.rpartition(".")
        if not stem.endswith(".experts") or kind not in ("gate_up_proj", "down_proj"):
            return None
        n = 0
        while f"{stem}.{n}.down_proj.weight" in self._where:
            n += 1
        if not n:
            return None
        if kind == "down_proj":
            return torch.stack([self._tensor(f"{stem}.{e}.down_proj.weight") for e in range(n)])
        return torch.stack([torch.cat([self._tensor(f"{stem}.{e}.gate_proj.weight"),
                                       self._tensor(f"{stem}.{e}.up_proj.weight")]) for e in range(n)])

    def _load(self, prefix: str) -> None:
        module = self.model.get_submodule(prefix)
        state = {n: self._tensor(f"{prefix}.{n}") for n, _ in module.named_parameters()}
        if self.weight_transform is not None:
            state = {n: self.weight_transform(f"{prefix}.{n}", t) for n, t in state.items()}
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
        """(hidden_states, kwargs_per_layer) for every chunk, as the model's forward makes them."""
        embed = self.arch.embed
        self._load(embed)
        try:
            return capture_layer_inputs(self.model, self.model.get_submodule(self.arch.layers), chunks)
        finally:
            self._drop(embed)

    def walk(self, chunks: Sequence[Sequence[int]], passes: Sequence["LayerPass"],
             on_layer: Callable[[], None] | None = None) -> list:
        """Run every pass over the decoder, each layer loaded from disk once for all of them; their results.

        Every pass starts from the same first-layer inputs of ``chunks`` and keeps its own stream of
        hidden states (the importance matrix follows the source's float activations, a GPTQ pass its
        own partly quantized model's), so each gives exactly what it gives walking alone.
        """
        inputs = self.layer_inputs(chunks)
        for p in passes:
            p.begin(self, inputs)
        try:
            for i in range(self.n_layers):
                prefix = self.arch.layer(i)
                self._load(prefix)
                try:
                    layer = self.model.get_submodule(prefix)
                    for p in passes:
                        p.layer(i, layer)
                finally:
                    self._drop(prefix)
                if on_layer is not None:
                    on_layer()
        finally:
            for p in passes:
                p.end()
        return [p.result() for p in passes]

    def run_decoder(self, chunks: Sequence[Sequence[int]], on_layer: Callable[[], None] | None = None) -> list:
        """Every chunk through every decoder layer, one layer in memory at a time; the last hidden states."""
        return self.walk(chunks, [ForwardPass()], on_layer)[0]

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
