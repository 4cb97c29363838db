"""``koquant bench SOURCE_DIR ARTIFACT... -o REPORT_DIR [--baseline FILE]``, and
``koquant bench SOURCE_DIR --save-baseline FILE``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .console import print_table, progress_bar

_DTYPES = ("float32", "bfloat16", "float16")  # koquant.bench.BASELINE_DTYPES, without importing it for --help
_DEVICES = ("auto", "cpu", "cuda")  # koquant.runtime.backends.hf.DEVICES, likewise


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("source_dir", type=Path, help="the source Hugging Face model folder (the baseline; with "
                   "--baseline only its config and tokenizer are read)")
    p.add_argument("artifacts", nargs="*", metavar="ARTIFACT",
                   help="exports to measure: an artifact folder koquant wrote (every file in it), a .gguf file, "
                   "an ONNX or GPTQ folder")
    p.add_argument("-o", "--output", type=Path, metavar="REPORT_DIR",
                   help="report folder: report.md, report.json, report.png (written atomically; not with "
                   "--save-baseline)")
    p.add_argument("--save-baseline", type=Path, metavar="FILE",
                   help="run only the source over the text and save its scored logits to FILE, for --baseline "
                   "(on CUDA when torch sees a GPU; no ARTIFACT or -o)")
    p.add_argument("--baseline", type=Path, metavar="FILE",
                   help="compare with a baseline --save-baseline wrote instead of running the source (whose weights "
                   "SOURCE_DIR then need not hold)")
    p.add_argument("--baseline-device", choices=_DEVICES,
                   help="with --save-baseline: where the source runs (default auto: CUDA when there is one)")
    p.add_argument("--text", metavar="FILE",
                   help="UTF-8 text for perplexity and KL (default: the held-out Korean Constitution)")
    p.add_argument("--threads", type=int, help="CPU threads for every runtime (default: all logical cores)")
    p.add_argument("--baseline-dtype", choices=_DTYPES,
                   help="run the source in this dtype (default: the dtype its weights are stored in)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per perplexity chunk; the second half is scored (512)")
    p.add_argument("--chunks", type=int, help="perplexity chunks (default: every full chunk of the text)")
    p.add_argument("--mc", metavar="JSONL",
                   help='multiple-choice probe: one {"context", "choices": [...], "label"} item per line')
    p.add_argument("--repeats", type=int, default=3, help="timed runs per latency number (default 3; median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs (default 1)")
    p.add_argument("--decode-tokens", type=int, default=128, help="decode steps timed (default 128)")
    p.add_argument("--no-latency", action="store_true", help="quality only")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder that is not a bench report")
    p.add_argument("--json", action="store_true", help="print the report's per-export numbers as JSON")


def main(args: argparse.Namespace) -> int:
    from ..bench import BenchError

    if args.save_baseline is not None:
        return save(args)
    if args.baseline_device is not None:
        raise BenchError("--baseline-device applies to --save-baseline only",
                         hint="a bench runs the source on the CPU beside the exports; drop --baseline-device")
    if args.output is None:
        raise BenchError("no report folder given", hint="koquant bench SOURCE_DIR ARTIFACT... -o REPORT_DIR")
    progress = progress_bar()
    report = run_bench(args.source_dir, args.artifacts, args.output, progress=progress, text=args.text, mc=args.mc,
                       force=args.force, threads=args.threads, baseline_dtype=args.baseline_dtype, ctx=args.ctx,
                       chunks=args.chunks, repeats=args.repeats, warmup=args.warmup, decode_tokens=args.decode_tokens,
                       latency=not args.no_latency, baseline=args.baseline)
    print_summary(report, args.output, args.json)
    return 0


def save(args: argparse.Namespace) -> int:
    """``--save-baseline FILE``: the source alone, its scored rows written to FILE."""
    from ..bench import BenchError, save_baseline

    given = [flag for flag, v in (("ARTIFACT", args.artifacts), ("-o", args.output), ("--baseline", args.baseline))
             if v]
    if given:
        raise BenchError(f"--save-baseline runs the source alone; drop {', '.join(given)}",
                         hint="save, then bench: koquant bench MODEL --save-baseline FILE, then "
                              "koquant bench MODEL ARTIFACT... --baseline FILE -o REPORT_DIR")
    progress = progress_bar()
    with progress:
        saved = save_baseline(args.source_dir, args.save_baseline, progress=progress, text=args.text, mc=args.mc,
                              device=args.baseline_device or "auto", force=args.force, threads=args.threads,
                              baseline_dtype=args.baseline_dtype, ctx=args.ctx, chunks=args.chunks)
    r = saved.record
    ch, q = r["chunking"], r["result"]["quality"]
    summary = {"baseline": str(saved.path), "bytes": saved.path.stat().st_size, "dtype": r["dtype"],
               "device": r["device"], "ctx": ch["ctx"], "chunks": ch["chunks"], "positions": q["positions"],
               "kind": r["kind"], "ppl": q["ppl"]}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(f"baseline: {saved.path} ({summary['bytes'] / 2**20:.1f} MiB): the source in {r['dtype']} on "
              f"{r['device']}, {ch['chunks']} chunks of {ch['ctx']} tokens, {q['positions']} scored positions "
              f"({'whole logits' if r['kind'] == 'full' else 'top-k log-probs'}), PPL {q['ppl']:.4f}")
    return 0


def run_bench(source_dir, artifacts, out, *, progress=None, **options):
    from ..bench import bench

    if progress is None:
        return bench(source_dir, artifacts, out, on_note=_note, **options)
    with progress:
        return bench(source_dir, artifacts, out, progress=progress, on_note=_note, **options)


def _note(text: str) -> None:
    import sys

    print(f"note: {text}", file=sys.stderr)


def bench_after_export(model_dir, artifact_path: Path, threads: int, as_json: bool) -> None:
    """``koquant export ... --bench``: bench what was just exported, with the defaults, into ``<OUT>-bench``."""
    import sys

    out = artifact_path.with_name(artifact_path.name + "-bench")
    report = run_bench(model_dir, [artifact_path], out, progress=progress_bar(), threads=threads or None)
    if as_json:  # stdout holds the export's JSON; keep it one document
        print(f"bench report: {out}", file=sys.stderr)
    else:
        print_summary(report, out, False)


def print_summary(report, out: Path, as_json: bool) -> None:
    keys = ("name", "backend", "file_bytes", "ppl", "ppl_ratio", "kl_mean", "kl_p99", "kl_max", "top1", "mc_acc",
            "load_s", "ttft_s", "prefill_128_tok_s", "prefill_512_tok_s", "decode_tok_s", "peak_rss_bytes",
            "bound_fraction")
    if as_json:
        rows = [{k: e[k] for k in keys if k in e} for e in (report.baseline, *report.exports)]
        print(json.dumps({"report": str(out), "baseline_dtype": report.source["baseline_dtype"], "entries": rows,
                          "skipped": report.skipped}, indent=2, ensure_ascii=False))
        return
    rows = [(e["name"], f"{e['file_bytes'] / 2**20:.1f}", _num(e.get("ppl"), ".3f"), _num(e.get("ppl_ratio"), ".4f"),
             _num(e.get("kl_mean"), ".2e"), _num(e.get("kl_p99"), ".2e"), _num(e.get("top1"), ".4f"),
             _num(e.get("decode_tok_s"), ".1f"),
             _num(e["peak_rss_bytes"] / 2**20 if e.get("peak_rss_bytes") else None, ".0f"))
            for e in (report.baseline, *report.exports)]
    print_table(f"{out} (baseline: transformers, {report.source['baseline_dtype']})",
                ("export", "MiB", "PPL", "PPL ×", "KL mean", "KL p99", "top-1", "decode tok/s", "peak RSS MiB"), rows)
    print(f"report: {out / 'report.md'}")


def _num(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)
