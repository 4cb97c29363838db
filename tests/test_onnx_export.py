"""ONNX export of every seed family, checked against the source with onnxruntime-genai itself."""

from __future__ import annotations

import json

import pytest

from koquant.source.architectures import architecture
from koquant.source.checkpoint import Checkpoint, sha256_file
from koquant.exporters.gate import thresholds_for
from koquant.testing.miniatures import FAMILIES

from .conftest import ONNX_QUANTS

RUNTIME_FILES = {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja"}


def test_one_runnable_folder_per_quant(family, onnx_exports):
    art = onnx_exports(family)
    assert {p.name for p in art.path.iterdir()} == {*ONNX_QUANTS, "koquant.json", "README.md"}
    assert [f["quant"] for f in art.files] == list(ONNX_QUANTS)
    for f in art.files:
        folder = art.path / f["quant"]
        assert f["path"] == f"{f['quant']}/model.onnx"
        assert {p.name for p in folder.iterdir()} >= RUNTIME_FILES | {"koquant.json", "README.md"}
        assert f["validation"]["passed"], f["validation"]["failures"]
        assert f["sha256"] == sha256_file(folder / "model.onnx")
        assert f["size"] == (folder / "model.onnx").stat().st_size + (folder / "model.onnx.data").stat().st_size


def test_fp32_matches_source(family, onnx_exports):
    v = next(f for f in onnx_exports(family).files if f["quant"] == "fp32")["validation"]
    assert v["top1"] == 1.0
    assert v["max_abs_diff"] < 1e-3
    assert v["positions"] == 2 * 256
    assert v["greedy"] == {"prompt_tokens": 64, "new_tokens": 32, "identical": True, "identical_prefix": 32}


def test_int4_is_korean_gptq_within_its_thresholds(family, onnx_exports):
    art = onnx_exports(family)
    f = next(f for f in art.files if f["quant"] == "int4")
    v, th = f["validation"], thresholds_for("int4")
    assert v["passed"] and v["top1"] >= th.top1_min and v["kl_mean"] <= th.kl_mean_max
    assert v["kl_mean"] > 1e-6  # really quantized
    assert art.manifest["onnx"]["options"] == {"int4_algo": "gptq", "block_size": 32, "accuracy_level": 4,
                                               "lm_head": "int8"}
    layer_weights = {n: t for n, t in f["tensor_types"].items() if n.startswith("model.layers.")
                     and "MatMul" in n}
    assert layer_weights and set(layer_weights.values()) == {"int4 (MatMulNBits, block 32)"}
    assert "GPTQ on Korean calibration text" in f["notes"][0]
    fp32 = next(f for f in art.files if f["quant"] == "fp32")
    assert f["size"] < 0.8 * fp32["size"]  # the float embedding table of untied models stays fp32


def test_generator_runs_each_export_for_32_tokens(family, onnx_exports):
    """onnxruntime-genai out of the box: its tokenizer, its template engine, its generator."""
    import onnxruntime_genai as og

    art = onnx_exports(family)
    for quant in ONNX_QUANTS:
        model = og.Model(str(art.path / quant))
        tok = og.Tokenizer(model)
        prompt = tok.apply_chat_template(json.dumps([{"role": "user", "content": "대한민국 헌법을 요약해 주세요."}],
                                                    ensure_ascii=False), add_generation_prompt=True)
        ids = tok.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + 32, min_length=len(ids) + 32)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        new = gen.get_sequence(0)[len(ids):]
        assert len(new) == 32
        assert isinstance(tok.decode(new), str)


def test_tokenizer_parity_is_recorded_truthfully(family, onnx_exports, miniature):
    """The source tokenizer loaded from each folder gives the source ids; how the runtime's differs is recorded."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    from koquant.quant_recipes.calibration import korean_constitution

    art = onnx_exports(family)
    text = korean_constitution().plain_text()
    source = AutoTokenizer.from_pretrained(miniature(family))
    hf_ids = source(text)["input_ids"]
    rec = art.manifest["onnx"]["tokenizer"]
    for quant in ONNX_QUANTS:
        assert AutoTokenizer.from_pretrained(art.path / quant)(text)["input_ids"] == hf_ids
        assert next(f for f in art.files if f["quant"] == quant)["validation"]["token_ids_identical"]
    runtime = [int(t) for t in og.Tokenizer(og.Model(str(art.path / "int4"))).encode(text)]
    # the runtime's tokenizer adds no BOS; koquant prepends the source's where the source tokenizer adds one
    # (not Qwen's, which has none)
    bos = [source.bos_token_id] if source.bos_token_id is not None and hf_ids[0] == source.bos_token_id else []
    fed = [*bos, *runtime]
    assert rec["runtime_adds_bos"] is False and rec["prepend_bos"] is bool(bos)
    assert rec["runtime_ids_identical"] == (fed == hf_ids)
    assert rec["source_tokens"] == len(hf_ids) and rec["runtime_tokens"] == len(fed)
    if not rec["runtime_ids_identical"]:
        i = rec["first_difference"]["position"]
        assert hf_ids[:i] == fed[:i] and hf_ids[i] != fed[i]
        assert "tokenize with the source tokenizer" in rec["route"]
        assert "does **not** reproduce the source token ids" in (art.path / "int4" / "README.md").read_text()


def test_chat_template_carried_byte_identical(family, onnx_exports, miniature):
    art = onnx_exports(family)
    source = Checkpoint.open(miniature(family)).chat_template
    assert source
    for quant in ONNX_QUANTS:
        assert (art.path / quant / "chat_template.jinja").read_text(encoding="utf-8") == source
    assert art.manifest["chat_template"]["template"] == source
    assert "runtime_renders_identical" in art.manifest["onnx"]["chat_template"]


def test_manifests_and_cards(family, onnx_exports, miniature):
    art = onnx_exports(family)
    m = json.loads((art.path / "koquant.json").read_text())
    src = Checkpoint.open(miniature(family))
    assert m["format"] == "onnx" and m["source"]["files"] == src.file_hashes()
    assert m["tools"]["onnxruntime-genai"] == "0.18.0"
    assert m["calibration"]["name"] == "kobill" and m["calibration"]["chunks"] == 4
    assert m["calibration"]["used_for"].startswith("int4 GPTQ")
    assert m["onnx"]["folders"] == {q: f"{q}/" for q in ONNX_QUANTS}
    for quant in ONNX_QUANTS:
        folder = art.path / quant
        sub = json.loads((folder / "koquant.json").read_text())
        assert sub["part_of"] == "../koquant.json"
        assert [f["path"] for f in sub["files"]] == ["model.onnx"] and sub["files"][0]["quant"] == quant
        assert sub["files"][0]["validation"] == next(f for f in m["files"] if f["quant"] == quant)["validation"]
        for name, digest in sub["folder_files"].items():
            assert sha256_file(folder / name) == digest
        card = (folder / "README.md").read_text()
        assert card.startswith("---\nbase_model: ") and "library_name: onnxruntime-genai" in card
        assert 'og.Model("./")' in card
    top = (art.path / "README.md").read_text()
    assert all(f"{q}/model.onnx" in top for q in ONNX_QUANTS)


def test_builder_genai_config_carries_the_generation_settings(family, onnx_exports, miniature):
    art = onnx_exports(family)
    gen = Checkpoint.open(miniature(family)).generation_config
    cfg = json.loads((art.path / "int4" / "genai_config.json").read_text())
    assert cfg["model"]["eos_token_id"] == gen["eos_token_id"]
    assert cfg["search"]["do_sample"] == gen.get("do_sample", False)


def test_int8(miniature, tmp_path):
    import koquant

    art = koquant.export(miniature("komt-mini"), koquant.Recipe("onnx", ("int8",), eval_chunks=2), tmp_path / "o")
    (f,) = art.files
    assert f["validation"]["passed"], f["validation"]["failures"]
    assert f["validation"]["kl_mean"] <= thresholds_for("int8").kl_mean_max
    assert art.manifest["calibration"] is None  # only int4 gptq calibrates
    assert "int8 (MatMulNBits, block 32)" in f["tensor_types"].values()


@pytest.mark.parametrize("algo", ["rtn", "k_quant"])
def test_builder_int4_algorithms(algo, miniature, tmp_path):
    import koquant

    recipe = koquant.Recipe("onnx", ("int4",), eval_chunks=2, params={"int4_algo": algo, "block_size": 64})
    art = koquant.export(miniature("komt-mini"), recipe, tmp_path / "o")
    (f,) = art.files
    assert f["validation"]["passed"], f["validation"]["failures"]
    assert art.manifest["calibration"] is None
    assert art.manifest["onnx"]["options"]["int4_algo"] == algo
    assert "block 64" in f["notes"][0]
    assert set(t for n, t in f["tensor_types"].items() if n.startswith("model.layers.") and "MatMul" in n) \
        == {"int4 (MatMulNBits, block 64)"}


def test_int4_without_calibration_is_recorded_as_rtn(miniature, tmp_path):
    import koquant

    art = koquant.export(miniature("komt-mini"), koquant.Recipe("onnx", ("int4",), calib=None, eval_chunks=2),
                         tmp_path / "o")
    assert art.manifest["onnx"]["options"]["int4_algo"] == "rtn"
    assert "round-to-nearest" in art.files[0]["notes"][0]


@pytest.mark.parametrize("name", [n for n, fam in FAMILIES.items()
                                  if "onnx" not in architecture(fam.hf_class).backends])
def test_architectures_the_builder_lacks_are_refused_before_any_work(name, tmp_path):
    import koquant
    from koquant.errors import RecipeError
    from koquant.testing.miniatures import build_miniature

    with pytest.raises(RecipeError, match="onnxruntime-genai 0.18.0's model builder has no") as e:
        koquant.export(build_miniature(name, trained=False), koquant.Recipe("onnx", ONNX_QUANTS), tmp_path / "o")
    assert "cannot be exported to onnx" in str(e.value) and "gguf" in e.value.hint
    assert not (tmp_path / "o").exists()


def test_builder_reads_gemma3_rope_flat_with_the_local_base():
    from koquant.errors import RecipeError
    from koquant.exporters.onnx.builder import builder_config

    nested = {"model_type": "gemma3_text", "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}}
    config, changes = builder_config(nested)
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 1000000.0,
                                         "rope_local_base_freq": 10000.0}
    assert config["rope_theta"] == 1000000.0 and config["rope_local_base_freq"] == 10000.0
    assert len(changes) == 2 and config["model_type"] == "gemma3_text"
    assert builder_config({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) is None
    assert builder_config({"rope_theta": 1e4}) is None
    # the builder would scale the local layers' rope like the global ones': refused, not mis-built
    scaled = {"rope_parameters": {**nested["rope_parameters"],
                                  "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}}
    with pytest.raises(RecipeError, match="sliding-window layers"):
        builder_config(scaled)


def test_int4_codes_reach_the_builder_as_a_gptq_checkpoint(miniature, tmp_path):
    """koquant's round-to-nearest is the builder's own int4, code for code; and given as a GPTQ checkpoint
    (how koquant hands the builder its codes, so that it never holds the model in float32) they make a
    graph whose logits are the builder's own graph's exactly."""
    import numpy as np
    import onnx
    import onnxruntime_genai as og
    from onnx import numpy_helper

    from koquant.exporters.layerwise import LayerwiseModel
    from koquant.exporters.onnx import builder, quantized_input
    from koquant.exporters.onnx.exporter import _PlainInt4, _SourceWeights
    from koquant.exporters.onnx.matmulnbits import layer_weight_nodes, unpack

    source = miniature("komt-mini")
    lw = LayerwiseModel(source)
    arch = lw.arch
    own = tmp_path / "builder-own"
    builder.build(source, own, "int4", tmp_path / "cache", block_size=32, accuracy_level=4, algo="rtn", lm_head="int8")
    plain = _PlainInt4(_SourceWeights(lw, arch), 32)
    nodes = layer_weight_nodes(onnx.load(str(own / "model.onnx")), arch.onnx)
    assert set(nodes) == set(plain) and len(nodes) == lw.n_layers * len(arch.onnx.linears)
    for key, (_, b, s) in nodes.items():
        q = plain[key]
        n, k = q.codes.shape
        assert np.array_equal(unpack(numpy_helper.to_array(b))[:, :k], q.codes.numpy()), key
        assert np.array_equal(numpy_helper.to_array(s).reshape(n, -1), q.scales.numpy()), key

    given = tmp_path / "from-gptq-checkpoint"
    checkpoint = quantized_input.write(source, tmp_path / "gptq-input", plain, arch, 32)
    builder.build(checkpoint, given, "int4", tmp_path / "cache", block_size=32, accuracy_level=4, algo="rtn",
                  lm_head="int8")
    graph = onnx.load(str(given / "model.onnx"), load_external_data=False)
    assert not any(n.op_type == "MatMul" and n.name.startswith("/model/layers.") for n in graph.graph.node)

    def logits(folder):
        model = og.Model(str(folder))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=96)
        gen = og.Generator(model, params)
        gen.append_tokens(lw_ids)
        return np.array(gen.get_logits())

    lw_ids = list(range(5, 69))
    a, b = logits(own), logits(given)
    assert np.abs(a).max() > 1 and np.array_equal(a, b)
