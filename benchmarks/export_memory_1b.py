"""Peak memory of `koquant export` (GGUF, GPTQ and ONNX) on a synthetic random Llama of 1.1 B parameters.

Writes a TinyLlama-shaped checkpoint (22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads, the
32000-token Mistral SentencePiece vocabulary of synatra-mini) as bf16 safetensors, one shard per
layer so that building it never holds more than one layer, then runs the real command line,
``koquant export MODEL --fmt gguf|gptq|onnx``, in a wrapper process that reports:

- ``max RSS``: the largest peak RSS of any process of the export (``getrusage(RUSAGE_CHILDREN)``
  in a small wrapper process: koquant itself, llama.cpp's converter, the GPTQModel workers; a
  child's figure includes the RSS of its parent when it was forked, so it never exceeds the
  largest real peak);
- ``tree RSS``: the largest sum of the RSS of all processes of the export alive at one time
  (sampled from /proc every 0.2 s);
- each process's own peak (``VmHWM``) by role.

For scale it also loads the checkpoint the way the reference used to be computed
(``AutoModelForCausalLM.from_pretrained(..., dtype=float32)``) and reports that peak.

    nice .venv/bin/python benchmarks/export_memory_1b.py [--formats gguf,gptq,onnx] [--keep DIR] [--json]

Disk: ~2.2 GB for the checkpoint plus what the exports write (a bf16 base GGUF of ~2.2 GB, GPTQModel's
offload folder); ``--tmp`` chooses where (default: the system temp folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs the command given in argv as a child, samples /proc for the whole tree, and prints one JSON line.
_WRAPPER = r"""
import json, os, resource, subprocess, sys, threading, time

def children_of():
    kids = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(pid))
    return kids

def status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            out["cmd"] = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    return out

def role(cmd):
    # koquant.procs children carry "module:function" on their command line
    for key, name in (("convert_hf_to_gguf", "llama.cpp converter"), ("gptq.worker:quantize", "GPTQModel quantize"),
                      ("gptq.worker:logits", "GPTQ gate (transformers load)"),
                      ("llamacpp:heldout_logits", "llama.cpp gate"), ("genai:gate_job", "onnxruntime-genai gate"),
                      ("onnxruntime_genai.models.builder", "onnxruntime-genai builder"), ("koquant", "koquant export")):
        if key in cmd:
            return name
    return cmd.split(" ")[0].rsplit("/", 1)[-1] or "?"

proc = subprocess.Popen(sys.argv[1:])
peaks, tree_peak, done = {}, 0, False

def sample():
    global tree_peak
    while not done:
        kids, todo, tree = children_of(), [proc.pid], 0
        while todo:
            pid = todo.pop()
            st = status(pid)
            if "VmRSS" in st:
                tree += st["VmRSS"]
                r = role(st.get("cmd", ""))
                peaks[r] = max(peaks.get(r, 0), st.get("VmHWM", 0))
            todo.extend(kids.get(pid, []))
        tree_peak = max(tree_peak, tree)
        time.sleep(0.2)

t = threading.Thread(target=sample, daemon=True)
t.start()
start = time.monotonic()
rc = proc.wait()
done = True
t.join()
print("MEASURED " + json.dumps({"rc": rc, "seconds": round(time.monotonic() - start, 1),
      "max_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "tree_rss_kib": tree_peak,
      "by_role_kib": peaks}), flush=True)
"""

# The pieces of the GGUF export's own process, each alone: what dominates its peak.
_PIECES = r"""
import json, sys
piece, model, gguf, calib, n_eval = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def peak():  # VmHWM, not ru_maxrss: the latter keeps the RSS of the parent this process was forked from
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
import torch, transformers, numpy as np  # noqa: F401
from koquant.exporters.gguf import llamacpp
llamacpp.import_llama_cpp()
from koquant.quant_recipes.calibration import chunk_tokens, korean_bills, korean_constitution
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(model)
ids = tok(korean_constitution().plain_text())["input_ids"]
evals = chunk_tokens(ids, 256, n_eval, tok.bos_token_id).ids
if piece == "reference":
    from koquant.source.checkpoint import Checkpoint
    from koquant.exporters.gguf.imatrix import compute_imatrix
    from koquant.exporters.layerwise import LayerwiseModel
    cal = chunk_tokens(tok(korean_bills().plain_text())["input_ids"], 256, calib, tok.bos_token_id)
    lw = LayerwiseModel(model)
    compute_imatrix(lw, Checkpoint.open(model).architecture, cal)
    lw.logits(evals)
elif piece == "gate":
    llama_cpp = llamacpp.import_llama_cpp()
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=256, n_batch=256, n_ubatch=256, logits_all=True, verbose=False)
    for c in evals:
        llm.reset(); llm.eval(list(c))
print("PEAK_KIB", peak())
"""

_FULL_LOAD = (
    "import sys, torch\n"
    "from transformers import AutoModelForCausalLM\n"
    "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)\n"
    "print('PEAK_KIB', next(int(ln.split()[1]) for ln in open('/proc/self/status') if ln.startswith('VmHWM:')))\n"
)


def build(dest: Path, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, seed: int = 0) -> int:
    """The synthetic checkpoint: random bf16 weights, one safetensors shard per layer.

    std 0.02, except the embedding (0.5), the layers' output projections (o_proj, down_proj: 0.0005,
    small updates to the residual stream) and the head (0.1). The residual stream then carries the
    token, and next-token distributions are peaked like a trained model's, so the exports pass
    koquant's validation gate as real ones do (a plain random deep network is chaotic: any rounding
    changes its top token, and every quantized export would be refused).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from koquant.testing.miniatures import build_miniature

    src = build_miniature("synatra-mini", trained=False)  # the Mistral v0.1 SentencePiece tokenizer, 32000 tokens
    dest.mkdir(parents=True)
    for p in src.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copyfile(p, dest / p.name)
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    head_dim = hidden // heads
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                         rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                         torch_dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(dest)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.02):
        return (torch.randn(*shape, generator=gen) * std).to(torch.bfloat16)

    shards: dict[str, dict] = {"model-embed.safetensors": {"model.embed_tokens.weight": rand(vocab, hidden, std=0.5)}}
    shards["model-head.safetensors"] = {"lm_head.weight": rand(vocab, hidden, std=0.1),
                                        "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    weight_map, params = {}, 0
    for name in ("model-embed.safetensors", "model-head.safetensors"):
        save_file(shards[name], dest / name, metadata={"format": "pt"})
        for k, v in shards[name].items():
            weight_map[k], params = name, params + v.numel()
    del shards
    for i in range(layers):
        p = f"model.layers.{i}."
        layer = {p + "self_attn.q_proj.weight": rand(heads * head_dim, hidden),
                 p + "self_attn.k_proj.weight": rand(kv_heads * head_dim, hidden),
                 p + "self_attn.v_proj.weight": rand(kv_heads * head_dim, hidden),
                 p + "self_attn.o_proj.weight": rand(hidden, heads * head_dim, std=0.0005),
                 p + "mlp.gate_proj.weight": rand(intermediate, hidden),
                 p + "mlp.up_proj.weight": rand(intermediate, hidden),
                 p + "mlp.down_proj.weight": rand(hidden, intermediate, std=0.0005),
                 p + "input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                 p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
        name = f"model-layer-{i:03d}.safetensors"
        save_file(layer, dest / name, metadata={"format": "pt"})
        for k, v in layer.items():
            weight_map[k], params = name, params + v.numel()
    (dest / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": params * 2}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return params


def measure(cmd: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MEASURED ")), None)
    if line is None:
        raise SystemExit("the measurement failed:\n" + (proc.stdout + proc.stderr)[-3000:])
    result = json.loads(line[len("MEASURED "):])
    result["tail"] = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--formats", default="gguf,gptq,onnx")
    ap.add_argument("--gguf-quant", default="Q8_0")
    ap.add_argument("--calib-chunks", type=int, default=8)
    ap.add_argument("--calib-ctx", type=int, default=256)
    ap.add_argument("--eval-chunks", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true", help="skip the whole-model float32 load")
    ap.add_argument("--tmp", help="folder for the checkpoint and the exports (default: the system temp folder)")
    ap.add_argument("--keep", help="keep the checkpoint and exports in this folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="koquant-mem1b-", dir=args.tmp))
    try:
        model = root / "model"
        t0 = time.monotonic()
        params = build(model, args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads)
        layer_params = (args.hidden * args.hidden * 2 + args.hidden * (args.hidden // args.heads) * args.kv_heads * 2
                        + 3 * args.hidden * args.intermediate)
        info = {"params": params, "layers": args.layers, "checkpoint_mib": round(sum(
                    p.stat().st_size for p in model.glob("*.safetensors")) / 2**20),
                "fp32_model_mib": round(params * 4 / 2**20), "fp32_layer_mib": round(layer_params * 4 / 2**20),
                "build_s": round(time.monotonic() - t0, 1), "exports": {}}
        if not args.json:
            print(f"synthetic Llama: {params / 1e9:.2f} B parameters, {info['checkpoint_mib']} MiB of bf16 safetensors; "
                  f"float32: {info['fp32_model_mib']} MiB whole, {info['fp32_layer_mib']} MiB per decoder layer", flush=True)
        common = ["--calib-chunks", str(args.calib_chunks), "--calib-ctx", str(args.calib_ctx),
                  "--eval-chunks", str(args.eval_chunks), "--name", "synthetic-1b"]
        for fmt in args.formats.split(","):
            quant = {"gguf": args.gguf_quant, "gptq": "w4g128", "onnx": "int4"}[fmt]
            out = root / f"out-{fmt}"
            cmd = [sys.executable, "-m", "koquant", "export", str(model), "--fmt", fmt, "--quant", quant, *common,
                   "-o", str(out), "--force"]
            r = measure(cmd)
            info["exports"][fmt] = {"quant": quant, **r}
            if not args.json:
                print(f"\n{fmt} {quant}: exit {r['rc']} in {r['seconds']} s; max RSS {r['max_rss_kib'] / 2**10:.0f} MiB, "
                      f"tree RSS {r['tree_rss_kib'] / 2**10:.0f} MiB", flush=True)
                for role, kib in sorted(r["by_role_kib"].items(), key=lambda kv: -kv[1]):
                    print(f"  {role:32} {kib / 2**10:8.0f} MiB")
                if r["rc"] != 0:
                    print("  " + r["tail"].replace("\n", "\n  "))
            if fmt == "gguf" and r["rc"] == 0:
                info["gguf_pieces_kib"] = pieces = {}
                for piece in ("imports", "reference", "gate"):
                    proc = subprocess.run([sys.executable, "-c", _PIECES, piece, str(model),
                                           str(out / f"synthetic-1b-{quant}.gguf"), str(args.calib_chunks),
                                           str(args.eval_chunks)], capture_output=True, text=True)
                    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_KIB")), "PEAK_KIB 0")
                    pieces[piece] = int(line.split()[1])
                info["gguf_file_mib"] = round((out / f"synthetic-1b-{quant}.gguf").stat().st_size / 2**20)
                if not args.json:
                    print(f"  its process, piece by piece: imports and tokenizer {pieces['imports'] / 2**10:.0f} MiB; "
                          f"+ layerwise reference (imatrix and logits) {pieces['reference'] / 2**10:.0f} MiB; "
                          f"+ llama.cpp gate on the {info['gguf_file_mib']} MiB {quant} file "
                          f"{pieces['gate'] / 2**10:.0f} MiB", flush=True)
            if out.exists() and not args.keep:
                shutil.rmtree(out)
        if not args.no_baseline:
            proc = subprocess.run([sys.executable, "-c", _FULL_LOAD, str(model)], capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_KIB")), "PEAK_KIB 0")
            info["whole_model_fp32_load_kib"] = int(line.split()[1])
            if not args.json:
                print(f"\nfor scale: loading the whole model in float32 (how the reference was computed before) "
                      f"peaks at {info['whole_model_fp32_load_kib'] / 2**10:.0f} MiB")
        if args.json:
            print(json.dumps(info, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
