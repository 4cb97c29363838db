"""Round-to-nearest on GPTQ's grid: the plain quantizer the user gate measures a GPTQ export against.

The grid is GPTQ's (and GPTQModel's) min/max one: per group of ``group_size`` input columns of one
output row, asymmetric ``scale = (max - min) / (2^bits - 1)`` with an integer zero point, or symmetric
around the middle code (``zero = 2^(bits-1)``, ``scale = 2 max|w| / (2^bits - 1)``); the group's range
always includes 0. Weights are rounded in memory and the source run layer by layer with them
(:meth:`koquant.exporters.layerwise.LayerwiseModel.transformed`), so no second checkpoint is written.
"""

from __future__ import annotations

from ...source.architectures import Architecture


def rtn_dequantize(w, bits: int, group_size: int, sym: bool):
    """``w`` [..., out, in] rounded to the grid, groups along the last (input) dimension."""
    import torch

    maxq = 2 ** bits - 1
    k = w.shape[-1]
    g = k if group_size <= 0 else group_size
    x = w.reshape(*w.shape[:-1], k // g, g)
    xmin = torch.clamp(x.amin(-1, keepdim=True), max=0)
    xmax = torch.clamp(x.amax(-1, keepdim=True), min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(empty, -1.0, xmin), torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return (scale * (q - zero)).reshape(w.shape)


def rtn_transform(arch: Architecture, bits: int, group_size: int, sym: bool):
    """A weight transform rounding what GPTQ quantizes: every decoder Linear (experts included) but the router;
    embeddings, norms and lm_head stay as they are."""

    def fn(name: str, t):
        split = arch.split_layer(name)
        if split is None or t.ndim < 2 or not name.endswith(("weight", "_proj")):
            return t
        lin = arch.layer_linear(name)
        if lin is not None and lin[1].router:
            return t
        if group_size > 0 and t.shape[-1] % group_size:
            return t
        return rtn_dequantize(t, bits, group_size, sym)

    return fn
