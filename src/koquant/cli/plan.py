"""``koquant plan``: deployment size planning from config.json alone.

The top-level CLI (:mod:`koquant.cli.main`) registers this subcommand with :func:`configure` and
:func:`main`; ``python -m koquant.plan`` (``plan/__main__.py``) runs it standalone. :func:`main` raises
:class:`~koquant.errors.KoquantError` for bad input and leaves printing it to the caller.
"""

from __future__ import annotations

import argparse
import json
import sys

from koquant.errors import RecipeError

__all__ = ["configure", "main"]

_EPILOG = """examples:
  koquant plan --list
  koquant plan --preset ocelot-10.8b
  koquant plan ./my-finetune --ctx 4096 --device laptop-16gb
  koquant plan config.json --kv-type q8_0 --ram 8GB --json
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``plan`` arguments to ``parser``."""
    from koquant.plan.devices import DEVICES
    from koquant.plan.kv import KV_TYPES
    from koquant.plan.presets import PRESETS

    parser.description = (
        "Plan file sizes (GGUF, GPTQ, ONNX, bf16 source) and runtime RAM of a model from its config.json,\n"
        "and which devices each export fits. Reads no weights and needs no network."
    )
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("source", nargs="?", help="model folder or config.json (or use --preset)")
    parser.add_argument("--preset", metavar="NAME", help="a built-in configuration: " + ", ".join(PRESETS))
    parser.add_argument("--list", action="store_true", help="list the presets (architecture, parameters) and exit")
    parser.add_argument(
        "--ctx", default="2048,4096,8192", help="context lengths, comma separated (default: %(default)s)"
    )
    parser.add_argument(
        "--kv-type", default="f16", choices=sorted(KV_TYPES), help="llama.cpp KV cache type (default: f16)"
    )
    parser.add_argument(
        "--device", metavar="NAME", action="append", help="check only this device (repeatable): " + ", ".join(DEVICES)
    )
    parser.add_argument("--ram", metavar="SIZE", help="check a custom memory budget, e.g. 8GB (nothing reserved)")
    parser.add_argument(
        "--types",
        default=None,
        help="GGUF types to show: 'common' (table default), 'all' (JSON default) or a comma list like Q4_K_M,Q8_0",
    )
    parser.add_argument("--imatrix", action="store_true", help="plan GGUF mixes as made with an importance matrix")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--tensors", action="store_true", help="with --json: include every GGUF tensor and its type")


def _parse_ctx(text: str) -> list[int]:
    out = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1024 if part.endswith("k") else 1
        try:
            out.append(int(part[:-1] if mult > 1 else part) * mult)
        except ValueError:
            raise RecipeError(
                f"--ctx: {part!r} is not a number", hint="e.g. --ctx 2048,4096,8192 or --ctx 8k"
            ) from None
    if not out:
        raise RecipeError("--ctx is empty", hint="e.g. --ctx 2048,4096,8192")
    return out


def _gguf_types(arg: str | None, for_json: bool) -> list[str] | None:
    from koquant.quant_recipes.gguf import FILE_TYPES, file_type
    from koquant.plan.render import COMMON_GGUF_TYPES

    if arg is None:
        arg = "all" if for_json else "common"
    if arg.lower() == "all":
        return list(FILE_TYPES)
    if arg.lower() == "common":
        return list(COMMON_GGUF_TYPES)
    return [file_type(t.strip()).name for t in arg.split(",") if t.strip()]


def _list_presets(as_json: bool) -> int:
    """``--list``: every preset with its architecture, parameter counts and description."""
    from koquant.plan.presets import PRESETS, preset_spec

    rows = []
    for p in PRESETS.values():
        s = preset_spec(p.id)
        rows.append({"id": p.id, "arch": s.arch, "hf_class": p.config["architectures"][0], "n_params": s.n_params,
                     "n_active_params": s.n_active_params, "seed": p.seed, "description": p.description})
    if as_json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for r in rows:
        size = f"{r['n_params'] / 1e9:.2f} B"
        if r["n_active_params"] != r["n_params"]:
            size += f" ({r['n_active_params'] / 1e9:.2f} B active)"
        print(f"{r['id']:18s} {r['hf_class']:22s} {size:22s} {r['description']}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``koquant plan``; returns the exit code. Raises KoquantError on bad input."""
    from koquant.plan.planner import plan
    from koquant.plan.presets import preset_spec

    if getattr(args, "list", False):
        return _list_presets(args.json)
    if bool(args.source) == bool(args.preset):
        raise RecipeError(
            "give either a model folder / config.json or --preset NAME"
            if not args.source
            else "give a source or --preset, not both",
            hint="e.g. koquant plan --preset ocelot-10.8b",
        )
    types = _gguf_types(args.types, args.json)
    result = plan(
        preset_spec(args.preset) if args.preset else args.source,
        ctx=_parse_ctx(args.ctx),
        kv_type=args.kv_type,
        device=args.device,
        ram=args.ram,
        gguf_types=types,
        imatrix=args.imatrix,
    )
    if args.json:
        json.dump(result.to_dict(tensors=args.tensors), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from koquant.plan.render import render

        render(result)
    return 0


def run(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m koquant.plan``): prints KoquantError and exits non-zero."""
    import os

    from koquant.errors import KoquantError

    parser = argparse.ArgumentParser(prog="koquant plan")
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except KoquantError as e:
        if os.environ.get("KOQUANT_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
