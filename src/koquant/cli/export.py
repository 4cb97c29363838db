"""``koquant export`` and ``koquant demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import RecipeError
from .console import print_table, progress_bar


def _quant_list(text: str) -> tuple[str, ...]:
    return tuple(q.strip() for q in text.split(",") if q.strip())


def _formats(text: str) -> tuple[str, ...]:
    """``gguf`` or ``gguf,gptq,onnx``: each an export format (in the order given, once each)."""
    from ..exporters import format_of

    fmts = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    if not fmts:
        raise RecipeError("--fmt names no format", hint="e.g. --fmt gguf, or several: --fmt gguf,gptq,onnx")
    for f in fmts:
        format_of(f, exported=True)
    return fmts


def _quants_by_format(fmts: tuple[str, ...], given) -> dict[str, tuple[str, ...] | None]:
    """``--quant`` values per format: ``Q4_K_M,Q8_0`` for a single format, ``gguf=Q4_K_M,Q8_0`` for any."""
    out: dict[str, tuple[str, ...] | None] = {f: None for f in fmts}
    for text in ([given] if isinstance(given, str) else given or []):
        fmt, sep, rest = text.partition("=")
        if sep:
            fmt = fmt.strip().lower()
            if fmt not in fmts:
                raise RecipeError(f"--quant {text} names {fmt}, which --fmt does not export",
                                  hint=f"add it to --fmt ({','.join(fmts + (fmt,))}), or drop that --quant")
            out[fmt] = (out[fmt] or ()) + _quant_list(rest)
        elif len(fmts) > 1:
            raise RecipeError(f"--quant {text} does not say which of {', '.join(fmts)} it is for",
                              hint="prefix it with its format: --quant " + " --quant ".join(
                                  f"{f}=..." for f in fmts))
        else:
            out[fmts[0]] = (out[fmts[0]] or ()) + _quant_list(text)
    return out


def _quants_for(fmt: str, quants: tuple[str, ...] | None) -> tuple[str, ...]:
    """Each name in its table's spelling (``Q4_K_M``, ``int4``); None: the format's default."""
    from ..exporters import format_of

    entry = format_of(fmt, exported=True)
    return tuple(entry.quant_name(q) for q in (entry.default_quants if quants is None else quants))


def _format_params(args: argparse.Namespace, fmts: tuple[str, ...]) -> dict[str, dict]:
    """Format-specific options given on the command line, per format; refused for formats not exported."""
    from ..exporters import export_formats

    params = {}
    for entry in export_formats():
        given = {k: getattr(args, k, None) for k in entry.exporter_class().options}
        given = {k: v for k, v in given.items() if v is not None}
        if given and entry.name not in fmts:
            raise RecipeError(f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to --fmt {entry.name} only",
                              hint=f"add --fmt {entry.name}, or drop those options")
        if entry.name in fmts:
            params[entry.name] = given
    return params


def _common(p: argparse.ArgumentParser, default_quants: str | None) -> None:
    from ..exporters import export_formats

    per_format = ", ".join(f"{','.join(f.default_quants)} for {f.name}" for f in export_formats())
    p.add_argument("--quant", default=default_quants, action="append" if default_quants is None else "store",
                   help="comma-separated quant types, sharing one conversion and one calibration (default "
                   + (default_quants or per_format) + "); with several formats, one per format: --quant "
                   "gguf=Q4_K_M,Q8_0 --quant onnx=int4")
    p.add_argument("--calib", default="default", metavar="TEXT",
                   help="calibration text: 'default' (Korean bills from konlpy), a .txt/.jsonl file or a folder")
    p.add_argument("--no-calib", action="store_true", help="no calibration (plain quantization, no importance matrix)")
    p.add_argument("--calib-chat", action="store_true", help="render calibration samples through the model's chat template")
    p.add_argument("--calib-ctx", type=int, default=512, help="tokens per calibration chunk (default 512)")
    p.add_argument("--calib-chunks", type=int, default=32, help="maximum calibration chunks (default 32)")
    p.add_argument("--no-imatrix", action="store_true", help="GGUF: do not apply the importance matrix")
    p.add_argument("--eval-ctx", type=int, default=256, help="tokens per held-out validation chunk (default 256)")
    p.add_argument("--eval-chunks", type=int, default=4, help="held-out validation chunks (default 4)")
    p.add_argument("--gate", choices=("user", "strict"), default="user",
                   help="validation: 'user' (default) refuses broken files and ones worse than the plain tool "
                        "makes of the same type; 'strict' applies koquant's fixed bounds per type")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--name", help="base name of the exported files (default: the model folder's name)")
    p.add_argument("--base-model", help="hub id written as base_model in the model card")
    p.add_argument("-o", "--output", type=Path, help="output folder (default ./<model>-<fmt>)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder that is not a koquant artifact")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")


def configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", nargs="?", type=Path,
                   help="a local Hugging Face model folder, or a Hub id org/name[@revision] (fetched with "
                   "huggingface_hub; HF_HOME, HF_TOKEN and HF_HUB_OFFLINE apply); default: the built-in Korean "
                   "miniature")
    from ..exporters import export_formats

    p.add_argument("--fmt", default="gguf",
                   help="output format: " + ", ".join(f"{f.name} ({f.runtime})" for f in export_formats())
                   + "; several (gguf,gptq,onnx) share one checkpoint check, calibration text and reference, "
                   "into one artifact with a folder per format")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept *.bin pickle weights (loaded with torch.load(weights_only=True))")
    _common(p, None)
    p.add_argument("--int4-algo", help="ONNX int4: gptq (Korean-calibrated, default), rtn or k_quant")
    p.add_argument("--block-size", type=int, help="ONNX int4/int8: MatMulNBits block size, 16-256 (default 32)")
    p.add_argument("--lm-head", choices=("int4", "int8", "float"),
                   help="ONNX int4: precision of the output projection, and of a tied embedding's lm_head "
                        "(default int8; int4 is the builder's own default)")
    p.add_argument("--accuracy-level", type=int,
                   help="ONNX int4/int8: 4 = int8 activations (default, fastest on CPU), 1 = fp32 activations")
    p.add_argument("--bits", type=int, help="GPTQ: weight width, 4 (default) or 8")
    p.add_argument("--group-size", type=int, help="GPTQ: input columns per scale, 128 (default), 64, 32 or -1 (per row)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ: quantize columns in order of activation size (desc_act; default on)")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="sym", action="store_true", default=None, help="GPTQ: symmetric grid (default)")
    sym.add_argument("--asym", dest="sym", action="store_false", help="GPTQ: asymmetric grid (stored zero points)")
    p.add_argument("--damp", type=float, help="GPTQ: Hessian dampening, fraction of its mean diagonal (default 0.05)")
    p.add_argument("--bench", action="store_true",
                   help="then run koquant bench on the export against the source (report in <OUT>-bench)")


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.set_defaults(model_dir=None, fmt="gguf", allow_pickle=False)
    _common(p, "F16,Q8_0,Q4_K_M")


def main_export(args: argparse.Namespace) -> int:
    from ..quant_recipes.recipe import Recipe

    progress = progress_bar()
    name = args.name
    with progress:
        if args.model_dir is None:
            from ..testing.miniatures import DEFAULT_MODEL, build_miniature

            task = progress.add_task(f"building the built-in model {DEFAULT_MODEL}", total=None)
            model_dir = build_miniature(DEFAULT_MODEL, progress=progress)
            progress.update(task, total=1, completed=1)
            name = name or DEFAULT_MODEL
        else:
            model_dir = args.model_dir
        fmts = _formats(args.fmt)
        if args.output is None:
            from ..source.hub import model_name

            args.output = Path.cwd() / f"{name or model_name(model_dir)}-{'-'.join(fmts)}"
        for key in ("calib_ctx", "calib_chunks", "eval_ctx", "eval_chunks"):
            if getattr(args, key) <= 0:
                raise RecipeError(f"--{key.replace('_', '-')} must be positive")
        params = _format_params(args, fmts)
        recipes = []
        for fmt, quants in _quants_by_format(fmts, args.quant).items():
            if fmt == "gptq" and quants is None:
                from ..quant_recipes.gptq import DEFAULT, quant_name

                p = params[fmt]
                quants = (quant_name(p.get("bits", DEFAULT.bits), p.get("group_size", DEFAULT.group_size)),)
            recipes.append(Recipe(
                fmt=fmt, quants=_quants_for(fmt, quants), params=params[fmt],
                calib=None if args.no_calib else args.calib, calib_chat=args.calib_chat,
                calib_ctx=args.calib_ctx, calib_chunks=args.calib_chunks, imatrix=not args.no_imatrix,
                eval_ctx=args.eval_ctx, eval_chunks=args.eval_chunks, threads=args.threads, name=name,
                gate=args.gate,
            ))
        from ..exporters.pipeline import export

        art = export(model_dir, recipes[0] if len(recipes) == 1 else recipes, args.output,
                     allow_pickle=args.allow_pickle, force=args.force, progress=progress, base_model=args.base_model)
    _report(art, args.json)
    if getattr(args, "bench", False):
        from .bench import bench_after_export

        bench_after_export(model_dir, art.path, args.threads, args.json)
    return 0


main_demo = main_export


def _report(art, as_json: bool) -> None:
    if as_json:
        summary = {"artifact": str(art.path), "files": [
            {"path": f.path, "quant": f.quant, "size": f.size, "sha256": f.sha256} | {"validation": {
                k: f.validation[k] for k in ("top1", "kl_mean", "max_abs_diff", "token_ids_identical", "passed")}}
            for f in art.record.files]}
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    rows = []
    for f in art.record.files:
        v = f.validation
        rows.append((f.path, f.quant, f"{f.size / 2**20:.1f}", f"{v['top1']:.4f}", f"{v['kl_mean']:.2e}",
                     f"{v['max_abs_diff']:.2e}", "same" if v["token_ids_identical"] else "DIFF", str(len(f.fallbacks))))
    print_table(f"{art.path} (validated against the source)",
                ("file", "quant", "MiB", "top-1", "mean KL", "max |Δlogit|", "ids", "fallbacks"), rows)
    print(f"manifest: {art.path / 'koquant.json'}\nmodel card: {art.path / 'README.md'}", file=sys.stdout)
