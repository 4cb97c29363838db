"""The int4 grid, the MatMulNBits packing and GPTQ itself, on small synthetic layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from koquant.errors import RecipeError
from koquant.exporters.onnx.int4_gptq import PERCDAMP, gptq, rtn


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


def test_gptq_layout_packs_eight_codes_per_word_lowest_first():
    """The builder's GPTQ input (``quantized_input``): qweight [K/8, N], qzeros [K/block, N/8] holding 8 - 1."""
    from koquant.exporters.onnx.quantized_input import gptq_tensors

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (16, 64)).astype(np.uint8)  # N=16 outputs, K=64 inputs
    scales = rng.random((16, 2)).astype(np.float32)
    t = gptq_tensors(codes, scales, 32)
    assert t["qweight"].dtype == np.int32 and t["qweight"].shape == (8, 16)
    words = t["qweight"].view(np.uint32)
    back = np.array([[(words[k // 8, n] >> (4 * (k % 8))) & 15 for k in range(64)] for n in range(16)])
    assert np.array_equal(back, codes)
    zeros = t["qzeros"].view(np.uint32)
    assert zeros.shape == (2, 2)
    assert {int((w >> (4 * j)) & 15) for w in zeros.reshape(-1) for j in range(8)} == {7}
    assert np.array_equal(t["scales"], scales.T) and np.array_equal(t["g_idx"], np.arange(64) // 32)


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
