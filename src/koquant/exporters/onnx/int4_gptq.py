"""Korean-calibrated int4 weights by GPTQ, in the block layout of onnxruntime's MatMulNBits.

GPTQ (Frantar et al., 2022) rounds a weight matrix one input column at a time and spreads each
column's rounding error over the columns not yet rounded, weighted by the inverse Hessian
``H = 2 XᵀX`` of the layer's inputs ``X`` - here, the activations of Korean calibration text.
Layers are processed in order: each layer's inputs come from the already quantized layers
before it, so later layers correct for earlier rounding.

The grid is the one onnxruntime's default (MLAS) int4 quantizer writes: per block of ``block``
input columns of one output row, ``scale = v / -8`` where ``v`` is the value of largest magnitude,
codes ``round(w / scale) + 8`` clipped to 0..15 and dequantized as ``(code - 8) * scale``, so the
results drop into the builder's own MatMulNBits nodes without changing the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...source.architectures import Architecture, architecture_for
from ..layerwise import capture_layer_inputs, run_layer

# Dampening added to the Hessian diagonal, as a fraction of its mean. The paper's 0.01 fits the
# calibration text's activations too closely: on the miniatures (trained on that very text) it loses
# to round-to-nearest on held-out Korean for the longest-trained one; 1.0 wins on every family
# (benchmarks/onnx_int4.md, --damp-sweep).
PERCDAMP = 1.0


@dataclass
class Int4Weight:
    """Codes [N, K] (uint8, 0..15, zero point 8) and scales [N, K // block] (float32) of one [N, K] weight."""

    codes: object  # torch.Tensor
    scales: object  # torch.Tensor
    block: int

    def dequantize(self):
        import torch

        n, k = self.codes.shape
        q = self.codes.to(torch.float32).reshape(n, k // self.block, self.block) - 8
        return (q * self.scales[..., None]).reshape(n, k)


def _block_scale(blk):
    """Signed scale per row of ``blk`` [N, block]: the value of largest magnitude maps to code 0 (-8)."""
    import torch

    idx = blk.abs().argmax(dim=1, keepdim=True)
    scale = blk.gather(1, idx)[:, 0] / -8
    return scale, torch.where(scale == 0, torch.ones_like(scale), scale)


def _round(w, safe_scale):
    import torch

    return torch.clamp(torch.round(w / safe_scale) + 8, 0, 15)


def rtn(weight, block: int) -> Int4Weight:
    """Round-to-nearest on the same grid (the baseline GPTQ improves on)."""
    import torch

    w = weight.detach().to(torch.float32)
    n, k = w.shape
    blocks = w.reshape(n, k // block, block)
    codes = torch.empty_like(blocks, dtype=torch.uint8)
    scales = torch.empty(n, k // block, dtype=torch.float32)
    for b in range(k // block):
        scale, safe = _block_scale(blocks[:, b])
        codes[:, b] = _round(blocks[:, b], safe[:, None]).to(torch.uint8)
        scales[:, b] = scale
    return Int4Weight(codes.reshape(n, k), scales, block)


def gptq(weight, hessian, block: int, percdamp: float = PERCDAMP) -> Int4Weight:
    """GPTQ of ``weight`` [N, K] given the input Hessian [K, K]; scales are set per block as it is reached."""
    import torch

    w = weight.detach().to(torch.float32).clone()
    n, k = w.shape
    h = hessian.to(torch.float32).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    # upper Cholesky factor of H^-1: row i holds the error-propagation weights of column i
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.empty(n, k, dtype=torch.uint8)
    scales = torch.empty(n, k // block, dtype=torch.float32)
    for b0 in range(0, k, block):
        b1 = b0 + block
        scale, safe = _block_scale(w[:, b0:b1])
        scales[:, b0 // block] = scale
        err = torch.empty(n, block, dtype=torch.float32)
        for j in range(block):
            c = b0 + j
            q = _round(w[:, c], safe)
            codes[:, c] = q.to(torch.uint8)
            e = (w[:, c] - (q - 8) * safe) / u[c, c]
            w[:, c:b1] -= e[:, None] * u[c, c:b1][None, :]
            err[:, j] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return Int4Weight(codes, scales, block)


def quantize_decoder(model, chunks, block: int, on_layer=None, percdamp: float = PERCDAMP,
                     arch: Architecture | None = None) -> dict[str, Int4Weight]:
    """GPTQ every decoder-layer Linear of ``model`` on the calibration ``chunks``, layer by layer.

    ``model``: a :class:`~koquant.exporters.layerwise.LayerwiseModel` (one float32 layer in memory at a
    time, what the exporter uses) or a whole transformers model (bit-identical results).
    Returns ``{"<layer>.<stem>": Int4Weight}``, keyed like the builder's MatMulNBits weights
    (``arch.onnx``: the registry entry's builder names; by default the entry ``model.config`` names).
    The model's own weights are left exactly as they were.
    """
    from ..layerwise import LayerwiseModel

    if isinstance(model, LayerwiseModel):
        arch = arch or model.arch
        inputs = model.layer_inputs(chunks.ids)
        result: dict[str, Int4Weight] = {}
        for i in range(model.n_layers):
            prefix = arch.layer(i)
            model._load(prefix)
            try:
                inputs = _quantize_layer(model.model.get_submodule(prefix), i, inputs, arch, block, percdamp, result)
            finally:
                model._drop(prefix)
            if on_layer is not None:
                on_layer()
        return result
    arch = arch or architecture_for(model.config)
    layers = model.get_submodule(arch.layers)
    inputs = capture_layer_inputs(model, layers, chunks.ids)
    result = {}
    for i, layer in enumerate(layers):
        inputs = _quantize_layer(layer, i, inputs, arch, block, percdamp, result)
        if on_layer is not None:
            on_layer()
    return result


def _quantize_layer(layer, i: int, inputs, arch: Architecture, block: int, percdamp: float,
                    result: dict[str, Int4Weight]):
    """GPTQ of one decoder layer's Linears from its ``inputs``; the next layer's inputs (through the quantized
    weights). The layer's own weights are put back as they were."""
    import torch

    linears = arch.onnx.linears
    mods = dict(layer.named_modules())
    hess: dict[str, torch.Tensor] = {}
    hooks = []
    for stem, names in linears.items():
        def acc(module, args, stem=stem):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
            hess[stem] = hess.get(stem, 0) + 2 * (x.T @ x)
        hooks.append(mods[names[0]].register_forward_pre_hook(acc))
    try:
        run_layer(layer, i, inputs)
    finally:
        for h in hooks:
            h.remove()
    tokens = sum(h.shape[0] * h.shape[1] for h, _ in inputs)
    originals = {}
    for stem, names in linears.items():
        weight = torch.cat([mods[nm].weight.detach() for nm in names], dim=0)
        q = gptq(weight, hess[stem] / tokens, block, percdamp)
        result[f"{arch.onnx.layer(i)}.{stem}"] = q
        deq, row = q.dequantize(), 0
        for nm in names:
            rows = mods[nm].weight.shape[0]
            originals[nm] = mods[nm].weight.data
            mods[nm].weight.data = deq[row:row + rows].to(originals[nm].dtype)
            row += rows
    try:
        return run_layer(layer, i, inputs)  # the next layer sees this layer's quantized outputs
    finally:
        for nm, data in originals.items():
            mods[nm].weight.data = data
