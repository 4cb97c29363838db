"""llama.cpp on this CPU: koquant's portable build against the native one, extra buffer types on and off.

    python benchmarks/llama_cpu_build.py [--native-wheel WHEEL] [--threads 2] [--layers 16] [-o results.json]

A random-weight Llama of TinyLlama's shape (hidden 2048, 16 layers, FFN 5632, 32k vocabulary,
1.1 B parameters; speed does not depend on the weights' values) is written as F16 and quantized
to Q4_0 and Q4_K_M. Each configuration runs in a process of its own, so each gets its own CPU
variant and llama.cpp library:

- portable build (``install.sh``), the variant koquant picks on this CPU, extra buffers on (koquant's
  default) and off;
- portable build forced to the AVX2 baseline (``haswell``: what a machine without AVX-512 runs);
- portable build forced to the AMX variant (``sapphirerapids``) with extra buffers on: on an AMX host
  this is llama.cpp issue 20824, and the crash is recorded as koquant reports it;
- with ``--native-wheel``: the same llama-cpp-python built with llama.cpp's default ``-march=native``,
  extra buffers on (on an AMX host: the AMX buffer type) and off.

Prefill: tokens/s of one 512-token batch from an empty cache; decode: tokens/s of 64 single-token
steps after a 16-token prompt; median of ``--repeats`` runs after one warm-up. The build times are
read from each wheel's build record (``build.json`` beside the cached portable wheel, ``--native-build-s``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(spec: dict) -> dict:
    import numpy as np

    from koquant.exporters.gguf import llamacpp

    lib = llamacpp.import_llama_cpp()
    cpu = llamacpp.cpu_backend(lib)
    log: list[str] = []
    model, ctx = llamacpp.open_model(Path(spec["model"]), n_ctx=1024, n_batch=512, threads=spec["threads"], log=log)
    # which buffer types hold the weights ("CPU_REPACK model buffer size = ...", "CPU_Mapped ...")
    buffers = sorted({ln.split("model buffer size")[0].split()[-1] for ln in log if "model buffer size" in ln})
    mem = lib.llama_get_memory(ctx)
    rng = np.random.default_rng(0)
    n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)))

    def decode(ids):
        arr = (lib.llama_token * len(ids))(*ids)
        if lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")

    def prefill() -> float:
        lib.llama_memory_clear(mem, True)
        ids = rng.integers(300, n_vocab, 512).tolist()
        t0 = time.perf_counter()
        decode(ids)
        return 512 / (time.perf_counter() - t0)

    def generate() -> float:
        lib.llama_memory_clear(mem, True)
        decode(rng.integers(300, n_vocab, 16).tolist())
        t0 = time.perf_counter()
        for _ in range(64):
            decode([int(rng.integers(300, n_vocab))])
        return 64 / (time.perf_counter() - t0)

    out = {"variant": cpu.variant, "build": cpu.build, "extra_buffer_types": cpu.extra_bufts, "buffers": buffers}
    for name, fn in (("prefill_tok_s", prefill), ("decode_tok_s", generate)):
        fn()  # warm-up
        runs = [fn() for _ in range(spec["repeats"])]
        out[name] = statistics.median(runs)
        out[name + "_runs"] = runs
    lib.llama_free(ctx)
    lib.llama_model_free(model)
    return out


def _run(spec: dict, env: dict) -> dict:
    from koquant.procs import crash_error

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    proc = subprocess.run([sys.executable, __file__, "--child", f.name], capture_output=True, text=True,
                          env={**os.environ, **env})
    os.unlink(f.name)
    if proc.returncode < 0:
        return {"crash": crash_error("llama.cpp", f"running {Path(spec['model']).name}", -proc.returncode).message}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _models(folder: Path, layers: int) -> dict[str, Path]:
    from koquant.exporters.gguf import llamacpp

    folder.mkdir(parents=True, exist_ok=True)
    f16 = folder / f"tinyllama-shape-{layers}l-F16.gguf"
    if not f16.is_file():
        print(f"writing {f16.name} ...", file=sys.stderr)
        llamacpp.write_llama_gguf(f16, hidden=2048, ff=5632, heads=32, layers=layers, vocab=32000, dtype="float16")
    out = {}
    for q in ("Q4_0", "Q4_K_M"):
        out[q] = folder / f"tinyllama-shape-{layers}l-{q}.gguf"
        if not out[q].is_file():
            print(f"quantizing to {q} ...", file=sys.stderr)
            llamacpp.quantize(f16, out[q], q)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child")
    ap.add_argument("--native-wheel", type=Path, help="a llama-cpp-python 0.3.36 wheel built with -march=native")
    ap.add_argument("--native-build-s", type=float, help="how long that wheel took to build (seconds)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(Path(args.child).read_text()))))
        return 0

    from koquant.exporters.gguf import llamacpp
    from koquant.cli.doctor import cpu_info

    models = _models(llamacpp.cache_root() / "bench-models", args.layers)
    best = llamacpp.cpu_backend().variant
    configs = [
        (f"portable, {best} (koquant's choice), extra buffers on", {}),
        (f"portable, {best}, extra buffers off", {"KOQUANT_LLAMA_EXTRA_BUFFERS": "0"}),
        ("portable, haswell (AVX2 baseline), extra buffers on", {llamacpp.VARIANT_ENV: "haswell"}),
        ("portable, haswell, extra buffers off", {llamacpp.VARIANT_ENV: "haswell", "KOQUANT_LLAMA_EXTRA_BUFFERS": "0"}),
    ]
    if "amx_int8" in cpu_info()["features"]:
        configs.append(("portable, sapphirerapids (AMX), extra buffers on",
                        {llamacpp.VARIANT_ENV: "sapphirerapids", "KOQUANT_LLAMA_EXTRA_BUFFERS": "1"}))
    tmp = None
    if args.native_wheel:
        tmp = tempfile.TemporaryDirectory(prefix="native-llama-")
        with zipfile.ZipFile(args.native_wheel) as z:
            z.extractall(tmp.name)
        path = os.pathsep.join([tmp.name, str(ROOT / "src")])
        configs += [("native (-march=native), extra buffers on", {"PYTHONPATH": path, "KOQUANT_LLAMA_EXTRA_BUFFERS": "1"}),
                    ("native, extra buffers off", {"PYTHONPATH": path, "KOQUANT_LLAMA_EXTRA_BUFFERS": "0"})]
    rows = []
    for label, env in configs:
        for quant, model in models.items():
            print(f"{label} / {quant} ...", file=sys.stderr)
            r = _run({"model": str(model), "threads": args.threads, "repeats": args.repeats}, env)
            rows.append({"config": label, "quant": quant, **r})
    portable = sorted(llamacpp.cache_root().glob(f"wheels/llama-cpp-python-{llamacpp.LLAMA_CPP_PYTHON_VERSION}-portable-*/build.json"))
    builds = {"portable": json.loads(portable[0].read_text()) if portable else None,
              "native_build_s": args.native_build_s}
    result = {"cpu": cpu_info(), "threads": args.threads, "model": "random Llama, TinyLlama shape (1.1 B)",
              "layers": args.layers, "builds": builds, "rows": rows}
    print(f"\nCPU: {result['cpu']['model']}, {args.threads} threads; {result['model']}")
    print(f"{'configuration':58} {'quant':7} {'prefill tok/s':>13} {'decode tok/s':>12}  buffers")
    for r in rows:
        if "crash" in r or "error" in r:
            print(f"{r['config']:58} {r['quant']:7} {'-':>13} {'-':>12}  {r.get('crash') or r.get('error')}")
        else:
            print(f"{r['config']:58} {r['quant']:7} {r['prefill_tok_s']:13.1f} {r['decode_tok_s']:12.2f}  "
                  f"{', '.join(r['buffers'])}")
    if builds["portable"]:
        print(f"\nbuild time: portable {builds['portable']['build_s']:.0f} s"
              + (f", native {args.native_build_s:.0f} s" if args.native_build_s else "")
              + f" (llama-cpp-python {llamacpp.LLAMA_CPP_PYTHON_VERSION} from the sdist, "
              f"{builds['portable']['jobs']} build jobs)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
