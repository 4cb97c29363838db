"""GGUF export of every seed family, checked against the source with real llama.cpp."""

from __future__ import annotations

import json

import numpy as np
import pytest

from koquant.exporters.gguf import llamacpp
from koquant.source.checkpoint import Checkpoint, sha256_file

from koquant.source.architectures import architecture
from koquant.testing.miniatures import FAMILIES

from .conftest import GGUF_QUANTS


def test_export_files_named_and_validated(family, gguf_exports):
    art = gguf_exports(family)
    names = sorted(p.name for p in art.path.iterdir())
    expected = {f"{family}-{q}.gguf" for q in GGUF_QUANTS} | {"koquant.json", "README.md", "imatrix.gguf", "tokenizer"}
    assert set(names) == expected
    tok = {p.name for p in (art.path / "tokenizer").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"} <= tok
    assert not any(n.endswith(".safetensors") for n in tok)
    by_quant = {f["quant"]: f for f in art.files}
    assert list(by_quant) == list(GGUF_QUANTS)
    for f in art.files:
        v = f["validation"]
        assert v["passed"], (f["path"], v["failures"])
        assert f["sha256"] == sha256_file(art.path / f["path"])
        assert f["size"] == (art.path / f["path"]).stat().st_size


def test_f16_logits_match_source(family, gguf_exports):
    v = next(f for f in gguf_exports(family).files if f["quant"] == "F16")["validation"]
    # the same next token everywhere, except at near-ties: where llama.cpp picks another token, the source
    # itself ranks it within twice the largest logit difference of its own choice (a broken file flips
    # positions the source is sure about)
    assert v["passed"] and v["top1"] >= 0.99
    assert v["top1"] == 1.0 or v["top1_flip_margin"] <= 2 * v["max_abs_diff"], v
    # a mixture of experts: a token near a router tie may take another expert, so the bound holds for
    # 99% of positions; every other model is held to it at every position
    routed = v["max_abs_rule"] != "every position"
    assert v["max_abs_diff_p99" if routed else "max_abs_diff"] < 1e-2
    assert routed == architecture(FAMILIES[family].hf_class).experts
    assert v["positions"] >= 1000


def test_heldout_token_ids_identical(family, gguf_exports, miniature):
    """llama.cpp tokenizes the whole held-out constitution exactly like the HF tokenizer."""
    import llama_cpp
    from transformers import AutoTokenizer

    from koquant.quant_recipes.calibration import korean_constitution

    art = gguf_exports(family)
    text = korean_constitution().plain_text()
    hf_ids = AutoTokenizer.from_pretrained(miniature(family))(text)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(art.path / f"{family}-Q4_K_M.gguf"), vocab_only=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=True, special=False) == hf_ids
    for f in art.files:
        assert f["validation"]["token_ids_identical"]
        assert f["validation"]["heldout_tokens"] == len(hf_ids)


def test_chat_template_carried_byte_identical(family, gguf_exports, miniature):
    art = gguf_exports(family)
    source = Checkpoint.open(miniature(family)).chat_template
    assert source
    for q in GGUF_QUANTS:
        assert llamacpp.gguf_metadata_string(art.path / f"{family}-{q}.gguf", "tokenizer.chat_template") == source
    assert art.manifest["chat_template"]["template"] == source


def test_tensor_types_follow_the_mix(family, gguf_exports):
    """Dimensions are multiples of 256: no fallbacks, and the K-quant mix is llama.cpp's."""
    art = gguf_exports(family)
    files = {f["quant"]: f for f in art.files}
    for f in art.files:
        assert f["fallbacks"] == []
    q4 = files["Q4_K_M"]["tensor_types"]
    assert q4["blk.0.attn_q.weight"] == "Q4_K"
    assert "Q6_K" in q4.values()  # Q4_K_M bumps some attn_v/ffn_down (and output) to Q6_K
    assert all(t in ("F32",) for n, t in q4.items() if n.endswith("_norm.weight"))
    assert set(files["Q8_0"]["tensor_type_counts"]) <= {"Q8_0", "F32"}
    assert set(files["F16"]["tensor_type_counts"]) <= {"F16", "F32"}


def test_manifest_records_everything(family, gguf_exports, miniature):
    art = gguf_exports(family)
    m = json.loads((art.path / "koquant.json").read_text())
    src = Checkpoint.open(miniature(family))
    assert m["format"] == "gguf"
    assert m["source"]["files"] == src.file_hashes()
    assert m["source"]["architecture"] == src.architecture.hf_class
    assert m["recipe"]["quants"] == list(GGUF_QUANTS)
    assert m["calibration"]["name"] == "kobill" and len(m["calibration"]["sha256"]) == 64
    from koquant.quant_recipes.calibration import korean_bills

    assert m["calibration"]["sha256"] == korean_bills().sha256
    assert m["calibration"]["imatrix_sha256"] == sha256_file(art.path / "imatrix.gguf")
    assert m["chat_template"]["sha256"] == src.chat_template_sha256
    assert m["tools"]["llama-cpp-python"] == "0.3.36"
    assert m["evaluation"]["text"] == "kolaw-constitution"
    card = (art.path / "README.md").read_text()
    assert card.startswith("---\nbase_model: ")
    assert "quantized_by: koquant" in card
    for q in GGUF_QUANTS:
        assert f"{family}-{q}.gguf" in card


def test_imatrix_file_matches_what_was_applied(gguf_exports):
    """imatrix.gguf holds the Korean statistics for every quantizable block tensor."""
    art = gguf_exports("ocelot-mini")
    data = llamacpp.read_imatrix_gguf(art.path / "imatrix.gguf")
    types = next(f for f in art.files if f["quant"] == "Q4_K_M")["tensor_types"]
    block_linears = {n for n in types if n.startswith("blk.") and not n.endswith("norm.weight")}
    assert set(data) == block_linears
    for s, count in data.values():
        assert count == art.manifest["calibration"]["tokens"]
        assert np.all(np.isfinite(s)) and np.all(s >= 0) and s.sum() > 0


def test_calibrated_files_record_their_imatrix_as_llama_quantize_does(gguf_exports):
    """Q8_0 and Q4_K_M carry llama-quantize's quantize.imatrix.* keys (the file, the Korean set, the tensor and
    chunk counts, the counts as u32 like llama.cpp writes them); F16, quantized without it, carries none."""
    from koquant.exporters.gguf.reader import read_gguf

    art = gguf_exports("ocelot-mini")
    cal = art.manifest["calibration"]
    keys = llamacpp.QUANTIZE_IMATRIX_KEYS
    want = {keys["FILE"]: ("imatrix.gguf", "string"), keys["DATASET"]: ("kobill", "string"),
            keys["N_ENTRIES"]: (len(llamacpp.read_imatrix_gguf(art.path / "imatrix.gguf")), "u32"),
            keys["N_CHUNKS"]: (cal["chunks"], "u32")}
    assert cal["name"] == "kobill" and cal["tensors"] == want[keys["N_ENTRIES"]][0] and cal["chunks"] == 8
    for quant in ("Q8_0", "Q4_K_M"):
        gguf = read_gguf(art.path / f"ocelot-mini-{quant}.gguf")
        got = {k: (gguf.metadata[k], gguf.kv_types[k]) for k in gguf.metadata if k.startswith("quantize.imatrix.")}
        assert got == want, quant
    f16 = read_gguf(art.path / "ocelot-mini-F16.gguf")
    assert not [k for k in f16.metadata if k.startswith("quantize.")]


@pytest.mark.parametrize("quant", ["Q6_K", "IQ4_XS", "Q3_K_M"])
def test_more_quant_types(quant, miniature, tmp_path):
    import koquant

    art = koquant.export(miniature("ocelot-mini"), koquant.Recipe("gguf", (quant,), calib_chunks=8), tmp_path / "o")
    (f,) = art.files
    assert f["validation"]["passed"], f["validation"]["failures"]


def test_user_jsonl_calibration_rendered_through_chat_template(miniature, tmp_path):
    """--calib-chat: user conversations rendered with the model's own template feed the imatrix."""
    import koquant
    from koquant.quant_recipes.calibration import korean_bills

    paras = [p for d in korean_bills().documents for p in d.split("\n\n") if len(p) > 40]
    lines = [json.dumps({"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]},
                        ensure_ascii=False) for a, b in zip(paras[::2], paras[1::2])]
    calib = tmp_path / "chats.jsonl"
    calib.write_text("\n".join(lines), encoding="utf-8")
    recipe = koquant.Recipe("gguf", ("Q4_K_M",), calib=str(calib), calib_chat=True, calib_ctx=128, calib_chunks=8)
    art = koquant.export(miniature("komt-mini"), recipe, tmp_path / "out")
    cal = art.manifest["calibration"]
    assert cal["name"] == "chats.jsonl" and cal["chat_rendered"] and cal["documents"] == len(lines)
    assert cal["chunks"] == 8 and cal["chunk_size"] == 128
    assert art.files[0]["validation"]["passed"]
