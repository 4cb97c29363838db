"""A matrix's summary: ``matrix.json`` (every cell's record), ``matrix.md`` (a table), one plot per model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .spec import Spec


def rows(spec: Spec, records: dict[str, dict]) -> list[dict]:
    """One row per exported file (or per cell without files): status, size, KL, top-1, speed, time, node."""
    out = []
    for cell in spec.cells:
        r = records.get(cell.id, {"status": "not run"})
        base = {"model": cell.model, "recipe": cell.recipe, "status": r.get("status"), "attempt": r.get("attempt"),
                "time_s": r.get("time_s"), "node": r.get("node"), "skipped": bool(r.get("skipped")),
                "error": r.get("error")}
        files = r.get("files") or []
        if not files:
            out.append({**base, "file": None})
        for f in files:
            out.append({**base, "file": f["path"], "format": f.get("format"), "quant": f.get("quant"),
                        "size": f.get("size"), "kl_mean": f.get("kl_mean"), "top1": f.get("top1"),
                        "decode_tok_s": f.get("decode_tok_s")})
    return out


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def write_summary(out: Path, spec: Spec, records: dict[str, dict]) -> None:
    table = rows(spec, records)
    data = {"spec": str(spec.path) if spec.path else None, "cells": [records.get(c.id, {"status": "not run",
                                                                                          "cell": c.id})
                                                                    for c in spec.cells], "rows": table}
    _atomic(out / "matrix.json", json.dumps(data, ensure_ascii=False, indent=2))
    done = sum(1 for c in spec.cells if records.get(c.id, {}).get("status") == "done")
    lines = [f"# Release matrix ({done} of {len(spec.cells)} cells done)", "",
             "| model | recipe | status | file | quant | MiB | mean KL | top-1 | decode tok/s | time | node |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        status = r["status"] + (" (kept)" if r["skipped"] else "")
        if r["status"] != "done" and r.get("error"):
            status += f": {r['error'][:120]}"
        size = r.get("size")
        lines.append(f"| {r['model']} | {r['recipe']} | {status} | {r['file'] or '–'} | {r.get('quant') or '–'} | "
                     f"{_fmt(size / 2**20 if size else None, '.1f')} | {_fmt(r.get('kl_mean'), '.3g')} | "
                     f"{_fmt(r.get('top1'), '.4f')} | {_fmt(r.get('decode_tok_s'), '.1f')} | "
                     f"{_fmt(r.get('time_s'), '.0f')} s | {r.get('node') or '–'} |")
    plots = _plots(out, table)
    if plots:
        lines += ["", *[f"![{m}]({p.name})" for m, p in plots]]
    _atomic(out / "matrix.md", "\n".join(lines) + "\n")


def _plots(out: Path, table: list[dict]) -> list[tuple[str, Path]]:
    """Size vs mean KL of every file of each model, one PNG per model (needs matplotlib, the bench extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for model in sorted({r["model"] for r in table}):
        pts = [r for r in table if r["model"] == model and r.get("size") and r.get("kl_mean") is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in pts:
            ax.scatter(r["size"] / 2**20, max(r["kl_mean"], 1e-7))
            ax.annotate(f"{r['recipe']}:{r['quant']}", (r["size"] / 2**20, max(r["kl_mean"], 1e-7)), fontsize=7)
        ax.set_xlabel("file size (MiB)")
        ax.set_ylabel("mean KL vs the source")
        ax.set_yscale("log")
        ax.set_title(f"{model}: size vs KL")
        fig.tight_layout()
        p = out / f"matrix-{model}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        made.append((model, p))
    return made


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
