"""``koquant matrix``: every (model, recipe) cell of a spec, locally or as Ray tasks, resumable.

Cells are independent: each writes its artifact to ``OUT/<model>/<recipe>/`` and its record to
``OUT/.matrix/``. A rerun skips a cell whose record says done with the same key (the hash of source,
recipes and bench) and whose artifact still verifies. A failed cell (validation, a crash, a killed
worker or node) is recorded with its error and retried ``retries`` times; the others go on.

- ``local``: cells one after another on this machine, each in a child process.
- ``ray``: each cell a Ray task (``num_cpus`` = the spec's threads, ``memory`` = koquant plan's estimate
  of that export's peak RAM), on the cluster at ``address`` or a local one. A worker that dies is
  retried by Ray; OUT must be a path every node sees (a shared file system).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KoquantError
from .spec import Cell, Spec

EXECUTORS = ("local", "ray")
STATE = ".matrix"


class MatrixError(KoquantError):
    """The matrix cannot run as asked."""


@dataclass
class Outcome:
    records: dict[str, dict] = field(default_factory=dict)  # cell id -> its last record

    @property
    def failed(self) -> list[str]:
        return [k for k, r in self.records.items() if r.get("status") != "done"]


def _record_path(out: Path, cell: Cell) -> Path:
    return out / STATE / cell.model / f"{cell.recipe}.json"


def _finished(out: Path, cell: Cell) -> dict | None:
    """The record of a cell done before with the same key whose artifact still verifies."""
    p = _record_path(out, cell)
    try:
        record = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("status") != "done" or record.get("key") != cell.key:
        return None
    from ..artifact.verify import verify_artifact

    try:
        if not verify_artifact(cell.folder(out)).intact:
            return None
    except KoquantError:
        return None
    return {**record, "skipped": True}


def _save(out: Path, cell: Cell, record: dict) -> None:
    p = _record_path(out, cell)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False, indent=2))
    os.replace(tmp, p)


def memory_for(cell: Cell) -> int:
    """Bytes of RAM the cell's export needs (koquant plan's estimate from config.json), for Ray's scheduler."""
    from ..plan.export_memory import export_peak
    from ..plan.model_spec import spec_from_path
    from ..source.hub import local_model

    spec = spec_from_path(local_model(cell.source)[0])
    return export_peak(spec, {r["fmt"]: r["quants"] for r in cell.recipes}, imatrix=True)


def run_matrix(spec: Spec, out: str | os.PathLike, *, executor: str = "local", address: str | None = None,
               retries: int | None = None, progress=None, on_event=None) -> Outcome:
    """Run every cell of ``spec`` into ``out``; records, summary (matrix.json, matrix.md, plots) included."""
    if executor not in EXECUTORS:
        raise MatrixError(f"unknown executor {executor!r}", hint="use --executor local or --executor ray")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    retries = spec.retries if retries is None else retries
    say = on_event or (lambda text: None)
    outcome = Outcome()
    todo = []
    for cell in spec.cells:
        done = _finished(out, cell)
        if done is not None:
            outcome.records[cell.id] = done
            say(f"{cell.id}: done before (same recipe, artifact verifies), skipped")
        else:
            todo.append(cell)
    if todo:
        run = _run_local if executor == "local" else _run_ray
        for cell, record in run(todo, out, retries, address, say):
            outcome.records[cell.id] = record
            _save(out, cell, record)
    from .summary import write_summary

    write_summary(out, spec, outcome.records)
    return outcome


def _attempts(cell: Cell, out: Path, retries: int, say, attempt_fn):
    record = None
    for attempt in range(1, retries + 2):
        record = attempt_fn(cell, attempt)
        if record.get("status") == "done":
            say(f"{cell.id}: done in {record.get('time_s', 0):.0f} s (attempt {attempt})")
            return record
        say(f"{cell.id}: failed on attempt {attempt}: {record.get('error')}")
    return record


def _run_local(cells: list[Cell], out: Path, retries: int, address, say):
    from .cell import run_in_child

    if address:
        raise MatrixError("--address is for --executor ray", hint="drop --address, or add --executor ray")
    for cell in cells:
        say(f"{cell.id}: started")
        yield cell, _attempts(cell, out, retries, say, lambda c, a: run_in_child(c, out, a, out / STATE / "logs"))


def _ray_cell(cell_dict: dict, out: str, attempt: int) -> dict:
    """The Ray task: the cell in a child process of this worker (it dies with the worker)."""
    import ray

    from .cell import run_in_child

    record = run_in_child(Cell.from_dict(cell_dict), Path(out), attempt, Path(out) / STATE / "logs")
    ctx = ray.get_runtime_context()
    record["ray_node"] = ctx.get_node_id()
    record["ray_worker_pid"] = os.getpid()
    return record


def _run_ray(cells: list[Cell], out: Path, retries: int, address: str | None, say):
    try:
        import ray
    except ImportError:
        from ..errors import missing_extra

        raise missing_extra("--executor ray needs Ray", "ray") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                           if k.startswith(("KOQUANT_", "HF_"))}})
    task = ray.remote(_ray_cell)
    try:
        pending: dict = {}
        attempts: dict[str, int] = {}

        def submit(cell: Cell) -> None:
            attempts[cell.id] = attempts.get(cell.id, 0) + 1
            opts = {"num_cpus": cell.threads, "memory": memory_for(cell), "max_retries": max(retries, 1),
                    "retry_exceptions": False, "name": f"koquant-matrix:{cell.id}"}
            pending[task.options(**opts).remote(cell.to_dict(), str(out), attempts[cell.id])] = cell
            say(f"{cell.id}: submitted (attempt {attempts[cell.id]}, {opts['num_cpus']} CPUs, "
                f"{opts['memory'] / 2**30:.1f} GiB)")

        for cell in cells:
            submit(cell)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - a worker or node lost beyond Ray's retries: the cell's error
                record = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                          "cell": cell.id, "key": cell.key, "attempt": attempts[cell.id]}
            if record.get("status") == "done":
                say(f"{cell.id}: done in {record.get('time_s', 0):.0f} s on {record.get('node')}")
                yield cell, record
            elif attempts[cell.id] <= retries:
                say(f"{cell.id}: failed on attempt {attempts[cell.id]}: {record.get('error')}; retrying")
                submit(cell)
            else:
                say(f"{cell.id}: failed: {record.get('error')}")
                yield cell, record
    finally:
        if started_here:
            ray.shutdown()
