"""The reference costs a few layers of memory, not the whole model, and gives the same numbers.

``LayerwiseModel`` (``koquant.exporters.layerwise``) computes the reference logits and the GGUF importance
matrix one decoder layer at a time, straight from safetensors. Its results must be bit-identical
to the whole float32 model's, for every family, and its peak memory must not grow with depth.
``benchmarks/export_memory_1b.py`` shows the same on whole exports of a 1.1 B model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from koquant.testing.miniatures import build_miniature


def _chunks(vocab: int, n: int = 2, length: int = 160) -> list[list[int]]:
    # longer than the miniatures' sliding windows (128), so each attention type's mask really differs
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, length).tolist() for _ in range(n)]


def _bit_identical(folder) -> "LayerwiseModel":
    import torch
    from transformers import AutoModelForCausalLM

    from koquant.exporters.layerwise import LayerwiseModel

    lw = LayerwiseModel(folder)
    chunks = _chunks(lw.config.vocab_size)
    got = lw.logits(chunks)
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        want = [full(input_ids=torch.tensor([c]), use_cache=False).logits[0].float().numpy() for c in chunks]
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    return lw


def test_each_layer_gets_the_mask_of_its_attention_type(tmp_path):
    """EXAONE 4's hybrid attention (the 32B's sliding/full mix, at miniature size): each layer is fed its own
    mask (the sliding layer's differs from the full layer's), and the result is bit-identical."""
    import shutil

    import torch

    from koquant.exporters.layerwise import capture_layer_inputs

    folder = tmp_path / "exaone4-hybrid"
    shutil.copytree(build_miniature("exaone4-mini"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    (folder / "config.json").write_text(json.dumps(cfg))
    lw = _bit_identical(folder)
    lw._load(lw.arch.embed)
    (hidden, kwargs), = capture_layer_inputs(lw.model, lw.model.get_submodule(lw.arch.layers), _chunks(1000, 1))
    sliding, full = (k["attention_mask"] for k in kwargs)
    assert sliding is not None  # the window: an explicit mask (full attention may be plain causal: None)
    assert full is None or not torch.equal(sliding, full)


def test_layerwise_logits_are_bit_identical(family):
    lw = _bit_identical(build_miniature(family))  # the session's trained miniatures (built for the exports anyway)
    assert all(p.is_meta for p in lw.model.parameters()), "weights stayed in memory after the run"


def test_layerwise_imatrix_is_bit_identical():
    import torch
    from transformers import AutoModelForCausalLM

    from koquant.quant_recipes.calibration import Chunks
    from koquant.source.checkpoint import Checkpoint
    from koquant.exporters.gguf.imatrix import compute_imatrix
    from koquant.exporters.layerwise import LayerwiseModel

    folder = build_miniature("komt-mini")
    arch = Checkpoint.open(folder).architecture
    lw = LayerwiseModel(folder)
    ids = _chunks(lw.config.vocab_size, 3)
    chunks = Chunks(tuple(map(tuple, ids)), 48, 3 * 48)
    a = compute_imatrix(lw, arch, chunks)
    b = compute_imatrix(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), arch, chunks)
    assert a.names() == b.names() and a.n_chunks == b.n_chunks == 3
    assert all(np.array_equal(a.sum2[n], b.sum2[n]) and np.array_equal(a.counts[n], b.counts[n]) for n in a.names())


def test_layerwise_int4_gptq_is_bit_identical():
    """ONNX int4 GPTQ on the layerwise reference gives the codes and scales the whole model gives."""
    import torch
    from transformers import AutoModelForCausalLM

    from koquant.exporters.layerwise import LayerwiseModel
    from koquant.exporters.onnx.int4_gptq import quantize_decoder
    from koquant.quant_recipes.calibration import Chunks
    from koquant.source.checkpoint import Checkpoint

    folder = build_miniature("komt-mini")
    arch = Checkpoint.open(folder).architecture
    lw = LayerwiseModel(folder)
    chunks = Chunks(tuple(map(tuple, _chunks(lw.config.vocab_size, 2, 64))), 64, 128)
    a = quantize_decoder(lw, chunks, 32, arch=arch)
    b = quantize_decoder(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), chunks, 32,
                         arch=arch)
    assert a.keys() == b.keys() and len(a) == 2 * len(arch.onnx.linears)
    assert all(torch.equal(a[k].codes, b[k].codes) and torch.equal(a[k].scales, b[k].scales) for k in a)
    assert all(p.is_meta for p in lw.model.parameters()), "weights stayed in memory after GPTQ"


def test_one_walk_gives_every_pass_what_it_gives_alone(monkeypatch):
    """The shared calibration of a multi-format export: the importance matrix and int4 GPTQ from one walk,
    each decoder layer loaded from the checkpoint once, equal to the whole model's results of each alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from koquant.exporters.gguf.imatrix import ImatrixPass, compute_imatrix
    from koquant.exporters.layerwise import LayerwiseModel
    from koquant.exporters.onnx.int4_gptq import GPTQPass, quantize_decoder
    from koquant.quant_recipes.calibration import Chunks
    from koquant.source.checkpoint import Checkpoint

    folder = build_miniature("komt-mini")
    arch = Checkpoint.open(folder).architecture
    lw = LayerwiseModel(folder)
    chunks = Chunks(tuple(map(tuple, _chunks(lw.config.vocab_size, 2, 64))), 64, 128)
    loads = []
    load = lw._load
    monkeypatch.setattr(lw, "_load", lambda prefix: (loads.append(prefix), load(prefix))[1])
    layers = []
    imatrix, weights = lw.walk(chunks.ids, [ImatrixPass(arch), GPTQPass(32)], on_layer=lambda: layers.append(1))
    assert len(layers) == lw.n_layers and sorted(loads) == sorted({*loads}), f"a layer was loaded twice: {loads}"
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    alone_imatrix = compute_imatrix(full, arch, chunks)
    assert imatrix.names() == alone_imatrix.names() and imatrix.n_chunks == 2
    assert all(np.array_equal(imatrix.sum2[n], alone_imatrix.sum2[n])
               and np.array_equal(imatrix.counts[n], alone_imatrix.counts[n]) for n in imatrix.names())
    alone = quantize_decoder(full, chunks, 32, arch=arch)
    assert weights.keys() == alone.keys()
    assert all(torch.equal(weights[k].codes, alone[k].codes) and torch.equal(weights[k].scales, alone[k].scales)
               for k in weights)
    assert all(p.is_meta for p in lw.model.parameters())


def test_greedy_agreement_is_greedy_decoding():
    """The teacher-forced greedy check equals the source's own greedy decoding, and finds the first difference."""
    import torch
    from transformers import AutoModelForCausalLM

    from koquant.exporters.layerwise import LayerwiseModel
    from koquant.exporters.onnx.parity import greedy_agreement

    folder = build_miniature("komt-mini")
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = _chunks(full.config.vocab_size, 1, 24)[0]
    with torch.inference_mode():
        out = full.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(prompt):].tolist()
    lw = LayerwiseModel(folder)
    assert greedy_agreement(lw, prompt, out) == 16
    wrong = out[:5] + [(out[5] + 1) % full.config.vocab_size] + out[6:]
    assert greedy_agreement(lw, prompt, wrong) == 5
    assert greedy_agreement(lw, prompt, []) == 0


# VmHWM, the peak of this process's own memory (ru_maxrss would start at the RSS of the pytest process
# it was forked from, and hide growth below that)
_PEAK = (
    "import json, sys\n"
    "from koquant.exporters.layerwise import LayerwiseModel\n"
    "m = LayerwiseModel(sys.argv[1])\n"
    "m.logits(json.loads(sys.argv[2]))\n"
    "print(next(int(ln.split()[1]) for ln in open('/proc/self/status') if ln.startswith('VmHWM:')))\n"
)


def _synthetic(dest: Path, layers: int, hidden: int = 1024, inter: int = 2816) -> int:
    """A random bf16 Llama, one shard per layer (never more than one layer in memory here either)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    src = build_miniature("synatra-mini", trained=False)
    dest.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dest / name).write_bytes((src / name).read_bytes())
    vocab = 4096
    LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=8, num_key_value_heads=2, architectures=["LlamaForCausalLM"]).save_pretrained(dest)
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    wm = {}
    top = {"model.embed_tokens.weight": r(vocab, hidden), "lm_head.weight": r(vocab, hidden),
           "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    save_file(top, dest / "top.safetensors")
    wm.update(dict.fromkeys(top, "top.safetensors"))
    kv = hidden // 8 * 2
    for i in range(layers):
        p = f"model.layers.{i}."
        t = {p + "self_attn.q_proj.weight": r(hidden, hidden), p + "self_attn.k_proj.weight": r(kv, hidden),
             p + "self_attn.v_proj.weight": r(kv, hidden), p + "self_attn.o_proj.weight": r(hidden, hidden),
             p + "mlp.gate_proj.weight": r(inter, hidden), p + "mlp.up_proj.weight": r(inter, hidden),
             p + "mlp.down_proj.weight": r(hidden, inter), p + "input_layernorm.weight": torch.ones(hidden),
             p + "post_attention_layernorm.weight": torch.ones(hidden)}
        save_file(t, dest / f"layer{i}.safetensors")
        wm.update(dict.fromkeys(t, f"layer{i}.safetensors"))
    (dest / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    return (2 * hidden * hidden + 2 * kv * hidden + 3 * inter * hidden) * 4  # float32 bytes of one layer


def test_reference_memory_does_not_grow_with_depth(tmp_path):
    """2 vs 8 decoder layers of 45 MiB (float32) each: the whole model would need 270 MiB more."""
    peaks, layer_bytes = {}, 0
    for layers in (2, 8):
        layer_bytes = _synthetic(tmp_path / f"m{layers}", layers)
        out = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / f"m{layers}"), json.dumps(_chunks(4096, 2, 64))],
                             capture_output=True, text=True, check=True).stdout
        peaks[layers] = int(out.split()[-1]) * 1024
    growth = peaks[8] - peaks[2]
    assert growth < 2 * layer_bytes, f"peak RSS grew {growth / 2**20:.0f} MiB for 6 more layers " \
                                     f"of {layer_bytes / 2**20:.0f} MiB each"
