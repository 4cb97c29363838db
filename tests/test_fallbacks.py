"""K-quants on rows not divisible by 256 fall back per tensor; koquant reports every fallback."""

from __future__ import annotations

import json
import shutil

from koquant.exporters.gguf import llamacpp
from koquant.artifact.modelcard import render_model_card
from koquant.testing.miniatures import build_miniature


def _odd_model(tmp_path):
    """synatra-mini's tokenizer with an FFN width of 640 (a multiple of 32, not of 256)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    src = build_miniature("synatra-mini", trained=False)
    dst = tmp_path / "odd"
    dst.mkdir()
    for p in src.iterdir():
        if p.name not in ("model.safetensors", "config.json"):
            shutil.copy(p, dst / p.name)
    cfg = MistralConfig(**{**json.loads((src / "config.json").read_text()), "intermediate_size": 640})
    torch.manual_seed(0)
    MistralForCausalLM(cfg).save_pretrained(dst)
    return dst


def test_fallbacks_are_reported_per_tensor(tmp_path):
    model = _odd_model(tmp_path)
    base = tmp_path / "f32.gguf"
    llamacpp.convert_hf_to_gguf(model, base, "f32")
    res = llamacpp.quantize(base, tmp_path / "q4km.gguf", "Q4_K_M")
    types = llamacpp.gguf_tensor_types(tmp_path / "q4km.gguf")
    fell = {fb["tensor"]: fb for fb in res.fallbacks}
    assert set(fell) == {"blk.0.ffn_down.weight", "blk.1.ffn_down.weight"}
    for name, fb in fell.items():
        assert fb["ncols"] == 640 and fb["block"] == 256
        assert types[name] == fb["used"].upper()
        assert fb["used"] in ("q5_0", "q8_0")
    assert types["blk.0.ffn_gate.weight"] == "Q4_K"  # ncols 256: no fallback


def test_model_card_lists_fallbacks():
    file = {"path": "m-Q4_K_M.gguf", "quant": "Q4_K_M", "size": 1000, "fallbacks": [
        {"tensor": "blk.0.ffn_down.weight", "ncols": 640, "wanted": "q6_K", "used": "q8_0", "block": 256},
        {"tensor": "blk.1.ffn_down.weight", "ncols": 640, "wanted": "q6_K", "used": "q8_0", "block": 256},
        {"tensor": "blk.1.attn_q.weight", "ncols": 640, "wanted": "q4_K", "used": "q5_0", "block": 256}],
        "validation": {"top1": 1.0, "kl_mean": 0.0, "kl_p99": 0.0, "max_abs_diff": 0.0,
                       "token_ids_identical": True, "passed": True}}
    manifest = {"format": "gguf", "name": "m", "source": {"base_model": "x", "name": "x", "architecture": "A",
                                                          "dtype": "float32"},
                "tools": {"koquant": "0"}, "evaluation": {"text": "t", "chunks": 1, "chunk_size": 8},
                "files": [file], "calibration": None, "recipe": {"quants": ["Q4_K_M"]},
                "chat_template": {"sha256": None}}
    card = render_model_card(manifest)
    assert "## Per-tensor fallbacks" in card
    # grouped: one line per (wanted, used, width), with the tensor kinds and their count
    assert "- m-Q4_K_M.gguf: 2 tensors (ffn_down) wanted q6_K, used q8_0 (ncols 640 not divisible by 256)" in card
    assert "- m-Q4_K_M.gguf: 1 tensor (attn_q) wanted q4_K, used q5_0 (ncols 640 not divisible by 256)" in card
