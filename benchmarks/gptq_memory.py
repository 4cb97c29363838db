"""Peak memory of GPTQ quantization: does it grow with one layer or with the whole model?

Builds random Llama checkpoints that differ only in depth (default 4, 8 and 16 layers of hidden
1024 / MLP 2816, about 51 MB of fp32 weights per layer), runs koquant's GPTQModel worker (the
step ``koquant export --fmt gptq`` runs) on each with the same Korean calibration tokens, and
prints the worker's peak RSS. If quantization holds one layer at a time, peak RSS stays nearly
flat as depth grows while the checkpoint size doubles each time.

    .venv/bin/python benchmarks/gptq_memory.py [--layers 4,8,16] [--hidden 1024] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from koquant.testing.miniatures import build_miniature

_MEASURE = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)\n"
)


def synthetic(dest: Path, layers: int, hidden: int, intermediate: int) -> int:
    """A random Llama of ``layers`` layers with the Korean SentencePiece tokenizer of ocelot-mini."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    src = build_miniature("ocelot-mini")
    config = AutoConfig.from_pretrained(src)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = layers, hidden, intermediate
    config.num_attention_heads = config.num_key_value_heads = hidden // 128
    config.head_dim = 128
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(dest)
    for p in src.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copyfile(p, dest / p.name)
    return sum(p.numel() for p in model.parameters())


def measure(model_dir: Path, work: Path, calibration: list[list[int]]) -> dict:
    from koquant.exporters.gptq.exporter import _worker_env

    job = {"bits": 4, "group_size": 128, "act_order": True, "sym": True, "damp": 0.05, "mse": 2.4, "source": str(model_dir),
           "out": str(work / "out"), "dtype": "float32", "offload_dir": str(work / "offload"),
           "calibration": calibration}
    job_file = work / "job.json"
    # the koquant.procs job layout the exporter uses: {"job": ..., "result": path}
    job_file.write_text(json.dumps({"job": job, "result": str(work / "result.json")}))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "koquant.procs",
                           "koquant.exporters.gptq.worker:quantize", str(job_file)],
                          capture_output=True, text=True, cwd=work, env=_worker_env(work, 0))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_KIB")), None)
    if line is None or not line.endswith(" 0"):
        raise SystemExit("the GPTQ worker failed:\n" + (proc.stdout + proc.stderr)[-3000:])
    return {"peak_rss_mib": int(line.split()[1]) / 1024, "seconds": round(time.monotonic() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="4,8,16")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--calib-chunks", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from koquant.quant_recipes.calibration import korean_bills

    tok = AutoTokenizer.from_pretrained(build_miniature("ocelot-mini"))
    ids = tok(korean_bills().plain_text())["input_ids"]
    calibration = [ids[i * 256:(i + 1) * 256] for i in range(args.calib_chunks)]
    rows = []
    for n in (int(x) for x in args.layers.split(",")):
        with tempfile.TemporaryDirectory(dir=os.environ.get("KOQUANT_BENCH_TMP")) as tmp:
            tmp = Path(tmp)
            params = synthetic(tmp / "model", n, args.hidden, args.intermediate)
            size = sum(p.stat().st_size for p in (tmp / "model").glob("*.safetensors"))
            (tmp / "work").mkdir()
            rows.append({"layers": n, "params": params, "checkpoint_mib": size / 2**20,
                         **measure(tmp / "model", tmp / "work", calibration)})
        if not args.json:
            r = rows[-1]
            print(f"{r['layers']:3d} layers  {r['params'] / 1e6:7.1f} M params  checkpoint {r['checkpoint_mib']:7.0f} MiB"
                  f"  peak RSS {r['peak_rss_mib']:7.0f} MiB  ({r['seconds']} s)", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    a, b = rows[0], rows[-1]
    per_layer = (b["peak_rss_mib"] - a["peak_rss_mib"]) / (b["layers"] - a["layers"])
    layer_mib = (b["checkpoint_mib"] - a["checkpoint_mib"]) / (b["layers"] - a["layers"])
    print(f"\npeak RSS grows {per_layer:.1f} MiB per added layer; one layer's weights are {layer_mib:.1f} MiB "
          f"(whole-model growth would be {layer_mib:.1f} MiB per layer or more)")


if __name__ == "__main__":
    main()
