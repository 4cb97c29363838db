"""``koquant bench``: what each export costs in quality and buys in speed and size, against the source.

    from koquant.bench import bench
    report = bench("./my-korean-model", ["./out-gguf", "./out-onnx"], "./bench-report")
    report.export("gguf:Q4_K_M")["kl_mean"], report.export("gguf:Q4_K_M")["decode_tok_s"]

The baseline is the source checkpoint run by transformers in the dtype it is stored in
(``baseline_dtype=`` overrides), or read from a file :func:`save_baseline` wrote, on any machine
(:mod:`.baseline`; ``bench(..., baseline=FILE)``). Quality (:mod:`.quality`): perplexity with llama-perplexity's
chunking, KL divergence and top-1 agreement against the baseline, on identical token ids, and an
optional multiple-choice probe. Latency (:mod:`.latency`): load, TTFT, prefill, decode, peak RSS
and the memory-bandwidth bound, each export in a process of its own (:mod:`.worker`). Output
(:mod:`.report`, :mod:`.plot`): ``report.md``, ``report.json``, ``report.png``, written atomically.
"""

from __future__ import annotations

from .report import Report
from .runner import bench, save_baseline
from .settings import BASELINE_DTYPES, BenchError, BenchSettings

__all__ = ["BASELINE_DTYPES", "BenchError", "BenchSettings", "Report", "bench", "save_baseline"]


from .. import _callable_package  # noqa: E402 - after bench is defined

_callable_package(__name__, "bench")
