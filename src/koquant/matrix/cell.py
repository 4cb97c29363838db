"""One cell of a release matrix, in a process of its own: export (and bench) into ``OUT/<model>/<recipe>/``.

    python -m koquant.matrix.cell CELL.json OUT RESULT.json

Writes its record to RESULT.json: status ``done`` with every file's size, KL, top-1 (and decode tok/s
when benched), or ``failed`` with the error and its hint. The executor runs this as a child process
that dies with its parent (a Ray worker killed mid-task takes its export with it), so a crash in
native code is one failed record, never a dead matrix.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .spec import Cell


def _recipes(cell: Cell):
    from ..quant_recipes.recipe import Recipe

    out = []
    for d in cell.recipes:
        d = {k: v for k, v in d.items() if k != "version"}
        out.append(Recipe(**{**d, "quants": tuple(d["quants"]), "threads": cell.threads}))
    return out


def run_cell(cell: Cell, out: Path) -> dict:
    """Export (and bench) ``cell`` in this process; its record."""
    from ..exporters.pipeline import export

    folder = cell.folder(out)
    folder.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    recipes = _recipes(cell)
    art = export(cell.source, recipes[0] if len(recipes) == 1 else recipes, folder, force=True)
    files = [{"path": f.path, "quant": f.quant, "format": f.extra.get("format") or art.format, "size": f.size,
              "kl_mean": f.validation.get("kl_mean"), "top1": f.validation.get("top1")} for f in art.record.files]
    record = {"status": "done", "export_s": time.time() - t0, "files": files}
    if cell.bench:
        from ..bench import bench
        from ..source.hub import local_model

        t1 = time.time()
        targets = [folder / sub for sub in (art.record.parts or {})] or [folder]
        source_dir = local_model(cell.source)[0]  # a Hub id: its cached snapshot
        report = bench(source_dir, targets, folder.parent / f"{cell.recipe}.bench", threads=cell.threads, force=True)
        speed = {e["name"]: e.get("decode_tok_s") for e in report.exports}
        for f in files:
            f["decode_tok_s"] = next((v for k, v in speed.items() if k.endswith(str(f["quant"]))), None)
        record["bench_s"] = time.time() - t1
    return record


def _die_with_parent() -> None:
    """In the child: SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def run_in_child(cell: Cell, out: Path, attempt: int, log_dir: Path) -> dict:
    """Run ``cell`` as ``python -m koquant.matrix.cell`` and return its record (a crash becomes a failed one)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{cell.model}--{cell.recipe}"
    job, result, log = log_dir / f"{stem}.cell.json", log_dir / f"{stem}.result.json", log_dir / f"{stem}.log"
    job.write_text(json.dumps(cell.to_dict()))
    result.unlink(missing_ok=True)
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n--- attempt {attempt} on {socket.gethostname()} (pid {os.getpid()})\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "koquant.matrix.cell", str(job), str(out), str(result)],
                              stdout=f, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    record = None
    if result.is_file():
        try:
            record = json.loads(result.read_text())
        except (OSError, json.JSONDecodeError):
            record = None
    if record is None:
        why = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exited with {proc.returncode}")
        record = {"status": "failed", "error": f"the cell's process {why} without a record", "hint": f"see {log}"}
    record.update(cell=cell.id, key=cell.key, attempt=attempt, node=socket.gethostname(), time_s=time.time() - t0,
                  log=str(log))
    return record


def main(argv: list[str]) -> int:
    from .. import procs
    from ..errors import KoquantError

    procs.enable_crash_log()
    job, out, result = Path(argv[0]), Path(argv[1]), Path(argv[2])
    cell = Cell.from_dict(json.loads(job.read_text()))
    try:
        record = run_cell(cell, out)
        code = 0
    except KoquantError as e:
        record = {"status": "failed", "error": e.message, "hint": e.hint, "type": type(e).__name__}
        code = e.exit_code
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False, indent=2))
    os.replace(tmp, result)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
