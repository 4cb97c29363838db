"""How close ``koquant plan`` is to published GGUF sizes and to real files.

    python benchmarks/plan_accuracy.py                       # published Llama-3.1-8B / Mistral-7B sizes
    python benchmarks/plan_accuracy.py --gguf DIR_OR_CONFIG FILE.gguf [FILE.gguf ...]

Published numbers: llama.cpp ``tools/quantize/README.md`` (Llama-3.1-8B, llama-bench "size" =
tensor bytes, and bits per weight), the gguf-parser README (Mistral-7B Q5_K_M) and the Hugging Face
file listings of Qwen's and ggml-org's GGUF repositories (Qwen3-8B, Qwen3-30B-A3B, gemma-3-4b-it). Exits
non-zero when any size is off by more than 2 % (or 64 KiB for real files).
"""

from __future__ import annotations

import argparse
import sys

from koquant.plan import compare_gguf, plan_gguf, preset_spec

GiB = 1024**3

LLAMA31_8B = {
    "IQ1_S": (1.87, 2.0042),
    "IQ1_M": (2.01, 2.1460),
    "IQ2_XXS": (2.23, 2.3824),
    "IQ2_XS": (2.42, 2.5882),
    "IQ2_S": (2.56, 2.7403),
    "IQ2_M": (2.74, 2.9294),
    "IQ3_XXS": (3.04, 3.2548),
    "IQ3_XS": (3.27, 3.4977),
    "IQ3_S": (3.42, 3.6606),
    "IQ3_M": (3.52, 3.7628),
    "IQ4_XS": (4.17, 4.4597),
    "IQ4_NL": (4.38, 4.6818),
    "Q2_K_S": (2.78, 2.9697),
    "Q2_K": (2.95, 3.1593),
    "Q3_K_S": (3.41, 3.6429),
    "Q3_K_M": (3.74, 3.9960),
    "Q3_K_L": (4.02, 4.2979),
    "Q4_K_S": (4.36, 4.6672),
    "Q4_K_M": (4.58, 4.8944),
    "Q5_K_S": (5.21, 5.5704),
    "Q5_K_M": (5.33, 5.7036),
    "Q6_K": (6.14, 6.5633),
    "Q8_0": (7.95, 8.5008),
    "F16": (14.96, 16.0005),
}
MISTRAL_7B = {"Q5_K_M": 4.78}
# Hugging Face file listings (decimal GB, 10 MB resolution) of llama-quantize's default mixes
NEW_CLASSES_GB = {
    ("qwen3-8b", "Q4_K_M"): 5.03,  # Qwen/Qwen3-8B-GGUF, Qwen3-8B-Q4_K_M.gguf
    ("qwen3-8b", "Q8_0"): 8.71,  # Qwen/Qwen3-8B-GGUF, Qwen3-8B-Q8_0.gguf
    ("qwen3-30b-a3b", "Q4_K_M"): 18.6,  # Qwen/Qwen3-30B-A3B-GGUF, Qwen3-30B-A3B-Q4_K_M.gguf
    ("qwen3-30b-a3b", "Q8_0"): 32.5,  # Qwen/Qwen3-30B-A3B-GGUF, Qwen3-30B-A3B-Q8_0.gguf
    ("gemma-3-4b", "Q4_K_M"): 2.49,  # ggml-org/gemma-3-4b-it-GGUF, gemma-3-4b-it-Q4_K_M.gguf
}


def published() -> bool:
    ok = True
    spec = preset_spec("llama-3.1-8b")
    print("Llama-3.1-8B (llama.cpp quantize README): size = tensor bytes")
    print(
        f"{'type':8s} {'published':>10s} {'planned':>10s} {'error':>8s} {'bpw pub':>8s} {'bpw plan':>9s} {'file':>10s}"
    )
    for ft, (gib, bpw) in LLAMA31_8B.items():
        p = plan_gguf(spec, ft)
        err = (p.tensor_bytes / GiB - gib) / gib
        ok &= abs(err) <= 0.02
        print(
            f"{ft:8s} {gib:9.2f}G {p.tensor_bytes / GiB:9.3f}G {err:+8.2%} {bpw:8.4f} {p.bits_per_weight:9.4f}"
            f" {p.file_bytes / GiB:9.3f}G"
        )
    print("\nMistral-7B (gguf-parser README): file size")
    spec = preset_spec("mistral-7b-v0.1")
    for ft, gib in MISTRAL_7B.items():
        p = plan_gguf(spec, ft)
        err = (p.file_bytes / GiB - gib) / gib
        ok &= abs(err) <= 0.02
        print(f"{ft:8s} {gib:9.2f}G {p.file_bytes / GiB:9.3f}G {err:+8.2%}")
    print("\nQwen 3, Qwen3-MoE, Gemma 3 (Hugging Face file listings): file size, decimal GB")
    for (pid, ft), gb in NEW_CLASSES_GB.items():
        p = plan_gguf(preset_spec(pid), ft)
        err = (p.file_bytes / 1e9 - gb) / gb
        ok &= abs(err) <= 0.02
        print(f"{pid:14s} {ft:8s} {gb:8.2f} {p.file_bytes / 1e9:9.3f} {err:+8.2%}")
    return ok


def real_files(source: str, files: list[str]) -> bool:
    ok = True
    print(f"\nreal files planned from {source}")
    print(f"{'file':40s} {'type':7s} {'real':>12s} {'planned':>12s} {'error':>8s}  tensor types")
    for f in files:
        c = compare_gguf(source, f)
        ok &= c.size_ok() and c.types_ok
        types = "same" if c.types_ok else f"{len(c.mismatches)} differ, {len(c.missing)} missing, {len(c.extra)} extra"
        print(f"{f[-40:]:40s} {c.ftype:7s} {c.real_bytes:12d} {c.planned_bytes:12d} {c.relative_error:+8.3%}  {types}")
        for name, planned, real in c.mismatches[:10]:
            print(f"    {name}: planned {planned}, file has {real}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", nargs="+", metavar=("SOURCE", "FILE"), help="model folder/config/preset, then GGUF files")
    args = ap.parse_args(argv)
    ok = published()
    if args.gguf:
        if len(args.gguf) < 2:
            ap.error("--gguf needs a source and at least one file")
        ok &= real_files(args.gguf[0], args.gguf[1:])
    print("\nall within tolerance" if ok else "\nSOME SIZES ARE OFF")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
