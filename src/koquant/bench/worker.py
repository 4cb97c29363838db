"""One runtime, measured in a process of its own: :func:`run` as a ``koquant.procs`` job.

A fresh process per export makes peak memory (VmHWM) that export's own, keeps one runtime's
threads, arenas and caches away from the next, and turns a crash of its native code into a
report. The job says what to load and measure; the result comes back through ``koquant.procs``
and progress as its events. Order:
imports (timed apart), load, latency, peak memory, then quality (whose logit arrays would
otherwise inflate the peak).
"""

from __future__ import annotations

import time

from ..procs import event as _event


def run(job: dict) -> dict:
    import numpy as np

    from ..runtime.loader import backend_class, load, resolve
    from ..runtime.session import peak_rss_bytes, rss_bytes
    from ..runtime.tokenizer import HFTokenizer
    from . import latency as lat
    from .quality import Baseline, BaselineRecorder, ChunkScorer, choice_logliks
    from .settings import BenchSettings

    settings = BenchSettings(**{**job["settings"], "prefill": tuple(job["settings"]["prefill"])})
    fmt = job["format"]
    out: dict = {"name": job["name"]}

    t0 = time.perf_counter()
    backend_class(fmt).import_runtime()
    # every Session reads the source tokenizer with transformers, which imports the model family's
    # modules on first use: part of the import cost, not of loading this export
    target = resolve(job["path"], job["quant"])
    if target.tokenizer_dir is not None:
        HFTokenizer(target.tokenizer_dir)
    out["import_s"] = time.perf_counter() - t0
    out["rss_before_load_bytes"] = rss_bytes()
    _event(phase="load")
    t0 = time.perf_counter()
    session = load(job["path"], quant=job["quant"], **job["options"])
    out["load_s"] = time.perf_counter() - t0
    try:
        out["backend"] = session.backend
        if "device" in (info := session.info()):
            out["device"] = info["device"]
        out["threads"] = session.threads
        mem = session.memory()
        out["model_bytes"], out["rss_after_load_bytes"] = mem["model_bytes"], mem["rss_bytes"]
        if job.get("latency"):
            prompts = {int(n): ids for n, ids in job["latency"]["prompts"].items()}
            runs = settings.warmup + settings.repeats
            done = [0]

            def tick():
                done[0] += 1
                _event(phase="latency", done=done[0], total=runs)

            _event(phase="latency", done=0, total=runs)
            t0 = time.perf_counter()
            out["latency"] = lat.measure(session, prompts, settings.decode_tokens, settings.warmup, settings.repeats, tick)
            out["latency_s"] = time.perf_counter() - t0
        out["peak_rss_bytes"] = peak_rss_bytes()  # load + latency, before quality allocates logits

        q = job.get("quality")
        if q:
            chunks = np.load(q["chunks"])
            baseline = Baseline(q["baseline"]) if q.get("baseline") else None
            record = None
            if q.get("record"):  # the baseline run keeps its scored rows for the exports
                record = BaselineRecorder(q["record"], len(chunks) * settings.scored_per_chunk, session.n_vocab)
                out["kl_method"] = record.kind
            scorer = ChunkScorer(settings, baseline)
            _event(phase="quality", done=0, total=len(chunks))
            t0 = time.perf_counter()
            for i, ids in enumerate(chunks):
                logits = session.logits(ids.tolist())
                if record is not None:
                    record.write(i * settings.scored_per_chunk, scorer.scored_rows(logits))
                scorer.add(i, ids, logits)
                _event(phase="quality", done=i + 1, total=len(chunks))
            if record is not None:
                record.close()
            out["quality"] = scorer.result()
            out["quality_s"] = time.perf_counter() - t0
        mc = job.get("mc")
        if mc:
            _event(phase="mc", done=0, total=1)
            out["mc_logliks"] = choice_logliks(session, [(ids, start) for ids, start in mc["requests"]])
            _event(phase="mc", done=1, total=1)
        out["notes"] = list(session.notes)
    finally:
        session.close()
    return out
