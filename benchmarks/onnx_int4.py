"""Which int4 recipe for ONNX? KL vs the source per algorithm, and decode speed of int4 vs fp32.

Exports the trained default miniature (or MODEL_DIR) to ONNX fp32 and to int4 with each
algorithm - gptq (Korean-calibrated, koquant's default), rtn (the builder's default quantizer)
and k_quant - and prints mean KL, p99 KL and top-1 agreement against the source on held-out
Korean text (the Constitution), then onnxruntime-genai's greedy decode tokens/s on 2 threads.

    .venv/bin/python benchmarks/onnx_int4.py [MODEL_DIR] [--block-size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import koquant
from koquant.exporters.onnx import genai
from koquant.testing.miniatures import DEFAULT_MODEL, build_miniature


def quality(model_dir: Path, tmp: Path, block: int, eval_chunks: int, calib_chunks: int) -> dict:
    results = {}
    for algo in ("gptq", "rtn", "k_quant"):
        recipe = koquant.Recipe("onnx", ("int4",), calib_chunks=calib_chunks, eval_chunks=eval_chunks,
                                params={"int4_algo": algo, "block_size": block})
        art = koquant.export(model_dir, recipe, tmp / algo)
        v = art.files[0]["validation"]
        results[algo] = {k: v[k] for k in ("kl_mean", "kl_p99", "top1")}
    return results


def damp_sweep(model_dir: Path, damps: list[float], block: int, eval_chunks: int, calib_chunks: int) -> dict:
    """GPTQ's dampening vs held-out KL, with int4 weights simulated in transformers (lm_head kept fp32).

    Separates the algorithm from the runtime: RTN and GPTQ codes on the same grid, dequantized into a
    copy of the source model, compared with the source on the same held-out chunks.
    """
    import copy

    import torch

    from koquant.quant_recipes.calibration import korean_bills, korean_constitution
    from koquant.source.checkpoint import Checkpoint
    from koquant.exporters.onnx.int4_gptq import quantize_decoder, rtn
    from koquant.exporters.reference import Reference
    from koquant.exporters.gate import compare_logits

    recipe = koquant.Recipe("onnx", ("int4",), calib_chunks=calib_chunks, eval_chunks=eval_chunks)
    ref = Reference(Checkpoint.open(model_dir), Path(model_dir), recipe, korean_constitution())
    model, chunks = ref.model, ref.calibration_chunks(korean_bills())
    arch = ref.ckpt.architecture
    linears = arch.onnx.linears
    mods = dict(model.named_modules())

    def held_out_kl(weights) -> float:
        sim = copy.deepcopy(model)
        sm = dict(sim.named_modules())
        for key, q in weights.items():
            layer, stem = key.rsplit(".", 2)[0], ".".join(key.split(".")[3:])
            deq, row = q.dequantize(), 0
            for name in linears[stem]:
                mod = sm[f"{layer}.{name}"]
                mod.weight.data = deq[row:row + mod.weight.shape[0]].clone()
                row += mod.weight.shape[0]
        with torch.inference_mode():
            got = [sim(input_ids=torch.tensor([c]), use_cache=False).logits[0].float().numpy()
                   for c in ref.eval_chunks.ids]
        return compare_logits(ref.logits, got)["kl_mean"]

    baseline = {f"{arch.onnx.layer(i)}.{stem}": rtn(torch.cat([mods[f"{arch.layer(i)}.{n}"].weight for n in names]), block)
                for i in range(model.config.num_hidden_layers) for stem, names in linears.items()}
    out = {"rtn": held_out_kl(baseline)}
    for d in damps:
        out[f"gptq damp {d:g}"] = held_out_kl(quantize_decoder(model, chunks, block, percdamp=d))
    return out


def decode_speed(folder: Path, threads: int, prompt_len: int = 64, new_tokens: int = 256, repeats: int = 3) -> float:
    """Median greedy decode tokens/s (the prompt's prefill is not counted)."""
    og = genai.import_og()
    model = genai.load_model(folder, threads)
    prompt = list(range(100, 100 + prompt_len))
    speeds = []
    for _ in range(repeats):
        params = og.GeneratorParams(model)
        total = prompt_len + new_tokens
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        start, n = time.perf_counter(), 0
        while not gen.is_done():
            gen.generate_next_token()
            n += 1
        speeds.append(n / (time.perf_counter() - start))
    return statistics.median(speeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", type=Path)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-chunks", type=int, default=16)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--damp-sweep", metavar="FAMILIES",
                    help="only the GPTQ dampening sweep, on these miniatures (comma-separated, e.g. ocelot-mini,komt-mini)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.damp_sweep:
        sweep = {f: damp_sweep(build_miniature(f), [0.01, 0.1, 1.0, 10.0], args.block_size, args.eval_chunks,
                               args.calib_chunks) for f in args.damp_sweep.split(",")}
        print(json.dumps(sweep, indent=2) if args.json else "\n".join(
            f"{f:16} " + "  ".join(f"{k}: {v:.3e}" for k, v in r.items()) for f, r in sweep.items()))
        return
    model = args.model_dir or build_miniature(DEFAULT_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res = {"quality": quality(model, tmp, args.block_size, args.eval_chunks, args.calib_chunks)}
        koquant.export(model, koquant.Recipe("onnx", ("fp32",), eval_chunks=2), tmp / "fp32")
        res["decode_tokens_per_s"] = {"fp32": decode_speed(tmp / "fp32" / "fp32", args.threads),
                                      "int4": decode_speed(tmp / "gptq" / "int4", args.threads)}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"model: {model}\nheld-out: Korean constitution, {args.eval_chunks} x 256 tokens; "
          f"GPTQ calibration: kobill, {args.calib_chunks} x 512 tokens; int4 block {args.block_size}\n")
    print(f"{'int4 algo':10} {'KL mean':>10} {'KL p99':>10} {'top-1':>7}")
    for algo, r in res["quality"].items():
        print(f"{algo:10} {r['kl_mean']:10.3e} {r['kl_p99']:10.3e} {r['top1']:7.4f}")
    base = res["quality"]["rtn"]["kl_mean"]
    print(f"\ngptq / rtn mean KL: {res['quality']['gptq']['kl_mean'] / base:.2f}")
    speed = res["decode_tokens_per_s"]
    print(f"\ndecode, {args.threads} threads (onnxruntime-genai, greedy, 256 new tokens after a 64-token prompt):")
    print(f"  fp32 {speed['fp32']:.0f} tok/s   int4 {speed['int4']:.0f} tok/s   ({speed['int4'] / speed['fp32']:.1f}x)")


if __name__ == "__main__":
    main()
