"""Does the Korean importance matrix help? KL vs the source, with and without it.

Exports the trained default miniature (or MODEL_DIR) to the given GGUF types twice - with the
Korean imatrix from the built-in calibration set and without any - and prints mean KL, p99 KL
and top-1 agreement against the source on held-out Korean text (the Constitution).

    .venv/bin/python benchmarks/imatrix_gain.py [MODEL_DIR] [--quant Q4_K_M,IQ4_XS,Q3_K_M]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import koquant
from koquant.testing.miniatures import DEFAULT_MODEL, build_miniature


def run(model_dir: Path, quants: tuple[str, ...], eval_chunks: int, calib_chunks: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, imatrix in (("imatrix", True), ("plain", False)):
            recipe = koquant.Recipe("gguf", quants, imatrix=imatrix, calib=None if not imatrix else "default",
                                    calib_chunks=calib_chunks, eval_chunks=eval_chunks, eval_ctx=256)
            art = koquant.export(model_dir, recipe, Path(tmp) / label)
            for f in art.files:
                results.setdefault(f["quant"], {})[label] = {
                    k: f["validation"][k] for k in ("kl_mean", "kl_p99", "top1")}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", type=Path)
    ap.add_argument("--quant", default="Q4_K_M,IQ4_XS,Q3_K_M")
    ap.add_argument("--eval-chunks", type=int, default=16)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = args.model_dir or build_miniature(DEFAULT_MODEL)
    quants = tuple(q.strip() for q in args.quant.split(","))
    res = run(model, quants, args.eval_chunks, args.calib_chunks)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"model: {model}\nheld-out: Korean constitution, {args.eval_chunks} x 256 tokens; "
          f"imatrix from kobill, {args.calib_chunks} x 512 tokens\n")
    print(f"{'quant':8} {'KL mean (imatrix)':>18} {'KL mean (plain)':>16} {'ratio':>6} {'top-1 imatrix':>14} {'top-1 plain':>12}")
    for q, r in res.items():
        a, b = r["imatrix"], r["plain"]
        print(f"{q:8} {a['kl_mean']:18.3e} {b['kl_mean']:16.3e} {a['kl_mean'] / b['kl_mean']:6.2f} "
              f"{a['top1']:14.4f} {b['top1']:12.4f}")


if __name__ == "__main__":
    main()
