"""The int4 grid, the MatMulNBits packing and GPTQ itself, on small synthetic layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from koquant.errors import RecipeError
from koquant.exporters.onnx.int4_gptq import PERCDAMP, gptq, rtn
from koquant.exporters.onnx.matmulnbits import pack, unpack


def _layer(seed: int = 0, n: int = 48, k: int = 128, tokens: int = 2048):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)  # correlated input channels, like real activations
    x = torch.randn(tokens, k, generator=g) @ mix * torch.linspace(0.2, 3.0, k)
    return w, x


def test_grid_puts_the_largest_magnitude_on_code_zero():
    w, _ = _layer()
    q = rtn(w, 32)
    codes = q.codes.reshape(48, 4, 32)
    blocks = w.reshape(48, 4, 32)
    idx = blocks.abs().argmax(-1, keepdim=True)
    assert torch.all(codes.gather(-1, idx) == 0)
    deq = q.dequantize().reshape(48, 4, 32)
    assert torch.allclose(deq.gather(-1, idx), blocks.gather(-1, idx), atol=1e-7)
    # half a step everywhere, but a whole step where the opposite sign's +8 is clipped to +7
    err = (q.dequantize() - w).abs().reshape(48, 4, 32)
    step = q.scales.abs()[..., None]
    assert torch.all(err <= step + 1e-7)
    assert float((err <= step / 2 + 1e-7).float().mean()) > 0.99


def test_pack_unpack_roundtrip_low_nibble_first():
    codes = np.arange(64, dtype=np.uint8).reshape(2, 32) % 16
    packed = pack(codes, 16)
    assert packed.shape == (2, 2, 8)
    assert packed[0, 0, 0] == codes[0, 0] | (codes[0, 1] << 4)
    assert np.array_equal(unpack(packed), codes)


@pytest.mark.parametrize("block", [32, 128])
@pytest.mark.parametrize("percdamp, gain", [(0.01, 0.82), (PERCDAMP, 0.9)])
def test_gptq_lowers_output_error_against_rtn(block, percdamp, gain):
    """On the calibration inputs themselves: the paper's light dampening gains most, koquant's default less."""
    w, x = _layer(seed=block)
    h = 2 * x.T @ x / x.shape[0]
    err = {name: float(((x @ q.dequantize().T) - x @ w.T).pow(2).mean())
           for name, q in (("rtn", rtn(w, block)), ("gptq", gptq(w, h, block, percdamp)))}
    assert err["gptq"] < gain * err["rtn"], err


def test_gptq_codes_stay_on_the_grid():
    w, x = _layer(seed=3)
    q = gptq(w, 2 * x.T @ x, 32)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 15
    assert q.scales.shape == (48, 4)


def test_block_size_must_divide_layer_widths():
    from koquant.exporters.onnx.exporter import _check_divisible

    _check_divisible({"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32}, 128)
    with pytest.raises(RecipeError, match="intermediate_size=1000"):
        _check_divisible({"hidden_size": 256, "intermediate_size": 1000, "num_attention_heads": 8}, 32)
