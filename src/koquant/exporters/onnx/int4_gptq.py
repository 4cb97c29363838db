"""Korean-calibrated int4 weights by GPTQ, in the block layout of onnxruntime's MatMulNBits.

GPTQ (Frantar et al., 2022) rounds a weight matrix one input column at a time and spreads each
column's rounding error over the columns not yet rounded, weighted by the inverse Hessian
``H = 2 XᵀX`` of the layer's inputs ``X`` - here, the activations of Korean calibration text.
Layers are processed in order: each layer's inputs come from the already quantized layers
before it, so later layers correct for earlier rounding.

The grid and rounding are those of onnxruntime's default (MLAS) int4 quantizer: per block of ``block``
input columns of one output row, ``scale = v / -8`` where ``v`` is the block's minimum or maximum,
whichever is larger in magnitude, codes ``floor(w / scale + 8.5)`` (through the reciprocal) clipped to
0..15, dequantized as ``(code - 8) * scale``. :func:`rtn` therefore gives exactly the builder's own
round-to-nearest int4 (``tests/test_onnx_export.py``), the yardstick GPTQ is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...source.architectures import Architecture, architecture_for
from ..layerwise import LayerPass, capture_layer_inputs, run_layer

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
    """Signed scale per row of ``blk`` [N, block] and its reciprocal, as onnxruntime's MLAS quantizer computes
    them: the block's minimum or maximum, whichever is larger in magnitude (the minimum on a tie), maps to
    code 0 (-8); an all-zero block has scale 0 and reciprocal 0 (every code 8)."""
    import torch

    lo, hi = blk.min(dim=1).values, blk.max(dim=1).values
    scale = torch.where(lo.abs() >= hi.abs(), lo, hi) / -8
    return scale, torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)


def _round(w, reciprocal):
    """MLAS's rounding: ``w`` times the reciprocal scale plus 8, rounded half up, clipped to 0..15."""
    import torch

    return torch.clamp(torch.floor(w * reciprocal + 8.5), 0, 15)


def rtn(weight, block: int) -> Int4Weight:
    """Round-to-nearest on the same grid (the baseline GPTQ improves on)."""
    import torch

    w = weight.detach().to(torch.float32)
    n, k = w.shape
    blocks = w.reshape(n, k // block, block)
    codes = torch.empty_like(blocks, dtype=torch.uint8)
    scales = torch.empty(n, k // block, dtype=torch.float32)
    for b in range(k // block):
        scale, reciprocal = _block_scale(blocks[:, b])
        codes[:, b] = _round(blocks[:, b], reciprocal[:, None]).to(torch.uint8)
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
        scale, reciprocal = _block_scale(w[:, b0:b1])
        scales[:, b0 // block] = scale
        err = torch.empty(n, block, dtype=torch.float32)
        for j in range(block):
            c = b0 + j
            q = _round(w[:, c], reciprocal)
            codes[:, c] = q.to(torch.uint8)
            e = (w[:, c] - (q - 8) * scale) / u[c, c]
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
        return model.walk(chunks.ids, [GPTQPass(block, percdamp, arch)], on_layer=on_layer)[0]
    arch = arch or architecture_for(model.config)
    layers = model.get_submodule(arch.layers)
    inputs = capture_layer_inputs(model, layers, chunks.ids)
    result = {}
    for i, layer in enumerate(layers):
        inputs = _quantize_layer(layer, i, inputs, arch, block, percdamp, result)
        if on_layer is not None:
            on_layer()
    return result


class GPTQPass(LayerPass):
    """int4 GPTQ as one pass of a :meth:`~koquant.exporters.layerwise.LayerwiseModel.walk`: its own stream
    of hidden states, each layer's outputs computed through that layer's quantized weights."""

    def __init__(self, block: int, percdamp: float = PERCDAMP, arch: Architecture | None = None):
        self.block, self.percdamp, self.arch = block, percdamp, arch
        self.weights: dict[str, Int4Weight] = {}

    def begin(self, model, inputs) -> None:
        super().begin(model, inputs)
        self.arch = self.arch or model.arch

    def layer(self, index: int, layer) -> None:
        self.states = _quantize_layer(layer, index, self.states, self.arch, self.block, self.percdamp, self.weights)

    def result(self) -> dict[str, Int4Weight]:
        return self.weights


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
