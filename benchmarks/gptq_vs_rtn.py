"""Korean GPTQ against plain round-to-nearest, both 4-bit with groups of 128: KL vs the source.

Exports the trained default miniature (or MODEL_DIR) with ``koquant export --fmt gptq`` (GPTQModel,
the default recipe) and builds the round-to-nearest baseline on the very same grid (symmetric,
4-bit, 128 input columns per scale, every decoder Linear; lm_head and embeddings kept). Both are
compared with the source on two held-out Korean texts, as mean / p99 KL, top-1 agreement and the
ratio GPTQ / RTN:

1. two of kobill's ten bills, with GPTQ calibrated on the other eight: text GPTQ never saw, from
   the distribution the model knows (as wikitext is for a real LLM, which GPTQ papers evaluate on);
2. the Constitution, with GPTQ calibrated on all ten bills (the export gate's own text), which the
   miniature never saw in training either.

    .venv/bin/python benchmarks/gptq_vs_rtn.py [MODEL_DIR] [--eval-chunks 16] [--json]
    .venv/bin/python benchmarks/gptq_vs_rtn.py --all-families   # every miniature, one line each
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import koquant
from koquant.testing.miniatures import DEFAULT_MODEL, FAMILIES, build_miniature


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


def _logits(model, chunks) -> list:
    import torch

    with torch.inference_mode():
        return [model(input_ids=torch.tensor([c]), use_cache=False).logits[0].float().numpy() for c in chunks]


def compare(model_dir: Path, gptq_dir: Path, chunks: list[list[int]], work: Path) -> dict:
    """Source, GPTQ export (loaded by transformers in a child, as the gate does) and RTN on the same ids."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from koquant.exporters.gptq.exporter import _run_worker
    from koquant.exporters.gate import compare_logits

    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = _logits(source, chunks)
    for layer in source.model.layers:  # the same model, every decoder Linear rounded to nearest
        for mod in layer.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.data = rtn_weight(mod.weight.data)
    rtn = compare_logits(ref, _logits(source, chunks))
    job = {"folder": str(gptq_dir), "ids": chunks, "logits": str(work / "logits.npy"), "info": str(work / "info.json")}
    _run_worker("logits", job, work)
    gptq = compare_logits(ref, list(np.load(job["logits"])))
    keys = ("kl_mean", "kl_p99", "top1")
    return {"gptq": {k: gptq[k] for k in keys}, "rtn": {k: rtn[k] for k in keys}, "kl_ratio": gptq["kl_mean"] / rtn["kl_mean"]}


def run(model_dir: Path, eval_chunks: int, calib_chunks: int) -> dict:
    """Two held-out texts: (1) two bills GPTQ never saw, calibrating on the other eight; (2) the Constitution,
    calibrating on all ten bills (the export's own gate text, outside the miniature's training text)."""
    from transformers import AutoTokenizer

    from koquant.quant_recipes.calibration import TextSet, chunk_tokens, korean_bills, korean_constitution

    tok = AutoTokenizer.from_pretrained(model_dir)
    bos = tok.bos_token_id if tok("가")["input_ids"][:1] == [tok.bos_token_id] else None
    bills = korean_bills().documents
    results = {"model": str(model_dir), "eval_chunks": eval_chunks, "calib_chunks": calib_chunks, "texts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "calib-8-bills").mkdir()
        for i, doc in enumerate(bills[:8]):
            (tmp / "calib-8-bills" / f"{i}.txt").write_text(doc, encoding="utf-8")
        cases = {
            "kobill: 2 held-out bills (calibrated on the other 8)":
                (str(tmp / "calib-8-bills"), TextSet("kobill-8-9", bills[8:]).plain_text()),
            "kolaw: the Constitution (calibrated on all 10 bills)": ("default", korean_constitution().plain_text()),
        }
        for label, (calib, text) in cases.items():
            recipe = koquant.Recipe("gptq", ("w4g128",), calib=calib, calib_chunks=calib_chunks, eval_chunks=4)
            start = time.monotonic()
            art = koquant.export(model_dir, recipe, tmp / "gptq")
            seconds = time.monotonic() - start
            results["gptq_options"] = {k: art.manifest["gptq"][k]
                                       for k in ("bits", "group_size", "act_order", "sym", "damp", "mse")}
            chunks = chunk_tokens(list(tok(text)["input_ids"]), 256, eval_chunks, bos).ids
            (tmp / "work").mkdir(exist_ok=True)
            results["texts"][label] = {"eval_tokens": 256 * len(chunks), "export_seconds": round(seconds, 1),
                                       **compare(model_dir, tmp / "gptq", chunks, tmp / "work")}
            shutil.rmtree(tmp / "gptq")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", type=Path)
    ap.add_argument("--eval-chunks", type=int, default=16)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--all-families", action="store_true", help="every miniature, one summary line each")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.all_families:
        print(f"{'miniature':16} {'text':7} {'GPTQ KL':>10} {'RTN KL':>10} {'ratio':>6}")
        for name in sorted(FAMILIES):
            r = run(build_miniature(name), args.eval_chunks, args.calib_chunks)
            for label, t in r["texts"].items():
                print(f"{name:16} {label.split(':')[0]:7} {t['gptq']['kl_mean']:10.3e} {t['rtn']['kl_mean']:10.3e} "
                      f"{t['kl_ratio']:6.2f}", flush=True)
        return
    model = args.model_dir or build_miniature(DEFAULT_MODEL)
    res = run(model, args.eval_chunks, args.calib_chunks)
    if args.json:
        print(json.dumps(res, indent=2, ensure_ascii=False))
        return
    print(f"model: {model}\nGPTQ options {res['gptq_options']}; calibration {args.calib_chunks} x 512 tokens; "
          f"RTN: the same grid, round-to-nearest\n")
    for label, t in res["texts"].items():
        print(f"{label}, {t['eval_tokens']} tokens (export {t['export_seconds']} s)")
        print(f"  {'4-bit g128':10} {'mean KL':>10} {'p99 KL':>10} {'top-1':>8}")
        for name in ("gptq", "rtn"):
            r = t[name]
            print(f"  {name:10} {r['kl_mean']:10.3e} {r['kl_p99']:10.3e} {r['top1']:8.4f}")
        print(f"  GPTQ / RTN mean KL: {t['kl_ratio']:.2f}\n")


if __name__ == "__main__":
    main()
