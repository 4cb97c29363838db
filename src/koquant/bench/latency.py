"""Latency on this machine's CPU: prefill, time to first token, decode, peak memory, and the bandwidth bound.

Each runtime is timed through koquant's :class:`~koquant.runtime.session.Session` (the path a
user's ``koquant chat`` takes, koquant's greedy sampler included), on the same prompt ids:

- ``prefill_<n>_tok_s``: ``n`` prompt tokens from an empty cache, to the logits of the last one;
- ``ttft_s``: the first prefill prompt until the first generated token is chosen;
- ``decode_tok_s``: ``decode_tokens`` decode steps after that first token (each feeds one token
  and chooses the next), greedy, end-of-sequence ignored.

Each measurement runs ``warmup`` times unrecorded, then ``repeats`` times; the median is the
number, min and max the spread. The memory-bandwidth bound of decoding is the machine's measured
bandwidth divided by the weight bytes one decode step reads.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

GREEDY = {"temperature": 0, "repetition_penalty": 1.0, "top_k": 0, "top_p": 1.0}


def stats(values: list[float]) -> dict:
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else 0.0, "values": list(values)}


def time_prefill(session, ids: list[int]) -> float:
    session.reset()
    t0 = time.perf_counter()
    session.next_logits(ids)
    return time.perf_counter() - t0


def time_generation(session, ids: list[int], decode_tokens: int) -> tuple[float, float]:
    """(seconds to the first new token, seconds for ``decode_tokens`` decode steps after it)."""
    session.reset()
    t0 = time.perf_counter()
    gen = session.generate(ids, stream=True, ignore_eos=True, max_new_tokens=decode_tokens + 1, **GREEDY)
    next(gen)
    t1 = time.perf_counter()
    n = sum(1 for _ in gen)
    t2 = time.perf_counter()
    if n != decode_tokens:
        from .settings import BenchError

        raise BenchError(f"the runtime stopped after {n + 1} of {decode_tokens + 1} tokens "
                         f"({session.last.stop_reason if session.last else 'unknown'})")
    return t1 - t0, t2 - t1


def measure(session, prompts: dict[int, list[int]], decode_tokens: int, warmup: int, repeats: int,
            tick: Callable[[], None] = lambda: None) -> dict:
    """Every latency number of one loaded session (see the module docstring)."""
    lengths = sorted(prompts)
    ttft_prompt = prompts[lengths[0]]
    prefill: dict[int, list[float]] = {n: [] for n in lengths}
    ttft, decode = [], []
    for run in range(warmup + repeats):
        times = {n: time_prefill(session, prompts[n]) for n in lengths}
        first, steps = time_generation(session, ttft_prompt, decode_tokens)
        if run >= warmup:
            for n in lengths:
                prefill[n].append(n / times[n])
            ttft.append(first)
            decode.append(decode_tokens / steps)
        tick()
    out = {f"prefill_{n}_tok_s": stats(prefill[n]) for n in lengths}
    out["ttft_s"] = stats(ttft)
    out["decode_tok_s"] = stats(decode)
    out["ttft_prompt_tokens"] = lengths[0]
    out["decode_tokens"] = decode_tokens
    return out


# ---------------------------------------------------------------------------- memory
def memory_bandwidth(size_bytes: int = 256 << 20, repeats: int = 7) -> dict:
    """Bytes/s of a large numpy copy (one thread; read + write counted), best of ``repeats``."""
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    moved = 2 * src.nbytes
    return {"bytes_per_s": moved / min(times), "median_bytes_per_s": moved / statistics.median(times),
            "method": f"numpy copy of {src.nbytes >> 20} MiB, one thread, read + write bytes, best of {repeats}"}
