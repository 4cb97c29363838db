"""GPTQ export of every family GPTQ supports: GPTQ v1 layout, loaded back by transformers, gated against the source."""

from __future__ import annotations

import json
import subprocess
import sys

from koquant.exporters.gptq.exporter import quantized_modules
from koquant.source.architectures import architecture_for, n_experts
from koquant.source.checkpoint import Checkpoint, sha256_file
from koquant.source.safetensors import read_safetensors_header
from koquant.exporters.gate import thresholds_for

from .conftest import GPTQ_QUANT

LOADERS_NEED = {"config.json", "quantize_config.json", "model.safetensors", "tokenizer_config.json"}


def test_export_passes_the_gate(family, gptq_exports):
    art = gptq_exports(family)
    assert art.format == "gptq"
    [f] = art.files
    assert f["path"] == "model.safetensors" and f["quant"] == GPTQ_QUANT
    v = f["validation"]
    assert v["passed"], v["failures"]
    th = thresholds_for(GPTQ_QUANT)
    assert (th.top1_min, th.kl_mean_max) == (0.85, 0.1)
    assert v["top1"] >= th.top1_min and v["kl_mean"] <= th.kl_mean_max
    assert 0 < v["kl_mean"], "a 4-bit export identical to the source means nothing was quantized"
    assert v["token_ids_identical"] and v["chat_template_identical"]
    assert v["positions"] == 2 * 256
    assert v["loaded_with"].startswith("transformers AutoModelForCausalLM")
    assert "gptqmodel" in v["kernel"]
    assert f["sha256"] == sha256_file(art.path / "model.safetensors")
    assert {p.name for p in art.path.iterdir()} >= LOADERS_NEED | {"koquant.json", "README.md"}


def test_checkpoint_is_gptq_v1_layout(family, gptq_exports):
    art = gptq_exports(family)
    config = json.loads((art.path / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == 128
    assert qc["checkpoint_format"] == "gptq", "v2 zero points read as garbage by v1 loaders"
    assert json.loads((art.path / "quantize_config.json").read_text())["bits"] == 4
    text = (art.path / "config.json").read_text() + (art.path / "quantize_config.json").read_text()
    assert "/tmp" not in text and "koquant-tmp" not in text, "a machine path leaked into the config"
    assert "대한민국" not in text and "법률" not in text, "calibration text embedded in the config"
    header = read_safetensors_header(art.path / "model.safetensors")
    n_layers = config["num_hidden_layers"]
    hidden = config["hidden_size"]
    arch = architecture_for(config)
    modules = quantized_modules(config, arch)  # every decoder Linear (one per expert) but a router
    for i in range(n_layers):
        for lin in arch.linears:
            if lin.router:  # a mixture of experts' router stays float
                assert f"model.layers.{i}.{lin.hf}.weight" in header
                assert f"model.layers.{i}.{lin.hf}.qweight" not in header
        for proj in modules:
            stem = f"model.layers.{i}.{proj}"
            qweight, qzeros = header[f"{stem}.qweight"], header[f"{stem}.qzeros"]
            scales, g_idx = header[f"{stem}.scales"], header[f"{stem}.g_idx"]
            assert qweight.dtype == "I32" and qzeros.dtype == "I32" and g_idx.dtype == "I32"
            in_features, out_features = qweight.shape[0] * 8, qweight.shape[1]
            assert tuple(g_idx.shape) == (in_features,)
            assert tuple(scales.shape) == (in_features // 128, out_features)
            assert tuple(qzeros.shape) == (in_features // 128, out_features // 8)
            assert f"{stem}.weight" not in header
    assert header["model.embed_tokens.weight"].shape[1] == hidden  # embeddings and norms stay float
    manifest = art.manifest
    assert manifest["gptq"]["checkpoint_format"] == "gptq" and manifest["gptq"]["bits"] == 4
    assert manifest["gptq"]["modules"]["count"] == len(modules) * n_layers
    assert "lm_head.qweight" not in header, "GPTQ keeps the head in floating point"


def test_v1_zero_points_are_stored_minus_one(gptq_exports):
    """Symmetric 4-bit: every stored zero point is 7 (8 - 1) in v1; v2 would store 8."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(gptq_exports("ocelot-mini").path / "model.safetensors")
    qzeros = tensors["model.layers.0.self_attn.q_proj.qzeros"]
    nibbles = torch.stack([(qzeros >> (4 * k)) & 0xF for k in range(8)])
    assert set(nibbles.unique().tolist()) == {7}


def test_loads_with_transformers_in_a_fresh_process(gptq_exports):
    """The acceptance load: AutoModelForCausalLM.from_pretrained(folder, device_map="cpu"), then generate."""
    art = gptq_exports("llama3-ko-mini")
    code = (
        "import os, sys, torch; os.environ.setdefault('GPTQMODEL_CPU_WORKERS', '2')\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map='cpu')\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = t('대한민국 헌법', return_tensors='pt').input_ids\n"
        "out = m.generate(ids, max_new_tokens=8, do_sample=False)\n"
        "print('OK', type(m.model.layers[0].mlp.down_proj).__name__, out.shape[1] - ids.shape[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(art.path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "OK" and last[2] == "8" and "Linear" in last[1] and last[1] != "Linear"


def test_source_tokenizer_files_are_kept(family, gptq_exports, miniature):
    art = gptq_exports(family)
    src = Checkpoint.open(miniature(family))
    for p in src.tokenizer_files:
        assert (art.path / p.name).read_bytes() == p.read_bytes(), p.name


def test_manifest_and_card_record_the_calibration(gptq_exports):
    art = gptq_exports("ocelot-mini")
    cal = art.manifest["calibration"]
    assert cal["name"] == "kobill" and cal["chunks"] == 8 and cal["chunk_size"] == 256
    assert "GPTQ" in cal["used_for"]
    assert art.manifest["tools"]["gptqmodel"] == "7.6.0"
    card = (art.path / "README.md").read_text()
    assert "library_name: transformers" in card and "- gptq" in card and GPTQ_QUANT in card


def test_koquant_load_runs_the_export_with_the_source_prompt(family, gptq_exports, miniature):
    """koquant.load on a GPTQ artifact: transformers + GPTQModel kernels, the source's exact prompt ids."""
    import numpy as np
    from transformers import AutoTokenizer

    import koquant

    art = gptq_exports(family)
    tok = AutoTokenizer.from_pretrained(miniature(family))
    messages = [{"role": "user", "content": "대한민국 헌법 제1조는 무엇인가요?"}]
    want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    with koquant.load(art.path) as s:
        assert s.format == "gptq" and s.backend == "transformers+gptqmodel" and s.quant == GPTQ_QUANT
        assert s.encode_chat(messages) == list(want)
        out = s.generate(list(want), temperature=0, max_new_tokens=8)
        assert 0 < len(out) <= 8
        cached = s.next_logits(list(want) + out[:2])
        fresh = s.logits(list(want) + out[:2])
        np.testing.assert_allclose(cached, fresh[-1], atol=2e-3)


def test_nothing_is_written_outside_the_artifact(gptq_exports, tmp_path, monkeypatch):
    """GPTQModel logs to ./logs and caches under ~/.cache/gptqmodel unless redirected; koquant redirects both."""
    import koquant
    from koquant.testing.miniatures import build_miniature

    from koquant.exporters.gguf.llamacpp import cache_root

    monkeypatch.setenv("KOQUANT_CACHE", str(cache_root()))  # the real cache (miniatures, compiled extension)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    recipe = koquant.Recipe("gptq", (GPTQ_QUANT,), calib_ctx=128, calib_chunks=2, eval_chunks=1, eval_ctx=64)
    koquant.export(build_miniature("gemma-ko-mini"), recipe, tmp_path / "out")
    assert not (tmp_path / "logs").exists()
    assert not (tmp_path / "home" / ".cache" / "gptqmodel").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["out"]


def test_8bit_is_closer_to_the_source_than_4bit(gptq_exports, tmp_path, miniature):
    import koquant

    recipe = koquant.Recipe("gptq", ("w8g128",), calib_ctx=256, calib_chunks=8, eval_chunks=2)
    art = koquant.export(miniature("synatra-mini"), recipe, tmp_path / "w8")
    v8 = art.files[0]["validation"]
    v4 = gptq_exports("synatra-mini").files[0]["validation"]
    assert v8["passed"] and v8["thresholds"] == {"top1_min": 0.95, "kl_mean_max": 0.01, "max_abs_max": None}
    assert v8["kl_mean"] < v4["kl_mean"] / 4
    assert json.loads((art.path / "config.json").read_text())["quantization_config"]["bits"] == 8


def test_calibration_is_the_one_other_formats_use(gptq_exports, gguf_exports):
    """Same Korean text, same hash in the manifest as the GGUF importance matrix."""
    gptq = gptq_exports("komt-mini").manifest["calibration"]
    gguf = gguf_exports("komt-mini").manifest["calibration"]
    assert gptq["name"] == gguf["name"] == "kobill"
    assert gptq["sha256"] == gguf["sha256"]


def test_defused_experts_are_scoped_to_the_load():
    """Defuser's swap of Qwen3-MoE's fused block lasts for one load; dense models never see it."""
    import transformers.models.qwen3_moe.modeling_qwen3_moe as qwen3_moe
    from transformers import conversion_mapping, modeling_utils

    from koquant.exporters.gptq.loading import defused_experts
    from koquant.testing.miniatures import FAMILIES

    fam = FAMILIES["qwen3moe-ko-mini"]
    config = {**fam.config, "architectures": [fam.hf_class], "model_type": fam.model_type}
    before = (qwen3_moe.Qwen3MoeSparseMoeBlock, conversion_mapping.get_checkpoint_conversion_mapping,
              getattr(modeling_utils, "get_checkpoint_conversion_mapping", None))
    with defused_experts(config):
        assert qwen3_moe.Qwen3MoeSparseMoeBlock is not before[0]
        assert "defuser" in qwen3_moe.Qwen3MoeSparseMoeBlock.__module__
    after = (qwen3_moe.Qwen3MoeSparseMoeBlock, conversion_mapping.get_checkpoint_conversion_mapping,
             getattr(modeling_utils, "get_checkpoint_conversion_mapping", None))
    assert after == before
    assert not hasattr(conversion_mapping, "orig_get_checkpoint_conversion_mapping")
    with defused_experts({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}):
        assert conversion_mapping.get_checkpoint_conversion_mapping is before[1]


def test_moe_export_stores_each_expert_and_reads_the_routed_share(gptq_exports):
    """Qwen3-MoE: one quantized Linear per expert in the checkpoint, loaded back as such, and the runtime's
    bytes per token counts the packed experts at experts-per-token / experts."""
    from koquant.runtime.backends.gptq import GPTQBackend

    art = gptq_exports("qwen3moe-ko-mini")
    config = json.loads((art.path / "config.json").read_text())
    header = read_safetensors_header(art.path / "model.safetensors")
    experts = {n: t.nbytes for n, t in header.items() if ".mlp.experts." in n}
    assert len(experts) == config["num_hidden_layers"] * n_experts(config) * 3 * 4  # gate/up/down x 4 tensors
    assert all(n.rsplit(".", 1)[1] in ("qweight", "qzeros", "scales", "g_idx") for n in experts)
    rest = sum(t.nbytes for n, t in header.items() if n not in experts) - header["model.embed_tokens.weight"].nbytes
    share = config["num_experts_per_tok"] / n_experts(config)
    assert GPTQBackend.bytes_per_token(art.path) == round(rest + share * sum(experts.values()))
    modules = art.manifest["gptq"]["modules"]
    assert set(modules["fallback"]) <= {"rtn"}  # experts the router seldom picks: rounded to nearest
    assert art.manifest["gptq"]["defused_experts"] == "qwen3_moe"
    assert 'defuser.replace_fused_blocks("qwen3_moe")' in (art.path / "README.md").read_text()
