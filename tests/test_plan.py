"""koquant plan: file sizes, RAM, presets, device fit, errors, CLI and the GGUF header reader."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from koquant.errors import CheckpointError, KoquantError, RecipeError
from koquant.plan import (
    ARCHITECTURES,
    DEVICES,
    FILE_TYPES,
    PRESETS,
    SEED_IDS,
    compare_gguf,
    compute_buffer_bytes,
    gguf_tensors,
    kv_cache_bytes,
    parse_size,
    plan,
    plan_gguf,
    plan_gptq,
    plan_onnx,
    preset_spec,
    read_gguf,
    spec_from_config,
    spec_from_path,
)
from koquant.cli import plan as plan_cli
from koquant.plan.vocab_footprint import footprint_from_dir

GiB = 1024**3
MiB = 1024**2

# --------------------------------------------------------------------------- published sizes

# llama.cpp tools/quantize/README.md, meta-llama/Llama-3.1-8B: size (GiB) and bits/weight.
# "size" there is llama-bench's model size: tensor bytes without the header.
LLAMA31_8B = {
    "IQ1_S": (1.87, 2.0042),
    "IQ1_M": (2.01, 2.1460),
    "IQ2_XXS": (2.23, 2.3824),
    "IQ2_XS": (2.42, 2.5882),
    "IQ2_S": (2.56, 2.7403),
    "IQ2_M": (2.74, 2.9294),
    "IQ3_XXS": (3.04, 3.2548),
    "IQ3_XS": (3.27, 3.4977),
    "IQ3_S": (3.42, 3.6606),
    "IQ3_M": (3.52, 3.7628),
    "IQ4_XS": (4.17, 4.4597),
    "IQ4_NL": (4.38, 4.6818),
    "Q2_K_S": (2.78, 2.9697),
    "Q2_K": (2.95, 3.1593),
    "Q3_K_S": (3.41, 3.6429),
    "Q3_K_M": (3.74, 3.9960),
    "Q3_K_L": (4.02, 4.2979),
    "Q4_K_S": (4.36, 4.6672),
    "Q4_K_M": (4.58, 4.8944),
    "Q5_K_S": (5.21, 5.5704),
    "Q5_K_M": (5.33, 5.7036),
    "Q6_K": (6.14, 6.5633),
    "Q8_0": (7.95, 8.5008),
    "F16": (14.96, 16.0005),
}


@pytest.mark.parametrize("ftype", sorted(LLAMA31_8B))
def test_llama31_8b_published_sizes(ftype):
    gib, bpw = LLAMA31_8B[ftype]
    p = plan_gguf(preset_spec("llama-3.1-8b"), ftype)
    assert abs(p.tensor_bytes / GiB - gib) <= 0.02 * gib
    assert abs(p.file_bytes / GiB - gib) <= 0.02 * gib
    # the per-tensor mix is llama.cpp's own: bits per weight agree to the published 4 decimals
    assert p.bits_per_weight == pytest.approx(bpw, abs=6e-5)


def test_mistral_7b_q5_k_m_published_size():
    # gguf-parser README: Mistral-7B Q5_K_M 4.78 GiB
    p = plan("mistral-7b-v0.1", gguf_types=["Q5_K_M"], gptq=(), onnx=())
    assert abs(p.export("Q5_K_M").file_bytes / GiB - 4.78) <= 0.02 * 4.78


def test_q4_k_m_mix_for_llama3():
    p = plan_gguf(preset_spec("llama-3.1-8b"), "Q4_K_M")
    types = p.types()
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"
    assert types["rope_freqs.weight"] == "F32"
    assert types["blk.0.attn_norm.weight"] == "F32"
    # use_more_bits(i, 32): first 4, last 4 and every third in between
    more = [i for i in range(32) if types[f"blk.{i}.attn_v.weight"] == "Q6_K"]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert more == [i for i in range(32) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert types["blk.4.attn_q.weight"] == "Q4_K"


def test_imatrix_changes_iq4_xs_only_slightly():
    spec = preset_spec("llama-3.1-8b")
    without, with_ = plan_gguf(spec, "IQ4_XS"), plan_gguf(spec, "IQ4_XS", imatrix=True)
    assert without.types()["blk.0.ffn_down.weight"] == "Q5_K"
    assert with_.types()["blk.0.ffn_down.weight"] == "IQ4_XS"
    assert with_.file_bytes < without.file_bytes
    assert plan_gguf(spec, "IQ2_XXS").needs_imatrix and not without.needs_imatrix


def test_row_length_fallbacks():
    spec = spec_from_config(_llama_cfg(hidden=288, intermediate=352, layers=3))
    types = plan_gguf(spec, "Q4_K_M").types()
    assert types["token_embd.weight"] == "Q5_0"  # Q4_K does not fit 288-wide rows
    assert types["output.weight"] == "Q8_0"  # head: 288 % 256 != 0 -> Q8_0
    assert types["blk.2.ffn_down.weight"] == "Q8_0"  # use_more_bits wanted Q6_K
    assert types["blk.0.ffn_down.weight"] == "Q5_0"  # wanted Q4_K
    odd = spec_from_config(_llama_cfg(hidden=80, intermediate=100, heads=4, layers=1))
    t = plan_gguf(odd, "Q4_K_M").types()
    assert t["blk.0.ffn_down.weight"] == "F16"  # 100 is not a multiple of 32 either


# --------------------------------------------------------------------------- presets and registries


def test_five_seed_presets_exist():
    assert set(SEED_IDS) == {"ocelot-10.8b", "synatra-7b", "komt-mistral-7b", "llama3-ko-8b-aog", "gemma-ko-2b"}


EXPECTED = {
    # id: (arch, layers, hidden, inter, heads, kv, head_dim, vocab, tied, params in billions)
    "ocelot-10.8b": ("llama", 48, 4096, 14336, 32, 8, 128, 40960, False, 10.80),
    "synatra-7b": ("mistral", 32, 4096, 14336, 32, 8, 128, 32000, False, 7.24),
    "komt-mistral-7b": ("mistral", 32, 4096, 14336, 32, 8, 128, 32000, False, 7.24),
    "llama3-ko-8b-aog": ("llama", 32, 4096, 14336, 32, 8, 128, 128256, False, 8.03),
    "gemma-ko-2b": ("gemma", 18, 2048, 16384, 8, 1, 256, 256000, True, 2.51),
}


@pytest.mark.parametrize("pid", SEED_IDS)
def test_seed_preset_configs(pid):
    s = preset_spec(pid)
    arch, layers, hidden, inter, heads, kv, hd, vocab, tied, params = EXPECTED[pid]
    assert (s.arch, s.n_layers, s.hidden, s.intermediate, s.n_heads, s.n_kv_heads, s.head_dim, s.vocab, s.tied) == (
        arch,
        layers,
        hidden,
        inter,
        heads,
        kv,
        hd,
        vocab,
        tied,
    )
    assert s.n_params / 1e9 == pytest.approx(params, abs=0.01)
    p = plan(pid)
    q4 = p.export("Q4_K_M")
    assert 4.0 < q4.bits_per_weight < 5.5
    assert p.export("F16").file_bytes > p.export("Q8_0").file_bytes > q4.file_bytes > p.export("Q2_K").file_bytes


def test_mistral_presets_have_the_window():
    assert preset_spec("synatra-7b").sliding_window == 4096
    assert preset_spec("llama3-ko-8b-aog").sliding_window is None


def test_gemma_tied_quirks():
    types = plan_gguf(preset_spec("gemma-ko-2b"), "Q4_K_M").types()
    assert "output.weight" not in types
    assert types["token_embd.weight"] == "Q6_K"  # quantized like an output tensor
    p = plan("gemma-ko-2b", gguf_types=["Q8_0"])
    assert any("stored once" in n for n in p.export("gptq:w4g128").notes)


def _minimal_config(arch) -> dict:
    cfg = _llama_cfg(hidden=256, intermediate=512, layers=2)
    cfg["architectures"] = [arch.hf_classes[0]]
    cfg["model_type"] = arch.model_types[0]
    if arch.experts:
        cfg.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256)
    return cfg


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_registered_architecture_plans(name):
    arch = ARCHITECTURES[name]
    p = plan(_minimal_config(arch), ctx=(512,))
    assert p.model.arch == name
    names = set(p.export("Q4_K_M").detail.types())
    assert "token_embd.weight" in names and f"blk.1.ffn_down{'_exps' if arch.experts else ''}.weight" in names
    assert ("output.weight" in names) == (not arch.gguf_drops_lm_head and not p.model.tied)
    if arch.qkv_bias:
        assert "blk.0.attn_q.bias" in names


def test_config_synonyms_resolve_in_one_place():
    cfg = {"model_type": "llama", "n_layer": 2, "n_embd": 256, "n_inner": 512, "n_head": 4, "n_vocab": 1000}
    s = spec_from_config(cfg)
    assert (s.n_layers, s.hidden, s.intermediate, s.n_heads, s.n_kv_heads, s.head_dim, s.vocab) == (
        2,
        256,
        512,
        4,
        4,
        64,
        1000,
    )
    assert s.tied is False  # llama's default
    g = spec_from_config({**cfg, "model_type": "gemma"})
    assert g.tied is True  # gemma's default
    q = spec_from_config({**cfg, "model_type": "qwen2", "sliding_window": 1024})
    assert q.sliding_window is None  # only with use_sliding_window
    assert (
        spec_from_config(
            {**cfg, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 1024}
        ).sliding_window
        == 1024
    )
    m = spec_from_config({**cfg, "model_type": "mistral", "sliding_window": None})
    assert m.sliding_window is None  # v0.2+: explicit null
    nested = spec_from_config({"architectures": ["LlamaForCausalLM"], "text_config": cfg})
    assert nested.n_layers == 2


# --------------------------------------------------------------------------- KV cache and RAM


def test_kv_cache_arithmetic():
    s = preset_spec("llama3-ko-8b-aog")
    # layers x (K,V) x ctx x kv_heads x head_dim x 2 bytes
    assert kv_cache_bytes(s, 8192, "f16") == 32 * 2 * 8192 * 8 * 128 * 2 == 1 * GiB
    assert kv_cache_bytes(s, 8192, "q8_0") == 32 * 2 * 8192 * (1024 // 32 * 34)
    g = preset_spec("gemma-ko-2b")
    assert kv_cache_bytes(g, 4096) == 18 * 2 * 4096 * 1 * 256 * 2


def test_mistral_sliding_window_per_runtime():
    s = preset_spec("synatra-7b")
    assert kv_cache_bytes(s, 8192, window=s.sliding_window) == kv_cache_bytes(s, 4096) == 512 * MiB
    p = plan("synatra-7b", ctx=(2048, 8192), gguf_types=["Q4_K_M"])
    # transformers keeps only the window ...
    assert p.ram("source:bf16", 8192).kv_bytes == 512 * MiB
    assert p.ram("source:bf16", 8192).kv_window == 4096
    assert p.ram("gptq:w4g128", 2048).kv_bytes == 256 * MiB
    # ... llama.cpp runs Mistral as Llama, with full attention
    assert p.ram("gguf:Q4_K_M", 8192).kv_bytes == 1 * GiB
    assert p.ram("gguf:Q4_K_M", 8192).kv_window is None
    # onnxruntime-genai: fp32 cache over the whole context for a CPU int4 model
    assert p.ram("onnx:int4", 8192).kv_bytes == 2 * GiB


def test_ram_is_weights_plus_kv_plus_compute():
    p = plan("llama3-ko-8b-aog", ctx=(4096,), kv_type="q8_0", gguf_types=["Q4_K_M"])
    r = p.ram("Q4_K_M", 4096)
    e = p.export("Q4_K_M")
    assert r.weight_bytes == e.weight_bytes == e.detail.tensor_bytes
    assert r.kv_bytes == kv_cache_bytes(p.model, 4096, "q8_0")
    assert r.compute_bytes == compute_buffer_bytes(p.model)
    assert r.total_bytes == r.weight_bytes + r.kv_bytes + r.compute_bytes
    # stated estimate: 4 B x 512 x (vocab + hidden + intermediate) + 128 MiB
    assert r.compute_bytes == 4 * 512 * (128256 + 4096 + 14336) + 128 * MiB


# --------------------------------------------------------------------------- devices


def test_device_fit_logic():
    p = plan("llama3-ko-8b-aog", ctx=(2048, 8192), gguf_types=["Q4_K_M", "F16"])
    assert [d.name for d in p.devices] == list(DEVICES)
    small = p.ram("Q4_K_M", 2048)
    big = p.ram("F16", 8192)
    laptop16 = DEVICES["laptop-16gb"]
    f = small.fit_on("laptop-16gb")
    assert f.fits and f.headroom_bytes == laptop16.usable_bytes - small.total_bytes
    assert not big.fit_on("laptop-16gb").fits and big.fit_on("laptop-16gb").headroom_bytes < 0
    assert big.fit_on("cpu-server-64gb").fits
    assert not small.fit_on("phone-8gb").fits
    # headroom shrinks as the context grows
    assert p.ram("Q4_K_M", 8192).fit_on("laptop-16gb").headroom_bytes < f.headroom_bytes


def test_custom_ram_and_device_selection():
    p = plan("gemma-ko-2b", ctx=(4096,), device="phone-8gb", ram="6GB", gguf_types=["Q4_K_M"])
    assert [d.name for d in p.devices] == ["phone-8gb", "ram-6gb"]
    r = p.ram("Q4_K_M", 4096)
    assert r.fit_on("ram-6gb").headroom_bytes == 6 * GiB - r.total_bytes  # --ram reserves nothing
    assert r.fit_on("phone-8gb").usable_bytes == DEVICES["phone-8gb"].usable_bytes
    with pytest.raises(RecipeError, match="known devices"):
        plan("gemma-ko-2b", device="toaster")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("8GB", 8 * GiB),
        ("8 GiB", 8 * GiB),
        ("7.5g", int(7.5 * GiB)),
        ("512MB", 512 * MiB),
        ("16", 16 * GiB),
        (1000, 1000),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "8XB", "-1GB", "0GB", 1.5, True])
def test_parse_size_rejects(bad):
    with pytest.raises(RecipeError):
        parse_size(bad)


# --------------------------------------------------------------------------- GPTQ / ONNX arithmetic


def test_gptq_layout_arithmetic():
    spec = spec_from_config(_llama_cfg(hidden=256, intermediate=512, layers=1, heads=4, kv=4, vocab=1000))
    p = plan_gptq(spec, bits=4, group_size=128)
    # linears (K, N): q,k,v,o (256,256) x4; gate, up (256,512) x2; down (512,256)
    linears = [(256, 256)] * 4 + [(256, 512)] * 2 + [(512, 256)]
    assert p.parts["qweight"] == sum(k * n // 2 for k, n in linears)
    assert p.parts["qzeros"] == sum((k // 128) * n // 2 for k, n in linears)
    assert p.parts["scales"] == sum((k // 128) * n * 2 for k, n in linears)
    assert p.parts["g_idx"] == sum(k * 4 for k, _ in linears)
    # embedding + lm_head + 3 norms stay 16-bit
    assert p.parts["16-bit"] == (2 * 1000 * 256 + 3 * 256) * 2
    assert plan_gptq(spec, bits=8, group_size=128).parts["qweight"] == 2 * p.parts["qweight"]
    assert (p.variant, plan_gptq(spec, bits=8, group_size=-1).variant) == ("w4g128", "w8")  # export's names
    for bits, group in ((5, 128), (3, 128), (4, 100)):  # widths and groups export refuses, plan refuses too
        with pytest.raises(RecipeError):
            plan_gptq(spec, bits=bits, group_size=group)


def test_onnx_layout_arithmetic():
    spec = spec_from_config(_llama_cfg(hidden=256, intermediate=512, layers=1, heads=4, kv=4, vocab=1000, max_pos=128))
    int4 = plan_onnx(spec, "int4")
    linear_elems = 4 * 256 * 256 + 3 * 256 * 512 + 256 * 1000  # lm_head quantized too
    assert int4.parts["int4 weights"] == linear_elems // 2
    assert int4.parts["int4 scales"] == linear_elems // 32 * 4  # fp32 scale per 32 values on CPU
    assert int4.parts["int4 zero points"] == 0  # symmetric
    assert int4.parts["float weights"] == (1000 * 256 + 3 * 256) * 4  # embedding + norms in fp32
    assert int4.parts["rotary caches"] == 2 * 128 * 32 * 4
    int8 = plan_onnx(spec, "int8")
    assert int8.parts["int8 weights"] == linear_elems  # one byte per value
    assert int8.parts["int8 scales"] == int4.parts["int4 scales"]
    assert int8.parts["float weights"] == int4.parts["float weights"]
    assert plan_onnx(spec, "int4", symmetric=False).parts["int4 zero points"] > 0
    assert plan_onnx(spec, "fp32").parts["float weights"] == spec.n_params * 4
    with pytest.raises(RecipeError, match="not supported on CPU"):  # export refuses fp16 on CPU: plan does not offer it
        plan_onnx(spec, "fp16")


# --------------------------------------------------------------------------- bad input


def _llama_cfg(*, hidden=256, intermediate=512, layers=2, heads=4, kv=2, vocab=512, max_pos=2048, tied=False) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": tied,
    }


@pytest.mark.parametrize(
    "missing", ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"]
)
def test_missing_key_is_named(missing):
    cfg = _llama_cfg()
    del cfg[missing]
    with pytest.raises(CheckpointError) as e:
        plan(cfg)
    assert missing in str(e.value) and e.value.hint


@pytest.mark.parametrize(
    "change,match",
    [
        ({"num_attention_heads": 0}, "num_attention_heads is 0"),
        ({"num_key_value_heads": 0}, "num_key_value_heads is 0"),
        ({"num_key_value_heads": 3}, "do not divide"),
        ({"hidden_size": 250}, "not divisible"),
        ({"num_hidden_layers": "two"}, "must be an integer"),
        ({"vocab_size": -5}, "must be positive"),
    ],
)
def test_bad_values_are_clear(change, match):
    with pytest.raises(CheckpointError, match=match):
        plan({**_llama_cfg(), **change})


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(RecipeError) as e:
        plan({**_llama_cfg(), "architectures": ["MambaForCausalLM"], "model_type": "mamba"})
    msg = str(e.value)
    assert "MambaForCausalLM" in msg and "LlamaForCausalLM" in msg and "gemma" in msg


def test_bad_sources(tmp_path):
    with pytest.raises(CheckpointError, match="neither"):
        plan(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="no config.json"):
        plan(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        plan(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        plan(tmp_path)
    with pytest.raises(RecipeError, match="unknown preset"):
        preset_spec("gpt-5")


@pytest.mark.parametrize(
    "kwargs", [{"ctx": ()}, {"ctx": (0,)}, {"ctx": ("4k",)}, {"kv_type": "q3"}, {"gguf_types": ["Q9_X"]}]
)
def test_bad_options(kwargs):
    with pytest.raises(RecipeError):
        plan("gemma-ko-2b", **kwargs)


# --------------------------------------------------------------------------- model folders and tokenizers


def _spm_model(pieces: list[str]) -> bytes:
    """A SentencePiece ModelProto with just its pieces (field 1: piece, score, type)."""

    def varint(n):
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    buf = b""
    for p in pieces:
        raw = p.encode()
        sub = b"\x0a" + varint(len(raw)) + raw + b"\x15" + struct.pack("<f", -1.0) + b"\x18\x01"
        buf += b"\x0a" + varint(len(sub)) + sub
    return buf + b"\x12\x02\x08\x01"  # a trainer_spec-like field to skip


def test_folder_with_sentencepiece_and_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_llama_cfg(vocab=8)))
    (tmp_path / "tokenizer.model").write_bytes(_spm_model(["<unk>", "<s>", "</s>", "▁안녕", "a", "b"]))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{{ x }}", "added_tokens_decoder": {"5": {"content": "<|im|>"}}})
    )
    header = json.dumps(
        {"model.embed_tokens.weight": {"dtype": "BF16", "shape": [8, 256], "data_offsets": [0, 4096]}}
    ).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4096)
    s = spec_from_path(tmp_path)
    fp = s.vocab_footprint
    # pieces 0..4, the added token replaces piece 5, ids 6 and 7 are [PAD6], [PAD7]
    assert fp.kind == "spm" and fp.source == "tokenizer.model"
    assert fp.token_text_bytes == len("<unk><s></s>▁안녕a".encode()) + len("<|im|>") + 2 * len("[PAD6]")
    assert fp.chat_template_bytes == len("{{ x }}")
    assert s.checkpoint_bytes == (tmp_path / "model.safetensors").stat().st_size
    assert s.lm_head_in_checkpoint is False
    assert plan(tmp_path, ctx=(256,)).export("source:bf16").file_bytes == s.checkpoint_bytes


def test_bpe_tokenizer_json_footprint(tmp_path):
    tj = {
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġa": 3}, "merges": [["a", "b"], ["Ġ", "a"]]},
        "added_tokens": [{"id": 4, "content": "<|end|>"}],
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    fp = footprint_from_dir(tmp_path, 6)
    assert fp.kind == "bpe" and fp.n_tokens == 6 and fp.n_merges == 2
    assert fp.token_text_bytes == len("ababĠa".encode()) + len("<|end|>") + len("[PAD5]")
    assert fp.merge_text_bytes == len("a b") + len("Ġ a".encode())
    tj["model"]["merges"] = ["a b", "Ġ a"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    assert footprint_from_dir(tmp_path, 6).merge_text_bytes == fp.merge_text_bytes


def test_estimated_footprint_is_close_to_measured():
    measured = PRESETS["llama3-ko-8b-aog"].vocab
    from koquant.plan.vocab_footprint import estimated_footprint

    est = estimated_footprint(128256)
    assert est.kind == "bpe"
    assert abs(est.gguf_kv_bytes() - measured.gguf_kv_bytes()) < 0.02 * measured.gguf_kv_bytes()


# --------------------------------------------------------------------------- no torch, speed, CLI


def _subprocess_env() -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_import_and_plan_do_not_load_heavy_backends():
    code = (
        "import sys, koquant.plan as kp; kp.plan('gemma-ko-2b'); kp.plan('ocelot-10.8b').to_dict();"
        "heavy = sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('torch', 'transformers', 'llama_cpp', 'onnxruntime', 'rich'));"
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_subprocess_env(), check=True
    )
    assert out.stdout.strip() == "[]"


def _run_cli(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="koquant plan")
    plan_cli.configure(parser)
    args = parser.parse_args(argv)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = plan_cli.main(args)
    return rc, buf.getvalue()


def test_cli_json_shape_and_speed():
    t0 = time.perf_counter()
    rc, out = _run_cli(["--preset", "ocelot-10.8b", "--json"])
    assert time.perf_counter() - t0 < 1.0
    assert rc == 0
    d = json.loads(out)
    assert d["schema"] == "koquant.plan/1"
    assert set(d) == {"schema", "model", "ctx", "kv_type", "devices", "exports", "runtime", "warnings", "assumptions"}
    assert any("longer than the 4096 positions" in w for w in d["warnings"])  # ocelot was trained on 4096
    assert d["ctx"] == [2048, 4096, 8192] and d["kv_type"] == "f16"
    assert d["model"]["name"] == "ocelot-10.8b" and d["model"]["n_layers"] == 48
    keys = [e["key"] for e in d["exports"]]
    assert {f"gguf:{t}" for t in FILE_TYPES} <= set(keys)
    assert {"gptq:w4g128", "onnx:fp32", "onnx:int8", "onnx:int4", "source:bf16"} <= set(keys)
    e = next(e for e in d["exports"] if e["key"] == "gguf:Q4_K_M")
    assert {
        "file_bytes",
        "weight_bytes",
        "bits_per_weight",
        "type_counts",
        "fallbacks",
        "needs_imatrix",
        "notes",
    } <= set(e)
    assert len(d["runtime"]) == len(keys) * 3
    r = d["runtime"][0]
    assert {"export", "ctx", "weight_bytes", "kv_bytes", "compute_bytes", "total_bytes", "fits"} <= set(r)
    assert set(r["fits"]) == set(DEVICES)
    # the JSON numbers are the Python API's numbers
    p = plan("ocelot-10.8b")
    assert e["file_bytes"] == p.export("Q4_K_M").file_bytes
    assert p.to_dict() == d


def test_cli_table_and_options(tmp_path):
    rc, out = _run_cli(
        [
            "--preset",
            "synatra-7b",
            "--ctx",
            "4k,8192",
            "--device",
            "laptop-16gb",
            "--ram",
            "8GB",
            "--types",
            "Q4_K_M,Q8_0",
        ]
    )
    assert rc == 0
    assert "synatra-7b" in out and "gguf:Q4_K_M" in out and "laptop-16gb" in out and "ram-8gb" in out
    assert "gguf:Q6_K" not in out
    (tmp_path / "config.json").write_text(json.dumps(_llama_cfg()))
    rc, out = _run_cli([str(tmp_path), "--json", "--tensors", "--types", "Q4_K_M", "--kv-type", "q8_0"])
    d = json.loads(out)
    assert d["kv_type"] == "q8_0" and d["exports"][0]["tensors"][0]["name"]


@pytest.mark.parametrize(
    "argv,err",
    [
        ([], RecipeError),
        (["x", "--preset", "gemma-ko-2b"], RecipeError),
        (["--preset", "nope"], RecipeError),
        (["--preset", "gemma-ko-2b", "--ctx", "abc"], RecipeError),
    ],
)
def test_cli_errors(argv, err):
    with pytest.raises(err):
        _run_cli(argv)


def test_module_entry_point_reports_errors():
    out = subprocess.run(
        [sys.executable, "-m", "koquant.plan", "--preset", "nope"],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
    )
    assert out.returncode == 2 and "unknown preset" in out.stderr and "hint:" in out.stderr
    t0 = time.perf_counter()
    ok = subprocess.run(
        [sys.executable, "-m", "koquant.plan", "--preset", "llama3-ko-8b-aog", "--json"],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["model"]["vocab"] == 128256
    assert time.perf_counter() - t0 < 3.0  # interpreter start included; the planning itself is ~0.1 s


# --------------------------------------------------------------------------- GGUF files


def _gguf_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _write_gguf(path: Path, tensors: list[tuple[str, np.ndarray, int]], meta: dict[str, tuple[int, bytes]]) -> None:
    """A GGUF v3 file; tensors are numpy arrays (last axis = ggml row) with a ggml type id."""
    head = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)))
    for key, (vtype, payload) in meta.items():
        head += _gguf_str(key) + struct.pack("<I", vtype) + payload
    blobs, offset = [], 0
    for name, arr, type_id in tensors:
        shape = arr.shape[::-1]
        head += _gguf_str(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        head += struct.pack("<IQ", type_id, offset)
        data = arr.tobytes() + b"\0" * (-arr.nbytes % 32)
        blobs.append(data)
        offset += len(data)
    head += b"\0" * (-len(head) % 32)
    with open(path, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)


def _u32(v):
    return (4, struct.pack("<I", v))


def _tiny_llama(path: Path, cfg: dict, seed: int = 0) -> None:
    """A random Llama in GGUF F16, the way convert_hf_to_gguf lays it out (norms F32)."""
    h, ff, n, heads, kv, vocab = (
        cfg[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
        )
    )
    hd = h // heads
    rng = np.random.default_rng(seed)

    def w(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16)

    ones = np.ones(h, np.float32)
    tensors = [("token_embd.weight", w(vocab, h), 1), ("output_norm.weight", ones, 0)]
    if not cfg["tie_word_embeddings"]:
        tensors.append(("output.weight", w(vocab, h), 1))
    for i in range(n):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", ones, 0),
            (p + "attn_q.weight", w(heads * hd, h), 1),
            (p + "attn_k.weight", w(kv * hd, h), 1),
            (p + "attn_v.weight", w(kv * hd, h), 1),
            (p + "attn_output.weight", w(h, heads * hd), 1),
            (p + "ffn_norm.weight", ones, 0),
            (p + "ffn_gate.weight", w(ff, h), 1),
            (p + "ffn_up.weight", w(ff, h), 1),
            (p + "ffn_down.weight", w(h, ff), 1),
        ]
    meta = {
        "general.architecture": (8, _gguf_str("llama")),
        "general.file_type": _u32(1),
        "llama.block_count": _u32(n),
        "llama.context_length": _u32(cfg["max_position_embeddings"]),
        "llama.embedding_length": _u32(h),
        "llama.feed_forward_length": _u32(ff),
        "llama.attention.head_count": _u32(heads),
        "llama.attention.head_count_kv": _u32(kv),
        "llama.attention.layer_norm_rms_epsilon": (6, struct.pack("<f", 1e-5)),
        "llama.rope.dimension_count": _u32(hd),
        "llama.vocab_size": _u32(vocab),
    }
    _write_gguf(path, tensors, meta)


# two miniatures: 8 layers with an FFN width K-quants cannot take (fallbacks), and a tied one
MINIATURES = {
    "untied-8l": _llama_cfg(hidden=256, intermediate=352, layers=8, heads=4, kv=1, vocab=512),
    "tied-288": _llama_cfg(hidden=288, intermediate=512, layers=2, heads=4, kv=2, vocab=512, tied=True),
}


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    for name, cfg in MINIATURES.items():
        _tiny_llama(d / f"{name}-F16.gguf", cfg)
    return d


def test_reader_on_generated_file(gguf_dir):
    cfg = MINIATURES["untied-8l"]
    g = read_gguf(gguf_dir / "untied-8l-F16.gguf")
    assert g.version == 3 and g.alignment == 32 and g.metadata["general.architecture"] == "llama"
    assert g.metadata["llama.block_count"] == 8
    t = g.tensor("blk.3.ffn_down.weight")
    assert (t.type, t.shape, t.n_bytes) == ("F16", (352, 256), 352 * 256 * 2)
    assert g.tensor("output_norm.weight").type == "F32"
    assert g.file_size == g.data_offset + sum(-(-x.n_bytes // 32) * 32 for x in g.tensors)
    rows = gguf_tensors(gguf_dir / "untied-8l-F16.gguf")
    assert rows[0] == ("token_embd.weight", "F16", (256, 512), 256 * 512 * 2)
    cmp = compare_gguf(cfg, gguf_dir / "untied-8l-F16.gguf")
    assert cmp.ftype == "F16" and cmp.types_ok and cmp.size_ok()


QUANT_TYPES = ("Q4_K_M", "Q8_0", "IQ4_XS", "Q3_K_M", "Q5_K_M", "Q2_K", "TQ2_0", "TQ1_0")


@pytest.mark.parametrize("name", sorted(MINIATURES))
@pytest.mark.parametrize("ftype", QUANT_TYPES)
def test_plan_matches_llama_quantize(gguf_dir, name, ftype):
    llama_cpp = pytest.importorskip("llama_cpp")
    import ctypes

    out = gguf_dir / f"{name}-{ftype}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(
        str(gguf_dir / f"{name}-F16.gguf").encode(), str(out).encode(), ctypes.byref(params)
    )
    assert rc == 0
    cmp = compare_gguf(MINIATURES[name], out)
    assert cmp.ftype == ftype
    assert cmp.types_ok, (cmp.mismatches, cmp.missing, cmp.extra)
    assert cmp.size_ok(), (cmp.planned_bytes, cmp.real_bytes)
    # the only difference is the metadata the planner expects and this bare file lacks
    assert cmp.plan.tensor_bytes == read_gguf(out).tensor_data_bytes


def test_plan_matches_miniature_exports(family, gguf_exports, miniature):
    """Acceptance: every GGUF the suite exports is planned within 2 % / 64 KiB, tensor by tensor."""
    pytest.importorskip("llama_cpp")
    art = gguf_exports(family)
    source = miniature(family)
    assert art.files
    for f in art.files:
        cmp = compare_gguf(source, art.path / f["path"])
        assert cmp.types_ok, (f["path"], cmp.mismatches, cmp.missing, cmp.extra)
        assert cmp.size_ok(), (f["path"], cmp.planned_bytes, cmp.real_bytes)


def _valid_bytes(gguf_dir) -> bytes:
    return (gguf_dir / "tied-288-F16.gguf").read_bytes()


def _corrupt(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    return p


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "not a GGUF"),
        (b"GGU", "truncated"),
        (b"GGML" + b"\0" * 40, "not a GGUF"),
        (_header(0, 0, version=1), "unsupported GGUF version 1"),
        (_header(1 << 60, 0), "claims"),
        (_header(0, 1 << 60), "claims"),
        (_header(0, 1) + struct.pack("<Q", 1 << 62) + b"x" * 20, "bytes long"),  # absurd key length
        (_header(0, 1) + _gguf_str("k") + struct.pack("<I", 8) + struct.pack("<Q", 1 << 40), "needs"),  # huge string
        (_header(0, 1) + _gguf_str("k") + struct.pack("<IIQ", 9, 4, 1 << 61), "more than the file holds"),  # huge array
        (
            _header(0, 1) + _gguf_str("k") + struct.pack("<IIQ", 9, 8, 1 << 40),
            "more than the file holds",
        ),  # huge string array
        (_header(0, 1) + _gguf_str("k") + struct.pack("<I", 99) + b"\0" * 16, "unknown value type"),
        (_header(0, 1) + _gguf_str("general.alignment") + struct.pack("<II", 4, 3), "power of two"),
        (_header(1, 0) + _gguf_str("t") + struct.pack("<I", 9) + b"\0" * 40, "dimensions"),
        (_header(1, 0) + _gguf_str("t") + struct.pack("<IQIQ", 1, 32, 77, 0) + b"\0" * 32, "unknown ggml type"),
        (_header(1, 0) + _gguf_str("t") + struct.pack("<IQIQ", 1, 30, 8, 0) + b"\0" * 64, "not a multiple"),
        (_header(1, 0) + _gguf_str("t") + struct.pack("<IQIQ", 1, 1 << 20, 0, 0) + b"\0" * 32, "truncated"),
        (_header(2, 0) + (_gguf_str("t") + struct.pack("<IQIQ", 1, 4, 0, 0)) * 2 + b"\0" * 64, "twice"),
    ],
)
def test_reader_rejects_corrupt_headers(tmp_path, data, match):
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=match):
        read_gguf(_corrupt(tmp_path, data))
    assert time.perf_counter() - t0 < 1.0  # no giant allocation or long loop


def test_reader_on_truncated_real_file(tmp_path, gguf_dir):
    data = _valid_bytes(gguf_dir)
    g = read_gguf(gguf_dir / "tied-288-F16.gguf")
    with pytest.raises(CheckpointError, match="truncated"):
        read_gguf(_corrupt(tmp_path, data[: g.data_offset + 100]))  # header intact, data cut
    for cut in (30, g.data_offset // 2, g.data_offset - 40):
        with pytest.raises(CheckpointError):
            read_gguf(_corrupt(tmp_path, data[:cut]))
    with pytest.raises(CheckpointError, match="cannot open"):
        read_gguf(tmp_path / "missing.gguf")


def test_all_errors_are_koquant_errors():
    assert issubclass(CheckpointError, KoquantError) and issubclass(RecipeError, KoquantError)


# --------------------------------------------------------------------------- issue 15: Qwen 2/3, Gemma 2/3, EXAONE 4, Qwen3-MoE

def _small(arch: str, **extra) -> dict:
    """A small config of ``arch`` (its HF class and model_type), head_dim unlike hidden/heads."""
    a = ARCHITECTURES[arch]
    cfg = {**_llama_cfg(hidden=256, intermediate=512, layers=2, heads=4, kv=2, vocab=512),
           "architectures": [a.hf_class], "model_type": a.model_type, "head_dim": 96, "tie_word_embeddings": a.tied_default}
    if a.experts:
        cfg.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128)
    return {**cfg, **extra}


# per decoder layer, what the pinned converter writes (gguf-py constants.py MODEL_TENSORS / TENSOR_NAMES and
# tensor_mapping.py applied to the Hugging Face names) with ggml shapes, for _small(): hidden 256, FFN 512,
# 4 heads / 2 KV heads of 96, experts 8 x 128
_ATTN = {"attn_q.weight": (256, 384), "attn_k.weight": (256, 192), "attn_v.weight": (256, 192),
         "attn_output.weight": (384, 256)}
_MLP = {"ffn_gate.weight": (256, 512), "ffn_up.weight": (256, 512), "ffn_down.weight": (512, 256)}
_QK_NORM = {"attn_q_norm.weight": (96,), "attn_k_norm.weight": (96,)}
_PRE = {"attn_norm.weight": (256,), "ffn_norm.weight": (256,)}
_POST = {"post_attention_norm.weight": (256,), "post_ffw_norm.weight": (256,)}
CONVERTER_LAYER = {
    "qwen2": {**_PRE, **_ATTN, **_MLP, "attn_q.bias": (384,), "attn_k.bias": (192,), "attn_v.bias": (192,)},
    "qwen3": {**_PRE, **_ATTN, **_MLP, **_QK_NORM},
    "gemma2": {**_PRE, **_POST, **_ATTN, **_MLP},
    "gemma3": {**_PRE, **_POST, **_ATTN, **_MLP, **_QK_NORM},
    "exaone4": {**_POST, **_ATTN, **_MLP, **_QK_NORM},  # post-norms only
    "qwen3_moe": {**_PRE, **_ATTN, **_QK_NORM, "ffn_gate_inp.weight": (256, 8), "ffn_gate_exps.weight": (256, 128, 8),
                  "ffn_up_exps.weight": (256, 128, 8), "ffn_down_exps.weight": (128, 256, 8)},
}
# outside the layers: token_embd, output_norm, and output.weight when the head is untied
CONVERTER_HEAD = {"qwen2": True, "qwen3": True, "gemma2": False, "gemma3": False, "exaone4": True, "qwen3_moe": True}


@pytest.mark.parametrize("arch", sorted(CONVERTER_LAYER))
def test_new_architectures_tensor_list(arch):
    spec = spec_from_config(_small(arch))
    got = {t.name: t.shape for t in plan_gguf(spec, "F16").tensors}
    want = {"token_embd.weight": (256, 512), "output_norm.weight": (256,)}
    if CONVERTER_HEAD[arch]:
        want["output.weight"] = (256, 512)
    for i in range(2):
        want.update({f"blk.{i}.{k}": v for k, v in CONVERTER_LAYER[arch].items()})
    assert got == want


def _gguf_py():
    """The vendored gguf-py of the pinned llama.cpp (install.sh unpacks it; fetched once otherwise)."""
    from koquant.exporters.gguf.llamacpp import llama_cpp_source

    src = llama_cpp_source() / "gguf-py"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    import gguf

    return gguf


@pytest.mark.parametrize("arch", sorted(CONVERTER_LAYER))
def test_registry_names_are_the_converters(arch):
    """Each Hugging Face tensor maps (gguf-py's TensorNameMap, as convert_hf_to_gguf does) to the GGUF name the
    plan gives it; the merged expert tensors (``mlp.experts.<proj>.weight``) too."""
    gguf = _gguf_py()
    a = ARCHITECTURES[arch]
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == a.gguf_arch)
    tmap = gguf.get_tensor_name_map(model_arch, 2)
    spec = spec_from_config(_small(arch))
    for w in [w for w in weights_of(spec) if w.layer is not None]:
        hf = w.hf_module if w.hf_module else None
        if w.role in ("linear", "router"):
            hf = w.hf_module.replace(".{e}", "") if w.is_expert else w.hf_module
            suffix = ".weight"
        elif w.role == "bias":
            hf = w.gguf_name  # checked through its weight
            continue
        else:  # a norm: find its HF name in the registry
            norm = next(n for n in a.norms if w.gguf_name == f"blk.{w.layer}.{n.gguf}.weight")
            hf, suffix = f"{a.layer(w.layer)}.{norm.hf}", ".weight"
        assert tmap.get_name(hf + suffix, try_suffixes=(".weight",)) == w.gguf_name, (hf, w.gguf_name)
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[model_arch]}
    for w in weights_of(spec):
        stem = w.gguf_name.rsplit(".", 1)[0]
        assert stem.replace(f"blk.{w.layer}.", "blk.{bid}.") in allowed, w.gguf_name


def weights_of(spec):
    from koquant.source.architectures import weights

    return weights(spec)


def test_exaone4_llama3_rope_writes_rope_freqs():
    rope = {"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    types = plan_gguf(spec_from_config(_small("exaone4", rope_scaling=rope)), "Q4_K_M").types()
    assert types["rope_freqs.weight"] == "F32"
    # transformers 5 nests it under the attention type (conversion/exaone.py reads "full_attention" first)
    nested = _small("exaone4", rope_parameters={"full_attention": {**rope, "rope_theta": 1e6},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    assert "rope_freqs.weight" in plan_gguf(spec_from_config(nested), "F16").types()


def test_gemma3_stores_a_head_the_checkpoint_has():
    spec = spec_from_config(_small("gemma3"))
    assert "output.weight" not in plan_gguf(spec, "Q4_K_M").types()
    assert plan_gguf(spec, "Q4_K_M").types()["token_embd.weight"] == "Q6_K"  # tied: quantized as the output
    # Gemma3Model (unlike Gemma 2) does not skip lm_head.weight, and llama.cpp loads an optional output
    assert "output.weight" in plan_gguf(spec.with_(lm_head_in_checkpoint=True), "Q4_K_M").types()
    g2 = spec_from_config(_small("gemma2")).with_(lm_head_in_checkpoint=True)
    assert "output.weight" not in plan_gguf(g2, "Q4_K_M").types()


# --------------------------------------------------------------------------- mixtures of experts

def test_moe_router_stays_f32_and_experts_are_3d():
    spec = spec_from_config(_small("qwen3_moe"))
    for ft in ("F16", "Q8_0", "Q4_K_M", "IQ2_XXS"):
        types = plan_gguf(spec, ft).types()
        assert types["blk.0.ffn_gate_inp.weight"] == "F32", ft  # converter F32, never quantized
    p = plan_gguf(spec, "Q4_K_M")
    t = {x.name: x for x in p.tensors}
    # Q4_K rows of 256 values are 144 bytes: 128 rows x 8 experts
    assert t["blk.1.ffn_up_exps.weight"].n_bytes == 128 * 8 * 144
    assert t["blk.0.ffn_gate_inp.weight"].n_bytes == 256 * 8 * 4
    # ffn_down_exps rows are the expert width (128): not a multiple of 256, so Q4_K/Q6_K fall back
    assert t["blk.1.ffn_down_exps.weight"].type == "Q8_0" and t["blk.1.ffn_down_exps.weight"].wanted == "Q6_K"
    assert t["blk.0.ffn_down_exps.weight"].type == "Q5_0" and t["blk.0.ffn_down_exps.weight"].wanted == "Q4_K"


def test_moe_mix_rules_with_8_experts():
    spec = spec_from_config(_small("qwen3_moe", head_dim=64, moe_intermediate_size=256, num_hidden_layers=8))
    types = plan_gguf(spec, "Q4_K_M").types()
    for i in range(8):  # llama-quant.cpp: n_expert == 8 bumps attn_v and attn_k to Q8_0, attn_output to Q5_K
        assert types[f"blk.{i}.attn_v.weight"] == "Q8_0"
        assert types[f"blk.{i}.attn_k.weight"] == "Q8_0"
        assert types[f"blk.{i}.attn_output.weight"] == "Q5_K"
        assert types[f"blk.{i}.attn_q.weight"] == "Q4_K"
    # ffn_down_exps follows use_more_bits of its own block number
    assert [i for i in range(8) if types[f"blk.{i}.ffn_down_exps.weight"] == "Q6_K"] == [0, 3, 6, 7]
    iq = plan_gguf(spec, "IQ2_XXS").types()
    assert iq["blk.3.attn_v.weight"] == "Q4_K" and iq["blk.3.attn_k.weight"] == "Q4_K"
    assert iq["blk.3.attn_output.weight"] == "Q5_K"
    # 128 experts: none of the == 8 rules, the >= 4 one for the very low-bit attn_v
    big = spec_from_config(_small("qwen3_moe", head_dim=64, num_experts=128, moe_intermediate_size=256))
    t = plan_gguf(big, "Q4_K_M").types()
    assert t["blk.0.attn_k.weight"] == "Q4_K" and t["blk.0.attn_output.weight"] == "Q4_K"
    assert (t["blk.0.attn_v.weight"], t["blk.1.attn_v.weight"]) == ("Q4_K", "Q6_K")  # use_more_bits(i, 2), as dense
    assert plan_gguf(big, "IQ2_XXS").types()["blk.1.attn_v.weight"] == "Q4_K"  # gqa 2 < 4, but 128 experts


def test_moe_total_and_active_parameters():
    s = preset_spec("qwen3-30b-a3b")
    assert s.n_params / 1e9 == pytest.approx(30.53, abs=0.01)  # "30.5B in total, 3.3B activated"
    assert s.n_active_params / 1e9 == pytest.approx(3.35, abs=0.01)
    experts = 48 * 3 * 2048 * 768
    assert s.n_params - s.n_active_params == experts * 128 - experts * 8
    p = plan("qwen3-30b-a3b", ctx=(4096,), gguf_types=["Q4_K_M"])
    q4 = p.export("Q4_K_M")
    routed = p.export("Q4_K_M").detail.routed_bytes
    assert q4.active_bytes == q4.weight_bytes - routed + round(routed * 8 / 128) < q4.weight_bytes / 5
    assert p.ram("Q4_K_M", 4096).weight_bytes == q4.weight_bytes  # all experts resident
    d = p.to_dict()
    assert d["model"]["n_active_params"] == s.n_active_params and d["model"]["n_params"] == s.n_params
    row = next(e for e in d["exports"] if e["key"] == "gguf:Q4_K_M")
    assert row["active_weight_bytes"] == q4.active_bytes
    g = next(e for e in d["exports"] if e["key"] == "gptq:w4g128")
    assert g["active_weight_bytes"] < g["weight_bytes"] / 4
    assert any("8 of 128 experts" in a for a in d["assumptions"])
    dense = plan("qwen3-8b", ctx=(4096,), gguf_types=["Q4_K_M"])
    assert dense.export("Q4_K_M").active_bytes == dense.export("Q4_K_M").weight_bytes
    assert dense.model.n_active_params == dense.model.n_params


def test_moe_gptq_and_onnx_count_every_expert():
    spec = spec_from_config(_small("qwen3_moe"))
    g = plan_gptq(spec, bits=4, group_size=128)
    per_expert = 3 * 256 * 128 // 2  # gate, up (256 -> 128) and down (128 -> 256) at 4 bits
    attn = (256 * 384 + 2 * 256 * 192 + 384 * 256) // 2
    assert g.parts["qweight"] == 2 * (attn + 8 * per_expert)
    assert g.routed_bytes > 0 and any("router" in n for n in g.notes)
    # the router stays 16-bit with embeddings, head and norms
    norms = 2 * (2 * 256 + 2 * 96) + 256
    assert g.parts["16-bit"] == (2 * 512 * 256 + 2 * 256 * 8 + norms) * 2
    o = plan_onnx(spec, "int4")
    assert o.parts["int4 weights"] == 2 * (attn + 8 * per_expert) + 512 * 256 // 2  # + lm_head


def test_onnx_refusals_are_marked():
    for pid in ("exaone-4.0-32b", "qwen3-30b-a3b"):
        p = plan(pid, ctx=(2048,), gguf_types=["Q4_K_M"])
        for e in p.exports:
            assert e.available == (e.format != "onnx"), e.key
            if e.format == "onnx":
                assert any("model builder has no" in n for n in e.notes)
    assert all(e.available for e in plan("gemma-3-4b", ctx=(2048,), gguf_types=["Q4_K_M"]).exports)


# --------------------------------------------------------------------------- hybrid attention KV cache

def test_hybrid_kv_cache_per_runtime():
    s = preset_spec("exaone-4.0-32b")
    assert sum(s.sliding_layers) == 48 and s.sliding_layers[:4] == (True, True, True, False)
    row = 2 * 8 * 128 * 2  # K and V, 8 KV heads x 128, f16
    p = plan("exaone-4.0-32b", ctx=(2048, 32768), gguf_types=["Q4_K_M"])
    # transformers: sliding layers keep the 4096-token window, full layers the context
    assert p.ram("source:bf16", 32768).kv_bytes == (16 * 32768 + 48 * 4096) * row
    assert p.ram("source:bf16", 32768).kv_window == 4096 and p.ram("source:bf16", 32768).kv_sliding_layers == 48
    assert p.ram("gptq:w4g128", 2048).kv_bytes == 64 * 2048 * row  # the window is longer than the context
    # llama.cpp as koquant runs it (swa_full): the whole context everywhere ...
    r = p.ram("gguf:Q4_K_M", 32768)
    assert r.kv_bytes == 64 * 32768 * row and r.kv_window is None
    # ... and with --swa-full off: min(ctx, window + n_ubatch) padded to 256 on sliding layers
    assert r.kv_bytes_swa_off == (16 * 32768 + 48 * 4608) * row
    assert p.ram("gguf:Q4_K_M", 2048).kv_bytes_swa_off == 64 * 2048 * row
    assert any("swa_full" in a for a in p.all_assumptions())


def test_llama_cpp_sliding_patterns():
    from koquant.plan.kv import llama_cpp_sliding_layers

    g3 = preset_spec("gemma-3-4b")
    assert sum(g3.sliding_layers) == 29 and g3.sliding_layers[5] is False
    assert llama_cpp_sliding_layers(g3) == g3.sliding_layers  # 5:1, as llama.cpp's gemma3 pattern
    p = plan("gemma-3-4b", ctx=(8192,), gguf_types=["Q4_K_M"])
    row = 2 * 4 * 256 * 2
    assert p.ram("Q4_K_M", 8192).kv_bytes_swa_off == (5 * 8192 + 29 * 1536) * row
    assert p.ram("source:bf16", 8192).kv_bytes == (5 * 8192 + 29 * 1024) * 4 * 256 * 2 * 2
    # Gemma 2 without layer_types: transformers' default, sliding on even layers (llama.cpp's pattern 2)
    g2 = spec_from_config(_small("gemma2", num_hidden_layers=4, sliding_window=128))
    assert g2.sliding_layers == (True, False, True, False) == llama_cpp_sliding_layers(g2)
    # Gemma 3 without layer_types: every sliding_window_pattern-th layer is full
    g3s = spec_from_config(_small("gemma3", num_hidden_layers=6, sliding_window=128))
    assert g3s.sliding_layers == (True,) * 5 + (False,)
    # EXAONE 4 at another depth than 64: llama.cpp runs no window at all; transformers does
    e = spec_from_config(_small("exaone4", num_hidden_layers=4, sliding_window=128,
                                layer_types=["sliding_attention"] * 3 + ["full_attention"]))
    assert sum(e.sliding_layers) == 3 and llama_cpp_sliding_layers(e) is None
    assert plan(e, ctx=(1024,), gguf_types=["Q4_K_M"]).ram("Q4_K_M", 1024).kv_bytes_swa_off is None
    assert spec_from_config(_small("exaone4", num_hidden_layers=4, sliding_window=128,
                                   sliding_window_pattern="LLLG")).sliding_layers == (True, True, True, False)
    # the 1.2B: every layer full
    assert not any(preset_spec("exaone-4.0-1.2b").sliding_layers)
    # Mistral: every layer windowed in transformers, none in llama.cpp
    m = preset_spec("synatra-7b")
    assert all(m.sliding_layers) and llama_cpp_sliding_layers(m) is None


# --------------------------------------------------------------------------- presets of current Korean models

NEW_PRESETS = {
    # id: (arch, layers, hidden, heads, kv, head_dim, vocab, tied, billions of parameters)
    "ax-4.0-light": ("qwen2", 28, 3584, 28, 4, 128, 102400, False, 7.26),
    "exaone-4.0-1.2b": ("exaone4", 30, 2048, 32, 8, 64, 102400, True, 1.28),
    "exaone-4.0-32b": ("exaone4", 64, 5120, 40, 8, 128, 102400, False, 32.00),
    "gemma-3-4b": ("gemma3", 34, 2560, 8, 4, 256, 262208, True, 3.88),
    "qwen3-8b": ("qwen3", 36, 4096, 32, 8, 128, 151936, False, 8.19),
    "qwen3-30b-a3b": ("qwen3_moe", 48, 2048, 32, 4, 128, 151936, False, 30.53),
}


@pytest.mark.parametrize("pid", sorted(NEW_PRESETS))
def test_new_presets(pid):
    s = preset_spec(pid)
    arch, layers, hidden, heads, kv, hd, vocab, tied, billions = NEW_PRESETS[pid]
    assert (s.arch, s.n_layers, s.hidden, s.n_heads, s.n_kv_heads, s.head_dim, s.vocab, s.tied) == (
        arch, layers, hidden, heads, kv, hd, vocab, tied)
    assert s.n_params / 1e9 == pytest.approx(billions, abs=0.01)
    assert pid not in SEED_IDS
    q4 = plan(pid, ctx=(4096,), gguf_types=["Q4_K_M"]).export("Q4_K_M")
    assert 4.5 < q4.bits_per_weight < 5.3


def test_exaone_parameters_without_embeddings_match_the_model_cards():
    # model cards: 1.07B (1.2B) and 30.95B (32B) parameters without embeddings
    for pid, billions in (("exaone-4.0-1.2b", 1.07), ("exaone-4.0-32b", 30.95)):
        s = preset_spec(pid)
        embeddings = s.vocab * s.hidden * (1 if s.tied else 2)
        assert (s.n_params - embeddings) / 1e9 == pytest.approx(billions, abs=0.005)


def test_cli_lists_presets():
    rc, out = _run_cli(["--list"])
    assert rc == 0
    for pid in [*PRESETS]:
        assert pid in out
    assert "3.35 B active" in out
    rc, out = _run_cli(["--list", "--json"])
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows["qwen3-30b-a3b"]["hf_class"] == "Qwen3MoeForCausalLM" and set(NEW_PRESETS) <= set(rows)


def test_cli_table_for_moe_and_hybrid():
    rc, out = _run_cli(["--preset", "qwen3-30b-a3b", "--types", "Q4_K_M", "--ctx", "4096"])
    assert rc == 0 and "3.35 B active" in out and "read" in out
    rc, out = _run_cli(["--preset", "exaone-4.0-32b", "--types", "Q4_K_M", "--ctx", "32k"])
    assert rc == 0 and "48 of 64 layers" in out and "swa-full off" in out


# --------------------------------------------------------------------------- published GGUF sizes of the new classes

# File sizes as the Hugging Face file listing shows them (decimal GB, rounded to 10 MB), of files made with
# llama-quantize's default mixes:
PUBLISHED_GGUF_GB = {
    ("qwen3-8b", "Q4_K_M"): 5.03,  # Qwen/Qwen3-8B-GGUF, Qwen3-8B-Q4_K_M.gguf
    ("qwen3-8b", "Q8_0"): 8.71,  # Qwen/Qwen3-8B-GGUF, Qwen3-8B-Q8_0.gguf
    ("qwen3-30b-a3b", "Q4_K_M"): 18.6,  # Qwen/Qwen3-30B-A3B-GGUF, Qwen3-30B-A3B-Q4_K_M.gguf
    ("qwen3-30b-a3b", "Q8_0"): 32.5,  # Qwen/Qwen3-30B-A3B-GGUF, Qwen3-30B-A3B-Q8_0.gguf
    ("gemma-3-4b", "Q4_K_M"): 2.49,  # ggml-org/gemma-3-4b-it-GGUF, gemma-3-4b-it-Q4_K_M.gguf (text model only)
}


@pytest.mark.parametrize("pid,ftype", sorted(PUBLISHED_GGUF_GB))
def test_new_classes_published_gguf_sizes(pid, ftype):
    gb = PUBLISHED_GGUF_GB[(pid, ftype)]
    planned = plan_gguf(preset_spec(pid), ftype).file_bytes / 1e9
    assert abs(planned - gb) <= 0.02 * gb, (planned, gb)


def _write_moe_f16(path: Path, cfg: dict) -> None:
    """A random Qwen3-MoE GGUF in F16 written with the vendored gguf-py the way the converter lays it out
    (norms and the router F32, experts as 3-D tensors)."""
    gguf = _gguf_py()
    from koquant.source.architectures import weights

    spec = spec_from_config(cfg)
    w = gguf.GGUFWriter(str(path), "qwen3moe")
    w.add_block_count(spec.n_layers)
    w.add_context_length(2048)
    w.add_embedding_length(spec.hidden)
    w.add_feed_forward_length(spec.intermediate)
    w.add_head_count(spec.n_heads)
    w.add_head_count_kv(spec.n_kv_heads)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(spec.n_experts)
    w.add_expert_used_count(spec.n_experts_used)
    w.add_expert_feed_forward_length(spec.expert_intermediate)
    w.add_file_type(1)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}".encode() for i in range(spec.vocab)])
    w.add_token_types([1] * spec.vocab)
    w.add_token_merges([])
    rng = np.random.default_rng(0)
    for t in weights(spec):
        shape = t.shape[::-1]
        data = rng.standard_normal(shape) * 0.02
        f32 = len(shape) == 1 or t.role == "router"
        w.add_tensor(t.gguf_name, data.astype(np.float32 if f32 else np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("n_experts,ftypes", [(8, ("Q4_K_M", "Q3_K_M", "Q2_K", "IQ3_M")), (16, ("Q4_K_M", "Q3_K_M"))])
def test_moe_plan_matches_llama_quantize(tmp_path, n_experts, ftypes):
    """The pinned llama-quantize on a 3-D-expert GGUF gives every tensor the type the plan names."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import ctypes

    cfg = _small("qwen3_moe", head_dim=64, num_hidden_layers=8, num_experts=n_experts, moe_intermediate_size=256)
    src = tmp_path / "moe-F16.gguf"
    _write_moe_f16(src, cfg)
    for ftype in ftypes:  # the 8-expert rules (attn_v/attn_k Q8_0, attn_output Q5_K, IQ3_M ffn_down) and none
        out = tmp_path / f"moe-{ftype}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
        params.nthread = 1
        assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) == 0
        cmp = compare_gguf(cfg, out)
        assert cmp.types_ok, (ftype, cmp.mismatches, cmp.missing, cmp.extra)
        assert cmp.plan.tensor_bytes == read_gguf(out).tensor_data_bytes
