"""``bench()``: check every input, run the baseline and each export in a worker process, write the report."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from .. import procs
from ..exporters import format_of
from ..errors import KoquantError, missing_extra
from .settings import BASELINE_DTYPES, BenchError, BenchSettings
from .targets import expand, source_target


def bench(source_dir, artifacts, out=None, *, text=None, mc=None, progress=None, force: bool = False, on_note=None,
          **settings):
    """Measure each export in ``artifacts`` against the source checkpoint ``source_dir``.

    ``artifacts``: paths ``koquant.load`` accepts (an artifact folder stands for every file it
    lists). ``out``: the report folder (``report.md``, ``report.json``, ``report.png``), written
    atomically; None writes nothing. ``text``: a UTF-8 text file (default: the held-out Korean
    Constitution). ``mc``: a JSONL file of multiple-choice items. ``settings``: the fields of
    :class:`~koquant.bench.settings.BenchSettings` (``ctx``, ``chunks``, ``threads``,
    ``baseline_dtype``, ``prefill``, ``decode_tokens``, ``warmup``, ``repeats``, ``latency``,
    ``quality``). ``progress``: a rich Progress to report on. ``on_note(text)``: told, before anything runs,
    of each path skipped because it holds no model (an ``imatrix.gguf`` a shell glob brought along; the
    report lists them too). Returns the :class:`Report`.
    """
    from ..source.checkpoint import Checkpoint
    from ..runtime.tokenizer import HFTokenizer
    from . import latency as lat
    from .quality import choice_requests, load_choices, prepare_text, read_text
    from ..artifact import check_output_location
    from .report import REPORT_LOCATION, Report, environment, write_report

    t_start = time.perf_counter()
    cfg = BenchSettings(**settings).check()
    if out is not None and importlib.util.find_spec("matplotlib") is None:
        raise missing_extra("the bench report's plot needs matplotlib, which is not installed", "bench")
    source_dir = Path(source_dir).expanduser()
    ckpt = Checkpoint.open(source_dir)
    baseline_dtype = cfg.baseline_dtype or ckpt.source_dtype
    if baseline_dtype not in BASELINE_DTYPES:
        raise BenchError(f"the source is stored as {baseline_dtype}, which transformers cannot run as a baseline here",
                         hint="pass --baseline-dtype float32 or bfloat16")
    targets, skipped = expand(list(artifacts))
    for s in skipped if on_note is not None else ():
        on_note(f"skipping {s['path']}: {s['reason']}")
    source = source_target(ckpt, source_dir, baseline_dtype)
    bench_text = read_text(text)
    items = None
    if mc is not None:
        mc_name, items = load_choices(mc)
    if out is not None:
        out = Path(out).expanduser()
        check_output_location(out, force, **REPORT_LOCATION)

    tokenizer = HFTokenizer(source_dir)
    tokens = prepare_text(tokenizer, bench_text, cfg)
    requests = choice_requests(tokenizer, items) if items else None
    threads = cfg.threads or os.cpu_count() or 1
    machine, versions = environment()
    if cfg.latency:
        machine["memory_bandwidth"] = lat.memory_bandwidth()

    with _workdir(out, force) as (folder, work):
        chunks_path = work / "chunks.npy"
        if cfg.quality:
            import numpy as np

            np.save(chunks_path, tokens.ids)
        prompts = {str(n): list(tokens.head[:n]) for n in cfg.prefill}
        results = {}
        baseline_logits = work / "baseline"  # the source's scored rows (bench.quality.BaselineRecorder)
        runs = [(source, {"dtype": baseline_dtype}), *[(t, {}) for t in targets]]
        for i, (target, extra) in enumerate(runs):
            job = {
                "name": target.name, "format": target.format, "path": target.path, "quant": target.quant,
                "options": {"threads": threads, "n_ctx": cfg.n_ctx, **extra},
                "settings": dataclasses.asdict(cfg) | {"threads": threads},
                "latency": {"prompts": prompts} if cfg.latency else None,
                "quality": {"chunks": str(chunks_path),
                            "record": str(baseline_logits) if i == 0 else None,
                            "baseline": None if i == 0 else str(baseline_logits)} if cfg.quality else None,
                "mc": {"requests": requests} if requests else None,
            }
            results[target.name] = _run_worker(job, work / f"job-{i}.json", progress, i, len(runs))
        shutil.rmtree(baseline_logits, ignore_errors=True)

        report = Report.build(
            source=source, baseline_dtype=baseline_dtype, stored_dtype=ckpt.source_dtype, targets=targets,
            results=results, skipped=skipped, settings=cfg, threads=threads, text=bench_text, tokens=tokens,
            mc=(mc_name, items) if items else None, machine=machine, versions=versions,
            wall_s=time.perf_counter() - t_start)
        if folder is not None:
            write_report(report, folder)
    return report


@contextlib.contextmanager
def _workdir(out: Path | None, force: bool):
    """(report folder or None, scratch folder): staged beside ``out`` and renamed into place on success."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="koquant-bench-") as tmp:
            yield None, Path(tmp)
        return

    from ..artifact import staged_output
    from .report import REPORT_LOCATION

    with staged_output(out, force, **REPORT_LOCATION) as tmp:
        work = tmp / ".work"
        work.mkdir()
        yield tmp, work
        shutil.rmtree(work, ignore_errors=True)


_PHASES = {"load": "loading", "latency": "latency", "quality": "quality", "mc": "multiple choice"}


def _run_worker(job: dict, job_path: Path, progress, index: int, count: int) -> dict:
    label = f"[{index + 1}/{count}] {job['name']}"
    task = progress.add_task(f"{label}: starting", total=None) if progress is not None else None

    def on_event(ev: dict) -> None:
        if task is None:
            return
        desc = f"{label}: {_PHASES.get(ev['phase'], ev['phase'])}"
        if "total" in ev:
            progress.update(task, description=desc, total=ev["total"], completed=ev["done"])
        else:
            progress.update(task, description=desc)

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    try:
        result = procs.run("koquant.bench.worker:run", job, backend=format_of(job["format"]).runtime,
                           step=f"benching {job['name']}", work=job_path.parent, env=env, on_event=on_event,
                           log=job_path.with_suffix(".log"))
    except procs.NativeCrashError:
        raise
    except KoquantError as e:
        raise BenchError(f"benching {job['name']} ({job['path']}) failed: {e.message}", hint=e.hint) from None
    if task is not None:
        progress.update(task, description=f"{label}: done", total=1, completed=1)
    return result
