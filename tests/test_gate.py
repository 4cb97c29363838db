"""The user gate on real files: a broken export is refused with its own message, a sound one is rated.

Each fault is made in a real file by real tools (llama.cpp's converter and quantizer, gguf-py's
metadata editor, a tokenizer.json that disagrees with its SentencePiece model), on the default
miniature: what is judged here is structure (ids, template, corrupted tensors), not quality.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import koquant
from koquant.errors import ValidationError
from koquant.exporters.gate import HINTS, PLAIN_TOLERANCE
from koquant.exporters.gguf import llamacpp
from koquant.testing.miniatures import DEFAULT_MODEL, materialize

RECIPE = dict(calib_chunks=4, calib_ctx=256, eval_chunks=2)


def _export(src, out, quants=("Q4_K_M",), **kw):
    return koquant.export(src, koquant.Recipe("gguf", quants, name="m", **{**RECIPE, **kw}), out)


def test_a_sound_export_is_rated_against_the_plain_tools_file(tmp_path):
    art = _export(materialize(DEFAULT_MODEL, tmp_path / "src"), tmp_path / "out", ("F16", "Q4_K_M"))
    q4 = next(f for f in art.record.files if f.quant == "Q4_K_M")
    v = q4.validation
    assert v["passed"] and v["gate"] == "user" and v["rule"] == f"plain tool + {PLAIN_TOLERANCE:.0%}"
    assert v["plain"]["quant"] == "Q4_K_M" and "no importance matrix" in v["plain"]["tool"]
    assert v["kl_vs_plain"] == pytest.approx(v["kl_mean"] / v["plain"]["kl_mean"])
    f16 = next(f for f in art.record.files if f.quant == "F16").validation
    assert f16["passed"] and f16["rule"] == "lossless bound" and f16["plain"] is None
    card = (art.path / "README.md").read_text(encoding="utf-8")
    assert f"KL {v['kl_vs_plain']:.2f}× of plain Q4_K_M" in card
    assert "llama.cpp's plain Q4_K_M (no importance matrix)" in card


def test_a_tokenizer_that_disagrees_with_itself_is_refused_at_the_first_differing_token(tmp_path):
    """tokenizer.json (what transformers reads) numbers two pieces the other way round from the SentencePiece
    model (what llama.cpp's converter reads), as a tokenizer.json regenerated from another revision would: the
    ids differ where the first of them occurs, and the message says where and which text."""
    src = materialize(DEFAULT_MODEL, tmp_path / "src")
    tj = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    from transformers import AutoTokenizer

    first = AutoTokenizer.from_pretrained(src)("대한민국")["input_ids"][1]  # after BOS
    a = next(t for t, i in vocab.items() if i == first)
    b = next(t for t, i in vocab.items() if i == first + 1)
    vocab[a], vocab[b] = first + 1, first
    (src / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValidationError) as e:
        _export(src, tmp_path / "out")
    msg = str(e.value)
    assert "token ids of the held-out text differ from the source tokenizer at position 1:" in msg
    assert f"source {first + 1} '대한'" in msg and f"export {first} " in msg and HINTS["ids"] in msg
    assert "plain tool" not in msg
    assert not (tmp_path / "out").exists()


def _with_template(real, template: str):
    """llama.cpp's converter, then gguf-py's own metadata editor giving the file another chat template."""

    def convert(model_dir, outfile, outtype):
        log = real(model_dir, outfile, outtype)
        tmp = outfile.with_suffix(".edited")
        env = {**os.environ, "PYTHONPATH": str(llamacpp.llama_cpp_source() / "gguf-py")}
        script = llamacpp.llama_cpp_source() / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"
        subprocess.run([sys.executable, str(script), "--chat-template", template, "--force", str(outfile), str(tmp)],
                       check=True, capture_output=True, env=env)
        os.replace(tmp, outfile)
        return log

    return convert


def test_a_file_with_another_chat_template_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(llamacpp, "convert_hf_to_gguf",
                        _with_template(llamacpp.convert_hf_to_gguf, "{{ messages[0]['content'] }}"))
    with pytest.raises(ValidationError) as e:
        _export(materialize(DEFAULT_MODEL, tmp_path / "src"), tmp_path / "out")
    msg = str(e.value)
    assert "chat template differs from the source's" in msg and HINTS["template"] in msg
    assert "token ids" not in msg
    assert not (tmp_path / "out").exists()


def _corrupting(real):
    """llama.cpp's quantizer; then, in files made with the importance matrix only (not llama.cpp's plain
    yardstick), the first half of an attention weight overwritten with random bytes."""

    def quantize(src, dst, quant, imatrix=None, **kw):
        res = real(src, dst, quant, imatrix=imatrix, **kw)
        if imatrix is not None:
            from koquant.exporters.gguf.reader import read_gguf

            t = next(t for t in read_gguf(dst).tensors if t.name == "blk.0.attn_v.weight")
            with open(dst, "r+b") as f:
                f.seek(t.offset)
                f.write(np.random.default_rng(0).integers(0, 256, t.n_bytes // 2, dtype=np.uint8).tobytes())
        return res

    return quantize


def test_a_corrupted_tensor_is_refused_as_worse_than_the_plain_tool(tmp_path, monkeypatch):
    monkeypatch.setattr(llamacpp, "quantize", _corrupting(llamacpp.quantize))
    with pytest.raises(ValidationError) as e:
        _export(materialize(DEFAULT_MODEL, tmp_path / "src"), tmp_path / "out")
    msg = str(e.value)
    assert ("that of llama.cpp's plain Q4_K_M" in msg or "NaN or inf" in msg), msg
    assert "token ids" not in msg and "chat template" not in msg
    assert not (tmp_path / "out").exists()


def test_strict_gate_keeps_the_fixed_bounds(tmp_path):
    art = _export(materialize(DEFAULT_MODEL, tmp_path / "src"), tmp_path / "out", ("Q8_0",), gate="strict")
    v = art.record.files[0].validation
    assert v["passed"] and v["gate"] == "strict" and v["rule"] == "fixed bounds" and v["plain"] is None
