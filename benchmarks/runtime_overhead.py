"""What does koquant's runtime cost on top of llama-cpp-python? Decode speed on the same token ids.

Loads one GGUF twice - as a koquant Session and as llama-cpp-python's ``Llama`` - and decodes
the same chat prompt ids greedily for N tokens with each, repeating the runs interleaved so
that machine noise hits both alike. Decode speed excludes the prompt (timing starts when the
first new token is out). Three rows:

- llama-cpp-python ``Llama.generate`` (its own greedy sampler), what a user would call directly;
- koquant ``Session.generate`` (numpy sampler, stop-token checks, KV bookkeeping);
- koquant's llama.cpp backend alone (``forward`` + ``argmax``), to show where the time goes.

The goal is an overhead of at most 3 % for the Session against llama-cpp-python.

    .venv/bin/python benchmarks/runtime_overhead.py [ARTIFACT_OR_GGUF] [--quant Q4_K_M] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import koquant
from koquant.testing.miniatures import DEFAULT_MODEL, build_miniature

CONVERSATION = [{"role": "system", "content": "당신은 한국어 자기소개서 첨삭 전문가입니다."},
                {"role": "user", "content": "자기소개서를 첨삭해 주세요: 저는 성실하고 책임감이 강한 사람입니다."}]


def _timed(tokens) -> tuple[list[int], float]:
    """Consume a token iterator; seconds from the first token to the last."""
    out, start = [], None
    for t in tokens:
        out.append(int(t))
        if start is None:
            start = time.perf_counter()
    return out, time.perf_counter() - start


def run(path: Path, quant: str | None, n: int, repeats: int, threads: int, n_ctx: int, sample: bool = False) -> dict:
    import llama_cpp

    session = koquant.load(path, quant=quant, threads=threads, n_ctx=n_ctx)
    ids = session.encode_chat(CONVERSATION)
    llm = llama_cpp.Llama(model_path=str(session.path), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    backend = session._backend

    # greedy, or the same sampling settings on both sides (then the tokens differ: different random streams)
    lcpp = dict(temp=0.8, top_k=40, top_p=0.95) if sample else dict(temp=0.0, top_k=1, top_p=1.0)
    ours = dict(temperature=0.8, top_k=40, top_p=0.95, seed=0) if sample else dict(temperature=0)

    def direct():
        llm.reset()
        gen = llm.generate(ids, min_p=0.0, repeat_penalty=1.0, **lcpp)
        return _timed(t for _, t in zip(range(n), gen))  # range first: no extra decode

    def via_session():
        session.reset()
        return _timed(session.generate(ids, stream=True, repetition_penalty=1.0, max_new_tokens=n,
                                       ignore_eos=True, **ours))

    def backend_only():
        backend.rewind(0)
        logits = backend.forward(ids)

        def loop():
            nonlocal logits
            for i in range(n):
                tok = int(np.argmax(logits))
                yield tok
                if i < n - 1:
                    logits = backend.forward((tok,))

        result = _timed(loop())
        session.reset()
        return result

    runs = {"llama-cpp-python Llama.generate": direct, "koquant Session.generate": via_session}
    if not sample:
        runs["koquant backend forward+argmax"] = backend_only
    times = {k: [] for k in runs}
    seqs = {}
    for name, fn in runs.items():  # warm-up
        seqs[name] = fn()[0]
    for _ in range(repeats):
        for name, fn in runs.items():
            seq, seconds = fn()
            times[name].append(seconds)
    llm.close()
    info = session.info()
    session.close()
    result = {"model": str(info["path"]), "quant": info["quant"], "threads": threads, "prompt_tokens": len(ids),
              "decoding": "sampling (temperature 0.8, top_k 40, top_p 0.95)" if sample else "greedy",
              "new_tokens": n, "repeats": repeats, "rows": {}}
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        result["rows"][name] = {"decode_tok_s": (n - 1) / med, "best_tok_s": (n - 1) / best, "median_s": med,
                                "best_s": best, "runs_s": ts}
    base = result["rows"]["llama-cpp-python Llama.generate"]
    for row in result["rows"].values():
        row["overhead_pct"] = (row["median_s"] / base["median_s"] - 1) * 100
        row["overhead_best_pct"] = (row["best_s"] / base["best_s"] - 1) * 100
    first = seqs["llama-cpp-python Llama.generate"]
    result["same_tokens"] = None if sample else all(s == first for s in seqs.values())
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", nargs="?", type=Path, help="a koquant GGUF artifact or .gguf (default: export the "
                    "built-in miniature)")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--sample", action="store_true", help="sample (temperature 0.8, top_k 40, top_p 0.95) instead of greedy")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.artifact
        quant = args.quant
        if path is None:
            recipe = koquant.Recipe("gguf", (args.quant,), name=DEFAULT_MODEL, calib_chunks=8)
            path = koquant.export(build_miniature(DEFAULT_MODEL), recipe, Path(tmp) / "gguf").path
        elif path.suffix == ".gguf":
            quant = None
        res = run(path, quant, args.tokens, args.repeats, args.threads, args.ctx, args.sample)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"model: {res['model']} ({res['quant']}), {res['threads']} thread(s), prompt {res['prompt_tokens']} tokens, "
          f"{res['new_tokens']} new tokens, {res['decoding']}, {res['repeats']} interleaved runs each\n")
    print(f"{'':34} {'median tok/s':>12} {'overhead':>9} {'best tok/s':>11} {'overhead':>9}")
    for name, row in res["rows"].items():
        print(f"{name:34} {row['decode_tok_s']:12.1f} {row['overhead_pct']:+8.1f}% {row['best_tok_s']:11.1f} "
              f"{row['overhead_best_pct']:+8.1f}%")
    print("\n(median and best of the interleaved runs; on a busy machine the best runs are the ones without noise)")
    if res["same_tokens"] is not None:
        print(f"\nsame greedy tokens on all three: {'yes' if res['same_tokens'] else 'NO'}")


if __name__ == "__main__":
    main()
