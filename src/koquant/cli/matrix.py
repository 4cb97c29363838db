"""``koquant matrix SPEC.toml -o OUT``: a release matrix of exports, locally or on a Ray cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="SPEC.toml: [[model]] source = ..., [[recipe]] formats = [...], "
                   "quants = {gguf = [...]}, bench = true|false (see the README)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder: OUT/<model>/<recipe>/ per cell, "
                   "OUT/matrix.md and matrix.json; with Ray, a path every node sees")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: cells one after another here (default); ray: each cell a Ray task")
    p.add_argument("--address", help="Ray: the running cluster to submit to (default: start a local one)")
    p.add_argument("--retries", type=int, help="times a failed cell is tried again (default: the spec's, else 1)")
    p.add_argument("--json", action="store_true", help="print every cell's record as JSON")


def main(args: argparse.Namespace) -> int:
    import json

    from ..matrix import load_spec, run_matrix

    spec = load_spec(args.spec)
    if args.retries is not None and args.retries < 0:
        from ..errors import RecipeError

        raise RecipeError("--retries must be 0 or more")
    print(f"koquant matrix: {len(spec.cells)} cells ({len(spec.models)} models x "
          f"{len(spec.cells) // max(len(spec.models), 1)} recipes), executor {args.executor}", file=sys.stderr)
    outcome = run_matrix(spec, args.output, executor=args.executor, address=args.address, retries=args.retries,
                         on_event=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(outcome.records, ensure_ascii=False, indent=2))
    failed = outcome.failed
    print(f"summary: {args.output / 'matrix.md'} ({len(spec.cells) - len(failed)} done, {len(failed)} failed"
          + (": " + ", ".join(failed) if failed else "") + ")", file=sys.stderr)
    return 1 if failed else 0
