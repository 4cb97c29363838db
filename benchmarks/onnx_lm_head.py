"""ONNX int4 on a real model with tied embeddings: what to do with lm_head and the embedding, which block size.

The model is Gemma 3 270M (koquant.testing.real_model): 262k-token vocabulary tied between the
embedding and lm_head, so the output projection holds 63% of the weights. onnxruntime-genai's model
builder, by default, shares one int4 table between the two (GatherBlockQuantized + MatMulNBits).
Each variant below is a real ``koquant export --fmt onnx --quant int4`` (gated like any export) and
reports the gate's numbers: mean KL and top-1 against the bf16 source on held-out Korean text.

    .venv/bin/python benchmarks/onnx_lm_head.py               # every variant (about 40 min on 2 cores)
    .venv/bin/python benchmarks/onnx_lm_head.py rtn-32-int4   # some of them
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import koquant
from koquant.exporters.onnx import builder
from koquant.testing.real_models import real_model

# (int4 algorithm, block size, --lm-head); "int8+float-embed" keeps the embedding as a float Gather
VARIANTS = [
    ("rtn", 32, "int4"), ("rtn", 32, "int8"), ("rtn", 32, "float"), ("rtn", 32, "int8+float-embed"),
    ("gptq", 32, "int8"), ("gptq", 32, "int8+float-embed"), ("gptq", 128, "int8"), ("rtn", 128, "int8"),
]
# not an option koquant offers (the file grows by a float vocabulary x hidden table): measured for comparison
EXPERIMENTAL = {"int8+float-embed": {"shared_embeddings": "false", "matmul_mixed_precision": "last_matmul:int8"}}


def main() -> int:
    chosen = [v for v in VARIANTS if not sys.argv[1:] or f"{v[0]}-{v[1]}-{v[2]}" in sys.argv[1:]]
    builder.LM_HEAD_OPTIONS.update(EXPERIMENTAL)
    src = real_model()
    work = Path(tempfile.mkdtemp(prefix="koquant-onnx-lm-head-"))
    rows = []
    try:
        for algo, block, head in chosen:
            out = work / f"{algo}-{block}-{head}"
            t = time.time()
            art = koquant.export(src, koquant.Recipe("onnx", ("int4",), calib_chunks=16, eval_chunks=4, params={
                "int4_algo": algo, "block_size": block, "lm_head": head}), out)
            f = art.record.files[0]
            v = f.validation
            row = {"algo": algo, "block": block, "lm_head": head, "size_mib": round(f.size / 2**20, 1),
                   "kl_mean": round(v["kl_mean"], 4), "top1": round(v["top1"], 4),
                   "rtn_kl_mean": round((v.get("plain") or {}).get("kl_mean", float("nan")), 4),
                   "export_s": round(time.time() - t)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| int4 algo | block | lm_head / embedding | size MiB | mean KL | top-1 |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['algo']} | {r['block']} | {r['lm_head']} | {r['size_mib']} | {r['kl_mean']} | {r['top1']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
