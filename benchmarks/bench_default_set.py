"""How long ``koquant bench`` takes over the whole default set, and what it reports.

Exports the trained default miniature (or MODEL_DIR) to GGUF F16/Q8_0/Q4_K_M/IQ4_XS, ONNX
fp32/int4 and GPTQ w4g128 (or reuses the exports in --work), then runs the bench over all seven
with its default settings (every 512-token chunk of the held-out Constitution, 1 warm-up + the
default repeats, 128 decode steps) and prints the bench's wall time and the per-export numbers.
The exports are not timed; the target is the bench itself: under 10 minutes on 2 cores.

    .venv/bin/python benchmarks/bench_default_set.py [MODEL_DIR] [--work DIR] [--threads 2] [-o REPORT_DIR]
    .venv/bin/python benchmarks/bench_default_set.py --real gemma-3-270m   # the real pretrained model
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import koquant
from koquant.testing.miniatures import DEFAULT_MODEL, build_miniature

DEFAULT_SET = (("gguf", ("F16", "Q8_0", "Q4_K_M", "IQ4_XS")), ("onnx", ("fp32", "int4")), ("gptq", ("w4g128",)))


def exports(model_dir: Path, work: Path, name: str = DEFAULT_MODEL) -> list[Path]:
    """The default set's artifact folders under ``work``, exported once (an existing artifact is reused)."""
    paths = []
    for fmt, quants in DEFAULT_SET:
        out = work / fmt
        if not (out / "koquant.json").is_file():
            t0 = time.perf_counter()
            koquant.export(model_dir, koquant.Recipe(fmt, quants, name=name), out)
            print(f"exported {fmt} {','.join(quants)} in {time.perf_counter() - t0:.0f} s", flush=True)
        paths.append(out)
    return paths


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (the bench's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", nargs="?", type=Path)
    ap.add_argument("--real", metavar="NAME", help="a real pretrained model of koquant.testing.real_models "
                    "(e.g. gemma-3-270m) instead of MODEL_DIR")
    ap.add_argument("--work", type=Path, help="folder for the exports (kept; default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, help="timed runs per latency number (default: the bench's default)")
    ap.add_argument("-o", "--output", type=Path, help="report folder (default: inside the work folder)")
    args = ap.parse_args()

    name = args.real or (args.model_dir.name if args.model_dir else DEFAULT_MODEL)
    if args.real:
        from koquant.testing.real_models import real_model

        model_dir = real_model(args.real)
    else:
        model_dir = args.model_dir or build_miniature(DEFAULT_MODEL)
    tmp = None
    if args.work is None:
        tmp = Path(tempfile.mkdtemp(prefix="koquant-bench-set-"))
    work = args.work or tmp
    try:
        artifacts = exports(model_dir, work, name)
        out = args.output or work / "report"
        options = {"threads": args.threads}
        if args.repeats:
            options["repeats"] = args.repeats
        from koquant.cli.bench import print_summary, run_bench
        from koquant.cli.console import progress_bar as _progress

        load_before = os.getloadavg()
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        report = run_bench(model_dir, artifacts, out, progress=_progress(), force=True, **options)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
        print_summary(report, out, False)
        s = report.settings
        print(f"\nbench of {len(report.exports)} exports + the source: {wall:.0f} s wall "
              f"({wall / 60:.1f} min; target < 10 min), {s['threads']} thread(s), "
              f"{report.text['chunks']} x {s['ctx']} tokens, {s['warmup']} warm-up + {s['repeats']} runs, "
              f"{s['decode_tokens']} decode steps")
        print(f"CPU time of the bench and its workers: {cpu:.0f} s ({cpu / wall:.2f} cores busy on average); "
              f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
              f"(other processes on a shared machine slow every number down)")
        for e in (report.baseline, *report.exports):
            print(f"  {e['name']:<13} import {e['import_s']:5.1f} s  load {e['load_s']:5.2f} s  "
                  f"decode {e['decode_tok_s']:7.1f} tok/s  ({e['latency']['decode_tok_s']['min']:.0f}-"
                  f"{e['latency']['decode_tok_s']['max']:.0f})")
        print(f"report: {out / 'report.md'}")
    finally:
        if tmp is not None and args.output is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
