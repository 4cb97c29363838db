"""Korean GPTQ against plain round-to-nearest, both 4-bit with groups of 128: KL vs the source.

Exports the trained default miniature (or MODEL_DIR) with ``koquant export --fmt gptq`` (GPTQModel
on the built-in Korean calibration set) and builds the round-to-nearest baseline on the very same
grid (symmetric, 4-bit, 128 input columns per scale, every decoder Linear, lm_head and embeddings
kept). Both are compared with the source on held-out Korean text (the Constitution): mean / p99
KL and top-1 agreement, and the ratio GPTQ / RTN.

    .venv/bin/python benchmarks/gptq_vs_rtn.py [MODEL_DIR] [--eval-chunks 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import koquant
from koquant.testing.miniatures import DEFAULT_MODEL, build_miniature


def rtn_weight(w, bits: int = 4, group: int = 128, sym: bool = True):
    """Round-to-nearest on GPTQ's own grid: per row and group of ``group`` input columns."""
    import torch

    n, k = w.shape
    g = group if group > 0 else k
    b = w.detach().to(torch.float32).reshape(n, k // g, g)
    maxq = 2**bits - 1
    if sym:
        xmax = b.abs().amax(-1, keepdim=True)
        scale = (2 * xmax / maxq).clamp(min=1e-10)
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        lo, hi = b.amin(-1, keepdim=True).clamp(max=0), b.amax(-1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / maxq).clamp(min=1e-10)
        zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(b / scale) + zero, 0, maxq)
    return ((q - zero) * scale).reshape(n, k).to(w.dtype)


def rtn_metrics(model_dir: Path, recipe) -> dict:
    """The RTN model's logits on the same held-out chunks the GPTQ gate used."""
    import torch
    from transformers import AutoModelForCausalLM

    from koquant.calib import korean_constitution
    from koquant.checkpoint import Checkpoint
    from koquant.reference import Reference
    from koquant.validate import compare_logits

    ref = Reference(Checkpoint.open(model_dir), Path(model_dir), recipe, korean_constitution())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for layer in model.model.layers:
        for mod in layer.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.data = rtn_weight(mod.weight.data)
    with torch.inference_mode():
        got = [model(input_ids=torch.tensor([c]), use_cache=False).logits[0].float().numpy()
               for c in ref.eval_chunks.ids]
    return compare_logits(ref.logits, got)


def run(model_dir: Path, eval_chunks: int, calib_chunks: int) -> dict:
    recipe = koquant.Recipe("gptq", ("w4g128",), calib_chunks=calib_chunks, eval_chunks=eval_chunks, eval_ctx=256)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        art = koquant.export(model_dir, recipe, Path(tmp) / "gptq")
        seconds = time.monotonic() - start
        gptq = art.files[0]["validation"]
        options = art.manifest["gptq"]
    rtn = rtn_metrics(model_dir, recipe)
    keys = ("kl_mean", "kl_p99", "top1")
    return {"model": str(model_dir), "eval_chunks": eval_chunks, "calib_chunks": calib_chunks,
            "gptq_options": {k: options[k] for k in ("bits", "group_size", "act_order", "sym", "damp")},
            "export_seconds": round(seconds, 1), "gptq": {k: gptq[k] for k in keys}, "rtn": {k: rtn[k] for k in keys},
            "kl_ratio": gptq["kl_mean"] / rtn["kl_mean"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", type=Path)
    ap.add_argument("--eval-chunks", type=int, default=16)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = args.model_dir or build_miniature(DEFAULT_MODEL)
    res = run(model, args.eval_chunks, args.calib_chunks)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"model: {model}\nheld-out: Korean constitution, {args.eval_chunks} x 256 tokens; "
          f"GPTQ calibration: kobill, {args.calib_chunks} x 512 tokens; options {res['gptq_options']}\n")
    print(f"{'4-bit g128':12} {'mean KL':>10} {'p99 KL':>10} {'top-1':>8}")
    for label in ("gptq", "rtn"):
        r = res[label]
        print(f"{label:12} {r['kl_mean']:10.3e} {r['kl_p99']:10.3e} {r['top1']:8.4f}")
    print(f"\nGPTQ / RTN mean KL: {res['kl_ratio']:.2f} (export {res['export_seconds']} s)")


if __name__ == "__main__":
    main()
