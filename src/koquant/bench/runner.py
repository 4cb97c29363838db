"""``bench()``: check every input, run the baseline and each export in a worker process, write the report;
``save_baseline()``: run the baseline alone and save it for later benches."""

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


def bench(source_dir, artifacts, out=None, *, text=None, mc=None, baseline=None, progress=None, force: bool = False,
          on_note=None, **settings):
    """Measure each export in ``artifacts`` against the source checkpoint ``source_dir``.

    ``artifacts``: paths ``koquant.load`` accepts (an artifact folder stands for every file it
    lists). ``out``: the report folder (``report.md``, ``report.json``, ``report.png``), written
    atomically; None writes nothing. ``text``: a UTF-8 text file (default: the held-out Korean
    Constitution). ``mc``: a JSONL file of multiple-choice items. ``baseline``: a file
    :func:`save_baseline` wrote, read instead of running the source (whose weights ``source_dir``
    then need not hold). ``settings``: the fields of
    :class:`~koquant.bench.settings.BenchSettings` (``ctx``, ``chunks``, ``threads``,
    ``baseline_dtype``, ``prefill``, ``decode_tokens``, ``warmup``, ``repeats``, ``latency``,
    ``quality``). ``progress``: a rich Progress to report on. ``on_note(text)``: told, before anything runs,
    of each path skipped because it holds no model (an ``imatrix.gguf`` a shell glob brought along; the
    report lists them too). Returns the :class:`Report`.
    """
    from . import latency as lat
    from ..artifact import check_output_location
    from .report import REPORT_LOCATION, Report, environment, write_report

    t_start = time.perf_counter()
    cfg = BenchSettings(**settings).check()
    if out is not None and importlib.util.find_spec("matplotlib") is None:
        raise missing_extra("the bench report's plot needs matplotlib, which is not installed", "bench")
    source_dir = Path(source_dir).expanduser()
    saved, notes = None, []
    if baseline is None:
        ckpt, baseline_dtype = _source(source_dir, cfg)
        source, stored_dtype = source_target(ckpt, source_dir, baseline_dtype), ckpt.source_dtype
    else:
        from .baseline import SavedBaseline

        saved = SavedBaseline.open(baseline)
        saved.check_settings(cfg)
        notes = saved.check_model(source_dir)
        source, baseline_dtype, stored_dtype = saved.source_target(source_dir), saved.dtype, saved.stored_dtype
    targets, skipped = expand(list(artifacts))
    for s in skipped if on_note is not None else ():
        on_note(f"skipping {s['path']}: {s['reason']}")
    if saved is not None:
        saved.check_exports(targets)
    if out is not None:
        out = Path(out).expanduser()
        check_output_location(out, force, **REPORT_LOCATION)
    bench_text, choices, tokens, requests = _inputs(source_dir, text, mc, cfg, saved)
    threads = cfg.threads or os.cpu_count() or 1
    machine, versions = environment()
    if cfg.latency:
        machine["memory_bandwidth"] = lat.memory_bandwidth()

    with _workdir(out, force) as (folder, work):
        chunks_path = _save_chunks(work, tokens, cfg)
        prompts = {str(n): list(tokens.head[:n]) for n in cfg.prefill} if cfg.latency else None
        results = {}
        # the source's scored rows (bench.quality.BaselineRecorder), or the saved baseline's
        rows = work / "baseline" if saved is None else saved.path
        count = len(targets) + (saved is None)
        if saved is None:
            results[source.name] = _run_worker(
                _job(source, {"dtype": baseline_dtype}, cfg, threads, chunks_path, prompts, requests, record=rows),
                work / "job-0.json", progress, 0, count)
        else:
            results[source.name] = saved.source_result(notes, mc=bool(requests))
        for i, target in enumerate(targets, start=count - len(targets)):
            results[target.name] = _run_worker(_job(target, {}, cfg, threads, chunks_path, prompts, requests,
                                                    baseline=rows), work / f"job-{i}.json", progress, i, count)
        if saved is None:
            shutil.rmtree(rows, ignore_errors=True)

        report = Report.build(
            source=source, baseline_dtype=baseline_dtype, stored_dtype=stored_dtype, targets=targets,
            results=results, skipped=skipped, settings=cfg, threads=threads, text=bench_text, tokens=tokens,
            mc=choices, machine=machine, versions=versions, wall_s=time.perf_counter() - t_start,
            baseline_file=saved.describe() if saved is not None else None)
        if folder is not None:
            write_report(report, folder)
    return report


def save_baseline(source_dir, file, *, text=None, mc=None, device: str = "auto", progress=None, force: bool = False,
                  **settings):
    """Run the source once over the bench's text and write what the exports are compared against to ``file``
    (:mod:`koquant.bench.baseline`), for ``bench(..., baseline=file)`` to reuse on any machine.

    ``device``: where transformers runs it: ``auto`` (CUDA where torch sees a GPU, else the CPU), ``cpu`` or
    ``cuda``. ``text``, ``mc``, ``progress`` and ``settings`` (``ctx``, ``chunks``, ``threads``,
    ``baseline_dtype``) as :func:`bench` takes them; the later bench must give the same. ``file`` is written
    atomically; an existing file is replaced only if it is a baseline, or with ``force``. Returns the
    :class:`~koquant.bench.baseline.SavedBaseline`.
    """
    from ..runtime.backends.hf import DEVICES
    from .baseline import SavedBaseline, check_destination, staged_file

    cfg = dataclasses.replace(BenchSettings(**settings), latency=False, quality=True).check()
    if device not in DEVICES:
        raise BenchError(f"device {device!r} is not supported", hint="choose one of " + ", ".join(DEVICES))
    source_dir = Path(source_dir).expanduser()
    ckpt, dtype = _source(source_dir, cfg)
    file = Path(file).expanduser()
    check_destination(file, force)
    source = source_target(ckpt, source_dir, dtype)
    bench_text, choices, tokens, requests = _inputs(source_dir, text, mc, cfg)
    threads = cfg.threads or os.cpu_count() or 1
    with staged_file(file) as work:
        rows = work / "baseline"
        job = _job(source, {"dtype": dtype, "device": device}, cfg, threads, _save_chunks(work, tokens, cfg), None,
                   requests, record=rows)
        result = _run_worker(job, work / "job-0.json", progress, 0, 1)
        saved = SavedBaseline.write(work / "file", rows, ckpt=ckpt, source=source, text=bench_text, tokens=tokens,
                                    settings=cfg, dtype=dtype, threads=threads, mc=choices, requests=requests,
                                    result=result)
    saved.path = file
    return saved


def _source(source_dir: Path, cfg: BenchSettings):
    """The opened source checkpoint and the dtype the baseline runs it in."""
    from ..source.checkpoint import Checkpoint

    ckpt = Checkpoint.open(source_dir)
    dtype = cfg.baseline_dtype or ckpt.source_dtype
    if dtype not in BASELINE_DTYPES:
        raise BenchError(f"the source is stored as {dtype}, which transformers cannot run as a baseline here",
                         hint="pass --baseline-dtype float32 or bfloat16")
    return ckpt, dtype


def _inputs(source_dir: Path, text, mc, cfg: BenchSettings, saved=None):
    """(text, (probe name, items) or None, tokenized text, probe requests or None), checked against ``saved``."""
    from ..runtime.tokenizer import HFTokenizer
    from .quality import choice_requests, load_choices, prepare_text, read_text

    bench_text = read_text(text)
    if saved is not None:
        saved.check_text(bench_text)
    choices = load_choices(mc) if mc is not None else None
    tokenizer = HFTokenizer(source_dir)
    tokens = prepare_text(tokenizer, bench_text, cfg)
    requests = choice_requests(tokenizer, choices[1]) if choices else None
    if saved is not None:
        saved.check_tokens(tokens, requests)
    return bench_text, choices, tokens, requests


def _save_chunks(work: Path, tokens, cfg: BenchSettings) -> Path:
    path = work / "chunks.npy"
    if cfg.quality:
        import numpy as np

        np.save(path, tokens.ids)
    return path


def _job(target, options: dict, cfg: BenchSettings, threads: int, chunks: Path, prompts: dict | None, requests,
         record: Path | None = None, baseline: Path | None = None) -> dict:
    """A bench worker's job (:func:`koquant.bench.worker.run`): ``record`` the scored rows (the source), or score
    against ``baseline``'s."""
    return {
        "name": target.name, "format": target.format, "path": target.path, "quant": target.quant,
        "options": {"threads": threads, "n_ctx": cfg.n_ctx, **options},
        "settings": dataclasses.asdict(cfg) | {"threads": threads},
        "latency": {"prompts": prompts} if cfg.latency else None,
        "quality": {"chunks": str(chunks), "record": str(record) if record else None,
                    "baseline": str(baseline) if baseline else None} if cfg.quality else None,
        "mc": {"requests": requests} if requests else None,
    }


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
