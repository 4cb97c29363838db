"""koquant's torch importance matrix equals llama.cpp's own llama-imatrix on the same text."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from koquant.exporters.gguf import llamacpp
from koquant.quant_recipes.calibration import chunk_tokens, korean_bills
from koquant.source.checkpoint import Checkpoint
from koquant.exporters.gguf.imatrix import compute_imatrix

N_CTX, N_CHUNKS = 128, 6


@pytest.mark.slow
def test_torch_imatrix_equals_llama_imatrix(default_model, llama_tools, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = tmp_path / "f32.gguf"
    llamacpp.convert_hf_to_gguf(default_model, gguf, "f32")
    text = korean_bills().plain_text()
    (tmp_path / "calib.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "llama-imatrix.gguf"
    subprocess.run(
        [str(llama_tools / "llama-imatrix"), "-m", str(gguf), "-f", str(tmp_path / "calib.txt"), "-o", str(out),
         "-c", str(N_CTX), "-b", str(N_CTX), "--chunks", str(N_CHUNKS), "--no-ppl", "-t", "2"],
        check=True, capture_output=True,
    )
    theirs = llamacpp.read_imatrix_gguf(out)

    tok = AutoTokenizer.from_pretrained(default_model)
    ids = tok(text)["input_ids"]
    chunks = chunk_tokens(ids, N_CTX, N_CHUNKS, tok.bos_token_id)
    model = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32).eval()
    ours = compute_imatrix(model, Checkpoint.open(default_model).architecture, chunks)

    assert set(ours.names()) == set(theirs)
    assert len(theirs) == 7 * model.config.num_hidden_layers
    for name, (sum2, count) in theirs.items():
        assert ours.counts[name].tolist() == [count] == [N_CTX * N_CHUNKS]
        mine = ours.sum2[name].reshape(-1)
        rel = np.abs(mine - sum2) / (np.abs(sum2) + 1e-6 * np.abs(sum2).max())
        assert rel.max() < 1e-3, (name, float(rel.max()))
        # the importance pattern itself (what quantization uses) agrees almost exactly
        assert np.corrcoef(mine, sum2)[0, 1] > 0.99999


def test_imatrix_written_in_llama_cpp_layout(tmp_path):
    """Our imatrix.gguf reads back through the same reader as llama-imatrix's files."""
    from koquant.exporters.gguf.imatrix import Imatrix

    im = Imatrix({"blk.0.attn_q.weight": np.arange(256, dtype=np.float64)[None, :]},
                 {"blk.0.attn_q.weight": np.array([512])}, 4)
    llamacpp.write_imatrix_gguf(tmp_path / "im.gguf", im, "kobill", 128)
    back = llamacpp.read_imatrix_gguf(tmp_path / "im.gguf")
    s, c = back["blk.0.attn_q.weight"]
    assert c == 512 and np.array_equal(s, np.arange(256))
    reader = llamacpp.gguf_reader(tmp_path / "im.gguf")
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "imatrix"
    assert int(reader.fields["imatrix.chunk_size"].parts[-1][0]) == 128


def test_quantize_imatrix_keys_are_llama_quantizes():
    """The keys koquant records its calibration under are llama-quantize's own, read from the pinned source."""
    import re

    source = (llamacpp.llama_cpp_source() / "tools" / "quantize" / "quantize.cpp").read_text(encoding="utf-8")
    theirs = dict(re.findall(r'LLM_KV_QUANTIZE_IMATRIX_(\w+)\s*=\s*"([^"]+)"', source))
    assert theirs == llamacpp.QUANTIZE_IMATRIX_KEYS


@pytest.mark.slow
def test_korean_imatrix_helps_q4_k_m_on_the_trained_miniature(default_model):
    """The benchmark's claim, checked: Q4_K_M with the Korean imatrix is no worse than without."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "imatrix_gain.py"
    spec = importlib.util.spec_from_file_location("imatrix_gain", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(default_model, ("Q4_K_M",), eval_chunks=16, calib_chunks=32)["Q4_K_M"]
    assert res["imatrix"]["kl_mean"] <= res["plain"]["kl_mean"], res
