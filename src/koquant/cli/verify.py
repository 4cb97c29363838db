"""``koquant verify ARTIFACT``: exit 0 when every file matches koquant.json, 4 when not, 2 for no artifact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import IntegrityError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help="the folder koquant export wrote (with koquant.json)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (exit code as without it)")


def main(args: argparse.Namespace) -> int:
    from ..artifact.verify import verify_artifact

    result = verify_artifact(args.artifact)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0 if result.intact else IntegrityError.exit_code
    for note in result.notes:
        print(f"note: {note}")
    for f in result.findings:
        print(f"  {f.kind.upper():8} {f.path}" + (f": {f.detail}" if f.detail else ""))
    if not result.intact:
        counts = ", ".join(f"{result.count(k)} {k}" for k in ("changed", "missing", "extra") if result.count(k))
        raise IntegrityError(f"{result.artifact} differs from its koquant.json: {counts}",
                             hint="do not use or publish these files; download them again or re-run the export")
    print(f"{result.artifact}: intact, {result.files} files ({result.bytes / 2**20:.1f} MiB) match koquant.json")
    print(f"koquant.json sha256 {result.manifest_sha256} (compare it with the one the publisher gives)")
    return 0
