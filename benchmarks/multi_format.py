"""One export to GGUF, GPTQ and ONNX against three separate exports of the same model, in one run.

    .venv/bin/python benchmarks/multi_format.py [MODEL_DIR_OR_HUB_ID] [--real gemma-3-270m] [--repeats 1]

Runs, interleaved (``--repeats`` times each): ``koquant export MODEL --fmt gguf,gptq,onnx`` (one
checkpoint check, one staged source, one calibration text, one held-out reference for all three) and
the three single-format exports one after another, each as its own ``koquant export`` process, with
the same quants and calibration. Prints wall time per way and the time saved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUANTS = {"gguf": "Q4_K_M,Q8_0", "gptq": "w4g128", "onnx": "int4"}


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="a model folder or Hub id (default: the default miniature)")
    ap.add_argument("--real", help="a real model of koquant.testing.real_models (e.g. gemma-3-270m)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--calib-chunks", type=int, default=32)
    args = ap.parse_args()
    if args.real:
        from koquant.testing.real_models import real_model

        model = str(real_model(args.real))
    elif args.model:
        model = args.model
    else:
        from koquant.testing.miniatures import DEFAULT_MODEL, build_miniature

        model = str(build_miniature(DEFAULT_MODEL))
    common = ["--calib-chunks", str(args.calib_chunks), "--force"]
    koquant = [sys.executable, "-m", "koquant", "export", model]
    together, apart = [], []
    work = Path(tempfile.mkdtemp(prefix="koquant-multi-"))
    try:
        for _ in range(args.repeats):
            quants = [a for f, q in QUANTS.items() for a in ("--quant", f"{f}={q}")]
            together.append(run(koquant + ["--fmt", ",".join(QUANTS), *quants, *common, "-o", str(work / "all")]))
            apart.append(sum(run(koquant + ["--fmt", f, "--quant", q, *common, "-o", str(work / f)])
                             for f, q in QUANTS.items()))
            for p in work.iterdir():
                shutil.rmtree(p, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, three = statistics.median(together), statistics.median(apart)
    print(f"model: {model}; quants: {QUANTS}; calibration {args.calib_chunks} chunks; {os.cpu_count()} logical CPUs; "
          f"{args.repeats} repeat(s), median")
    print()
    print("| way | wall time |")
    print("|---|---|")
    print(f"| `koquant export --fmt gguf,gptq,onnx` (one bundle) | {one:.0f} s |")
    print(f"| three `koquant export --fmt X` runs | {three:.0f} s |")
    print()
    print(f"time saved: {three - one:.0f} s ({(three - one) / three * 100:.0f} % of three runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
