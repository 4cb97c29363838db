"""A real pretrained model, Gemma 3 270M (from its PyPI wheels), through every format and the user gate.

Miniatures prove plumbing; this model proves that legitimate exports of a model koquant did not make
are published (the fixed bounds refused several), and that Korean calibration beats English where it
should. Calibration and evaluation are kept short (2 cores in CI); benchmarks/ holds the long runs.
"""

from __future__ import annotations

import pytest

import koquant
from koquant.exporters.gguf.llamacpp import llama_cpp_source
from koquant.testing.real_models import real_model, real_model_gguf
from koquant.testing.tokenizers import korean_text

pytestmark = pytest.mark.real_model

SHORT = dict(calib_chunks=16, calib_ctx=512, eval_chunks=4, eval_ctx=256)


@pytest.fixture(scope="session")
def gemma():
    return real_model()


@pytest.fixture(scope="session")
def gemma_gguf(gemma, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "gguf"
    return koquant.export(gemma, koquant.Recipe("gguf", ("F16", "Q4_K_M", "Q3_K_M", "IQ4_XS", "Q2_K"), **SHORT), out)


def test_the_fixture_is_the_published_model_with_llama_cpps_token_ids(gemma):
    import json

    from llama_cpp import Llama
    from transformers import AutoTokenizer

    info = json.loads((gemma / "koquant-real-model.json").read_text())
    assert info["gguf_sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    cfg = json.loads((gemma / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["num_hidden_layers"] == 18
    assert cfg["tie_word_embeddings"] and cfg["vocab_size"] == 262144
    text = korean_text("kobill/1809890.txt")[:4000] + "\n숫자 12345, English words, 두  칸\t탭"
    ll = Llama(str(real_model_gguf()), vocab_only=True, verbose=False)
    assert ll.tokenize(text.encode(), add_bos=True, special=False) == AutoTokenizer.from_pretrained(gemma)(text).input_ids


def test_gguf_ladder_of_the_real_model_is_published_and_rated(gemma_gguf):
    files = {f.quant: f for f in gemma_gguf.record.files}
    assert set(files) == {"F16", "Q4_K_M", "Q3_K_M", "IQ4_XS", "Q2_K"}
    for quant, f in files.items():
        v = f.validation
        assert v["passed"] and v["gate"] == "user" and v["token_ids_identical"], (quant, v["failures"])
        if quant != "F16":
            assert v["plain"]["quant"] == quant and v["kl_vs_plain"] is not None
    # the Korean importance matrix helps on Korean held-out text where the weights' grid changes
    assert files["Q2_K"].validation["kl_vs_plain"] < 1 and files["Q3_K_M"].validation["kl_vs_plain"] < 1


def test_korean_calibration_beats_english_on_korean_text(gemma, gemma_gguf, tmp_path):
    """The same recipe calibrated on English prose (llama.cpp's own docs) against the default Korean set,
    scored on the same held-out Korean positions."""
    english = llama_cpp_source() / "docs"
    art = koquant.export(gemma, koquant.Recipe("gguf", ("Q3_K_M", "Q2_K"), calib=str(english), **SHORT),
                         tmp_path / "en")
    en = {f.quant: f.validation["kl_mean"] for f in art.record.files}
    ko = {f.quant: f.validation["kl_mean"] for f in gemma_gguf.record.files}
    assert art.record.calibration["name"] == "docs"
    for quant in ("Q3_K_M", "Q2_K"):
        assert ko[quant] <= en[quant], (quant, ko[quant], en[quant])


def test_float32_checkpoint_exports_losslessly(tmp_path):
    """Values that are not bf16-representable (as many fine-tunes are saved): F32 and F16 are lossless within
    their type, which an absolute logit bound tuned on bf16-valued miniatures refused."""
    art = koquant.export(real_model(dtype="float32"), koquant.Recipe("gguf", ("F32", "F16", "Q4_K_M"), **SHORT),
                         tmp_path / "f32")
    for f in art.record.files:
        assert f.validation["passed"], (f.quant, f.validation["failures"])
    assert {f.quant: f.validation["rule"] for f in art.record.files}["F32"] == "lossless bound"


def test_gptq_of_the_real_model_is_published(gemma, tmp_path):
    art = koquant.export(gemma, koquant.Recipe("gptq", ("w4g128",), **SHORT), tmp_path / "gptq")
    v = art.record.files[0].validation
    assert v["passed"] and v["plain"] is not None and v["kl_vs_plain"] <= 1.1, v


def test_onnx_int4_of_the_real_model_is_published(gemma, tmp_path):
    art = koquant.export(gemma, koquant.Recipe("onnx", ("int4",), **SHORT), tmp_path / "onnx")
    f = art.record.files[0]
    v = f.validation
    assert v["passed"] and v["plain"] is not None and v["kl_vs_plain"] <= 1.1, v
    assert "lm_head int8" in f.notes[0]
