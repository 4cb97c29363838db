"""``koquant doctor``: what this machine is and what each backend does on it, for bug reports.

The CPU (model, the SIMD/AMX features the backends care about), then every backend koquant
drives — llama.cpp, torch + transformers, onnxruntime + onnxruntime-genai, GPTQModel — with
its version, its build (llama.cpp's CPU variant and extra buffer types, torch's CPU capability,
onnxruntime's providers) and a smoke test: a tiny model built on the spot, loaded and run for
one decode step in a child process (``koquant.procs``), so a crash in native code becomes a
``fail`` line here instead of ending the report.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import time
from pathlib import Path

from .. import procs
from ..errors import KoquantError

#: /proc/cpuinfo flags that decide which code the backends run
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512vbmi", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return {"model": model, "machine": platform.machine(), "logical_cpus": os.cpu_count(),
            "memory_bytes": mem, "features": [f for f in CPU_FLAGS if f in flags],
            "amx": any(f.startswith("amx") for f in flags)}


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- facts per backend (in this process)
def _llama_facts() -> dict:
    from ..exporters.gguf import llamacpp

    lib = llamacpp.import_llama_cpp()
    return {"cpu": llamacpp.cpu_backend(lib).to_dict(), "system_info": llamacpp.system_info()}


def _torch_facts() -> dict:
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(), "cuda": torch.cuda.is_available()}


def _onnx_facts() -> dict:
    from ..exporters.onnx import genai

    found = genai.installed_runtime_packages()
    facts = {"packages": found}
    try:
        genai.check_install()
        facts["mixed_cpu_gpu_install"] = False
    except genai.OnnxRuntimeConflictError as e:
        facts["mixed_cpu_gpu_install"] = True
        facts["problem"] = str(e)
        return facts
    import onnxruntime

    facts["providers"] = onnxruntime.get_available_providers()
    return facts


def _gptq_facts() -> dict:
    from ..exporters.gptq.exporter import check_install

    return {"gptqmodel": check_install(), "optimum": _version("optimum")}


#: name -> (packages whose versions are shown, facts in this process, smoke test entry in a child)
BACKENDS = {
    "llama.cpp": (("llama-cpp-python",), _llama_facts, "koquant.cli.doctor:smoke_llama"),
    "torch": (("torch", "transformers"), _torch_facts, "koquant.cli.doctor:smoke_torch"),
    "onnxruntime": (("onnxruntime", "onnxruntime-genai", "onnxruntime-gpu", "onnxruntime-genai-cuda"), _onnx_facts,
                    "koquant.cli.doctor:smoke_onnx"),
    "gptqmodel": (("gptqmodel", "optimum"), _gptq_facts, "koquant.cli.doctor:smoke_gptq"),
}


def report(smoke: bool = True) -> dict:
    import koquant

    out = {"koquant": koquant.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "cpu": cpu_info(), "backends": {}}
    for name, (packages, facts, entry) in BACKENDS.items():
        b = {"versions": {p: v for p in packages if (v := _version(p))}}
        try:
            b.update(facts())
            b["found"] = True
        except (KoquantError, ImportError) as e:
            b["found"] = False
            b["problem"] = getattr(e, "message", str(e))
            b["hint"] = getattr(e, "hint", None)
        if smoke and b["found"] and not b.get("mixed_cpu_gpu_install"):
            t0 = time.perf_counter()
            try:
                b["smoke"] = {"passed": True, **procs.run(entry, {}, backend=name, step="running its smoke test")}
            except KoquantError as e:
                b["smoke"] = {"passed": False, "error": e.message, "hint": e.hint}
            b["smoke"]["seconds"] = round(time.perf_counter() - t0, 2)
        out["backends"][name] = b
    return out


# ---------------------------------------------------------------- smoke tests (each in a child process)
def smoke_llama(_job: dict) -> dict:
    """A tiny Q4_0 model (the type llama.cpp repacks, where the AMX crash was), loaded and decoded once."""
    import tempfile

    import numpy as np

    from ..exporters.gguf import llamacpp

    lib = llamacpp.import_llama_cpp()
    with tempfile.TemporaryDirectory(prefix="koquant-doctor-") as tmp:
        f32, q4 = Path(tmp) / "tiny-F32.gguf", Path(tmp) / "tiny-Q4_0.gguf"
        llamacpp.write_llama_gguf(f32, hidden=256, ff=512, heads=4, layers=1)
        llamacpp.quantize(f32, q4, "Q4_0", nthread=1)
        model, ctx = llamacpp.open_model(q4, n_ctx=64, n_batch=16, threads=1)
        try:
            vocab = lib.llama_model_get_vocab(model)
            ids = llamacpp.tokenize(lib, vocab, "안녕", add_special=True, parse_special=False)
            arr = (lib.llama_token * len(ids))(*ids)
            rc = lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(ids)))
            if rc != 0:
                raise KoquantError(f"llama_decode returned {rc}")
            n_vocab = int(lib.llama_vocab_n_tokens(vocab))
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            if not np.isfinite(logits).all():
                raise KoquantError("llama.cpp returned non-finite logits")
        finally:
            lib.llama_free(ctx)
            lib.llama_model_free(model)
    return {"model": "1-layer Llama, Q4_0", "tokens": len(ids), "variant": llamacpp.cpu_backend(lib).variant}


def _tiny_llama_config(hidden: int = 64, vocab: int = 128):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)


def smoke_torch(_job: dict) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_llama_config()).eval()
    with torch.inference_mode():
        out = model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=1, do_sample=False)
    return {"model": "1-layer Llama (transformers)", "new_tokens": int(out.shape[1] - 3)}


def smoke_onnx(_job: dict) -> dict:
    """A tiny Llama built by onnxruntime-genai's own model builder (int4: MatMulNBits, what koquant's int4
    exports run), loaded by onnxruntime-genai and decoded for one token."""
    import tempfile

    import numpy as np
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from ..exporters.onnx import builder, genai

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="koquant-doctor-") as tmp:
        src, out = Path(tmp) / "hf", Path(tmp) / "onnx"
        LlamaForCausalLM(_tiny_llama_config()).save_pretrained(src)
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, 128)}}
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                      unk_token="<unk>", bos_token="<s>", eos_token="</s>")
        tok.save_pretrained(src)
        builder.build(src, out, "int4", Path(tmp) / "cache", block_size=32)
        model = genai.load_model(out, threads=1)
        logits = genai.prompt_logits(model, [1, 5, 9])
    if not np.isfinite(logits).all():
        raise KoquantError("onnxruntime-genai returned non-finite logits")
    return {"model": "1-layer Llama, int4 (onnxruntime-genai builder)", "positions": int(logits.shape[0])}


def smoke_gptq(_job: dict) -> dict:
    """A tiny GPTQ v1 checkpoint (random packed weights) loaded the way users load one, run for one step."""
    import tempfile

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from ..source.architectures import ARCHITECTURES

    llama = ARCHITECTURES["llama"]
    cfg = _tiny_llama_config()
    group, bits = 32, 4
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, p in LlamaForCausalLM(cfg).state_dict().items():
        if name.endswith(".weight") and llama.layer_linear(name):
            out_f, in_f = p.shape
            stem = name[: -len(".weight")]
            state[f"{stem}.qweight"] = torch.randint(-2**31, 2**31 - 1, (in_f * bits // 32, out_f), generator=gen, dtype=torch.int32)
            state[f"{stem}.qzeros"] = torch.full((in_f // group, out_f * bits // 32), 0x77777777, dtype=torch.int32)
            state[f"{stem}.scales"] = torch.full((in_f // group, out_f), 0.01, dtype=torch.float16)
            state[f"{stem}.g_idx"] = torch.arange(in_f, dtype=torch.int32) // group
        else:
            state[name] = p.detach().clone()
    with tempfile.TemporaryDirectory(prefix="koquant-doctor-") as tmp:
        cfg_dict = cfg.to_dict()
        cfg_dict["architectures"] = [llama.hf_class]
        cfg_dict["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": False,
                                           "sym": True, "checkpoint_format": "gptq"}
        Path(tmp, "config.json").write_text(json.dumps(cfg_dict))
        save_file(state, str(Path(tmp, "model.safetensors")), metadata={"format": "pt"})
        model = AutoModelForCausalLM.from_pretrained(tmp, device_map="cpu").eval()
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([[1, 5, 9]])).logits
    if not torch.isfinite(logits).all():
        raise KoquantError("the GPTQ kernel returned non-finite logits")
    layer = model.get_submodule(llama.linear_path(0))
    return {"model": "1-layer Llama, GPTQ 4-bit g32 (random)", "kernel": type(layer).__name__}


# ---------------------------------------------------------------- the command
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the whole report as JSON (for bug reports)")
    p.add_argument("--no-smoke", action="store_true", help="skip the smoke tests (versions and builds only)")


def main(args: argparse.Namespace) -> int:
    r = report(smoke=not args.no_smoke)
    failed = [n for n, b in r["backends"].items() if b.get("smoke", {}).get("passed") is False]
    if args.json:
        print(json.dumps(r, ensure_ascii=False, indent=2))
        return 1 if failed else 0
    cpu = r["cpu"]
    mem = f", {cpu['memory_bytes'] / 2**30:.1f} GiB" if cpu.get("memory_bytes") else ""
    print(f"koquant {r['koquant']} on Python {r['python']}, {r['platform']}")
    print(f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs{mem})")
    print(f"     {' '.join(cpu['features']) or '(no SIMD features read)'}")
    for name, b in r["backends"].items():
        versions = ", ".join(f"{k} {v}" for k, v in b["versions"].items()) or "not installed"
        print(f"\n{name}: {versions}")
        if not b["found"]:
            print(f"  missing: {b.get('problem')}" + (f"\n  hint: {b['hint']}" if b.get("hint") else ""))
            continue
        for line in _facts(name, b):
            print(f"  {line}")
        smoke = b.get("smoke")
        if smoke is not None:
            if smoke["passed"]:
                detail = ", ".join(f"{k} {v}" for k, v in smoke.items() if k not in ("passed", "seconds"))
                print(f"  smoke test: pass ({detail}; {smoke['seconds']:.1f} s)")
            else:
                print(f"  smoke test: FAIL: {smoke['error']}" + (f"\n    hint: {smoke['hint']}" if smoke.get("hint") else ""))
    return 1 if failed else 0


def _facts(name: str, b: dict) -> list[str]:
    if name == "llama.cpp":
        c = b["cpu"]
        lines = [f"build: {c['build']}" + (f", CPU variant {c['variant']} ({c['reason']})" if c["variant"] else f" ({c['reason']})")]
        runnable = [v for v, s in c["variants"].items() if s > 0]
        if c["variants"]:
            lines.append(f"variants this CPU runs: {', '.join(runnable)}; of {len(c['variants'])} shipped")
        for v, why in c["skipped"].items():
            lines.append(f"skipped {v}: {why}")
        lines.append(f"extra buffer types (weight repacking): {'on' if c['extra_buffer_types'] else 'off'}")
        lines.append(f"system info: {b['system_info']}")
        return lines
    if name == "torch":
        return [f"CPU capability: {b['cpu_capability']}, {b['threads']} threads, oneDNN {'yes' if b['mkldnn'] else 'no'}, "
                f"CUDA {'yes' if b['cuda'] else 'no'}"]
    if name == "onnxruntime":
        if b.get("mixed_cpu_gpu_install"):
            return [f"PROBLEM: {b['problem']}"]
        return [f"providers: {', '.join(b.get('providers', []))}", "mixed CPU/GPU install: no"]
    return []
