"""koquant serve against llama-cpp-python's own server on the same GGUF and prompts, in one run.

Both servers run on 127.0.0.1 with the same GGUF, context and threads, and get the same Korean chat
requests (greedy, a fixed max_tokens) from N concurrent streaming clients. For each server and
concurrency this prints requests/s, time to first token (TTFT: request sent to first content chunk)
and decode tok/s per request (tokens after the first over the time from the first to the last chunk;
tokens counted by the source tokenizer on the returned text, the same way for both servers).

- concurrency 1: koquant ``--parallel 1`` vs ``python -m llama_cpp.server``;
- concurrency 4: koquant ``--parallel 4`` (four sessions, each with its own KV cache and
  threads/4 threads, llama.cpp maps the weights once) vs the same llama_cpp.server (one model, requests
  one after another: ``--interrupt_requests False``, as by default a new request cuts the running
  stream short, which would count truncated answers as served).

Goal: koquant within 10 % of llama_cpp.server at concurrency 1 and ahead at 4.

    .venv/bin/python benchmarks/serve.py [ARTIFACT] [--quant Q4_K_M] [--real gemma-3-270m] [--keep DIR]
        [--requests 12] [--max-tokens 64] [--threads 2] [--json out.json]

Needs the serve-bench extra (installed by install.sh): llama_cpp.server's FastAPI dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PROMPTS = [
    "자기소개서를 첨삭해 주세요: 저는 성실하고 책임감이 강한 사람입니다.",
    "서울에서 부산까지 기차로 가는 방법을 알려 주세요.",
    "김치찌개를 맛있게 끓이는 비결은 무엇인가요?",
    "대한민국 헌법 제1조의 의미를 쉽게 설명해 주세요.",
    "겨울철 건강 관리 요령을 세 가지만 알려 주세요.",
    "인공지능이 번역에 쓰이는 방식을 간단히 설명해 주세요.",
]


#: ``python -m llama_cpp.server`` after loading the CPU variant koquant loads: the portable wheel ships llama.cpp's
#: CPU code as one module per x86-64 generation (GGML_BACKEND_DL), which llama-cpp-python alone does not load
#: ("Failed to load model from file"), and on an AMX Xeon the variant llama.cpp would pick segfaults (issue 20824)
LLAMA_SERVER = ("import runpy, sys; from koquant.exporters.gguf.llamacpp import cpu_backend; cpu_backend(); "
                "sys.argv[0] = 'llama_cpp.server'; runpy.run_module('llama_cpp.server', run_name='__main__')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, cmd: list[str], url: str, name: str):
        self.name, self.url = name, url
        self.log = tempfile.NamedTemporaryFile(prefix=f"serve-bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited: {Path(self.log.name).read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{name} did not start: {Path(self.log.name).read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)


def one_request(url: str, model: str, prompt: str, max_tokens: int, extra: dict) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, **extra}
    t0 = time.perf_counter()
    first = last = None
    text = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text.append(piece)
    end = time.perf_counter()
    return {"text": "".join(text), "ttft": (first or end) - t0, "decode_span": (last or end) - (first or end),
            "total": end - t0}


def load_round(url: str, model: str, concurrency: int, requests: int, max_tokens: int, tokenizer, extra: dict) -> dict:
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    results: list[dict] = []
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not jobs:
                    return
                prompt = jobs.pop(0)
            r = one_request(url, model, prompt, max_tokens, extra)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rates, tokens, short = [], 0, 0
    for r in results:
        n = len(tokenizer.encode(r["text"], add_special_tokens=False))
        tokens += n
        short += n < max_tokens * 0.8  # re-tokenized text may merge a few tokens; far fewer: the answer was cut
        if n > 1 and r["decode_span"] > 0:
            rates.append((n - 1) / r["decode_span"])
    return {"requests": len(results), "wall_s": wall, "requests_per_s": len(results) / wall,
            "ttft_median_s": statistics.median(r["ttft"] for r in results),
            "decode_tok_s_median": statistics.median(rates) if rates else 0.0,
            "completion_tokens": tokens, "tokens_per_s_total": tokens / wall, "short_answers": short,
            "texts": [r["text"] for r in results]}


def encode_chat_ids(tok_dir, artifact, quant_args, prompt: str) -> list[int]:
    """The ids of ``prompt`` as a one-message chat under the source's own template (koquant.load's encode_chat)."""
    import koquant

    quant = quant_args[1] if quant_args else None
    with koquant.load(artifact, quant=quant) as s:
        return s.encode_chat([{"role": "user", "content": prompt}])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", nargs="?", type=Path, help="a GGUF artifact folder or .gguf (default: the default "
                    "miniature's Q4_K_M export, made in a temp folder)")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--real", help="a real model of koquant.testing.real_models instead (e.g. gemma-3-270m), "
                    "exported by koquant to --quant")
    ap.add_argument("--keep", type=Path, help="keep (and reuse) the export made for the run in this folder")
    ap.add_argument("--requests", type=int, default=12, help="requests per round (default 12)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    from koquant.runtime.loader import resolve
    from koquant.runtime.tokenizer import HFTokenizer

    tmp = tempfile.TemporaryDirectory(prefix="serve-bench-")
    if args.artifact is None:
        import koquant

        if args.real:
            from koquant.testing.real_models import real_model

            name, source = args.real, real_model(args.real)
        else:
            from koquant.testing.miniatures import DEFAULT_MODEL, build_miniature

            name, source = DEFAULT_MODEL, build_miniature(DEFAULT_MODEL)
        out = (args.keep or Path(tmp.name)) / f"{name}-{args.quant}"
        if not (out / "koquant.json").is_file():
            print(f"exporting {name} to {args.quant} ...", file=sys.stderr)
            koquant.export(source, koquant.Recipe("gguf", (args.quant,), name=name), out)
        artifact, quant_args = out, ["--quant", args.quant]
        target = resolve(out, args.quant)
        gguf, tok_dir = target.model, target.tokenizer_dir
    else:
        target = resolve(args.artifact, args.quant if args.artifact.is_dir() else None)
        artifact, gguf, tok_dir = args.artifact, target.model, target.tokenizer_dir
        quant_args = ["--quant", args.quant] if args.artifact.is_dir() else []
    tokenizer = HFTokenizer(tok_dir) if tok_dir else None
    if tokenizer is None:
        raise SystemExit("the GGUF has no source tokenizer beside it; pass a koquant artifact folder")

    rounds = []
    for concurrency, parallel in ((1, 1), (4, 4)):
        per_session = max(args.threads // parallel, 1)
        kq_port, lc_port = free_port(), free_port()
        servers = [
            ("koquant serve", [sys.executable, "-m", "koquant", "serve", str(artifact), *quant_args, "--port",
                               str(kq_port), "--parallel", str(parallel), "--threads", str(per_session), "--ctx",
                               str(args.ctx)], f"http://127.0.0.1:{kq_port}", f"--parallel {parallel}, "
                               f"{per_session} thread(s) per session"),
            ("llama_cpp.server", [sys.executable, "-c", LLAMA_SERVER, "--model", str(gguf), "--host", "127.0.0.1",
                                  "--port", str(lc_port), "--n_ctx", str(args.ctx), "--n_threads", str(args.threads),
                                  "--n_threads_batch", str(args.threads), "--interrupt_requests", "False"],
             f"http://127.0.0.1:{lc_port}", f"one model, {args.threads} threads, requests in turn"),
        ]
        for name, cmd, url, how in servers:
            # every answer exactly max_tokens long: koquant's ignore_eos, llama_cpp.server's min_tokens
            extra = {"ignore_eos": True} if name == "koquant serve" else {"min_tokens": args.max_tokens}
            p = Proc(cmd, url, name)
            try:
                model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
                load_round(url, model, concurrency, concurrency, 8, tokenizer, extra)  # warm-up
                r = load_round(url, model, concurrency, args.requests, args.max_tokens, tokenizer, extra)
                first = httpx.post(url + "/v1/chat/completions", timeout=600, json={
                    "model": model, "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 1})
                r["prompt_tokens"] = first.json()["usage"]["prompt_tokens"]
            finally:
                p.stop()
            r.update(server=name, concurrency=concurrency, setup=how)
            rounds.append(r)
            print(f"{name:18s} c={concurrency}: {r['requests_per_s']:.2f} req/s, TTFT {r['ttft_median_s'] * 1000:.0f} ms, "
                  f"decode {r['decode_tok_s_median']:.1f} tok/s per request, {r['tokens_per_s_total']:.1f} tok/s "
                  f"in all ({how})", file=sys.stderr)

    want = len(encode_chat_ids(tok_dir, artifact, quant_args, PROMPTS[0]))
    print()
    print(f"GGUF: {Path(gguf).name} ({Path(gguf).stat().st_size / 2**20:.1f} MiB), {args.requests} requests per round, "
          f"max_tokens {args.max_tokens}, greedy, ctx {args.ctx}; machine: {platform.processor() or platform.machine()},"
          f" {os.cpu_count()} logical CPUs")
    print()
    print("| server | concurrency | setup | requests/s | TTFT median | decode tok/s per request | tok/s in all "
          "| answers cut short |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rounds:
        print(f"| {r['server']} | {r['concurrency']} | {r['setup']} | {r['requests_per_s']:.2f} | "
              f"{r['ttft_median_s'] * 1000:.0f} ms | {r['decode_tok_s_median']:.1f} | {r['tokens_per_s_total']:.1f} | "
              f"{r['short_answers']} of {r['requests']} |")
    print()
    for c in (1, 4):
        kq = next(r for r in rounds if r["server"] == "koquant serve" and r["concurrency"] == c)
        lc = next(r for r in rounds if r["server"] == "llama_cpp.server" and r["concurrency"] == c)
        print(f"- concurrency {c}: koquant {kq['requests_per_s'] / lc['requests_per_s']:.2f}x llama_cpp.server's "
              f"requests/s, {kq['decode_tok_s_median'] / max(lc['decode_tok_s_median'], 1e-9):.2f}x its decode "
              f"tok/s, TTFT {kq['ttft_median_s'] / max(lc['ttft_median_s'], 1e-9):.2f}x")
    kq, lc = rounds[0]["prompt_tokens"], rounds[1]["prompt_tokens"]
    print(f"- the first prompt as each server feeds it: koquant {kq} tokens, llama_cpp.server {lc} tokens; the "
          f"source template through the source tokenizer: {want} tokens")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "texts"} for r in rounds], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
