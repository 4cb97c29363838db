"""onnxruntime-genai's model builder, run on a local HF folder in a child process.

The builder is a script (``python -m onnxruntime_genai.models.builder``) that puts its own folder
on ``sys.path``; running it as a child keeps those modules, its prints and its memory out of
koquant's process. What it supports is data here: the architectures it builds and the options
koquant passes through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ...errors import ExportError, RecipeError
from ...source.architectures import ARCHITECTURES

# HF class -> builder model class (onnxruntime-genai 0.18.0, builder.py create_model), from the registry
BUILDER_ARCHITECTURES = {a.hf_class: a.onnx.builder_model for a in ARCHITECTURES.values() if a.onnx is not None}
BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits block sizes the builder accepts
ACCURACY_LEVELS = {1: "fp32 activations", 4: "int8 activations, the CPU default and fastest"}
# koquant's name -> the builder's algo_config for its own MatMulNBits pass
BUILDER_ALGOS = {"rtn": "default", "k_quant": "k_quant"}


def check_architecture(hf_class: str) -> None:
    if hf_class not in BUILDER_ARCHITECTURES:
        raise RecipeError(
            f"onnxruntime-genai's model builder cannot export {hf_class}",
            hint="ONNX export supports " + ", ".join(sorted(BUILDER_ARCHITECTURES)) + "; try --fmt gguf",
        )


def build(source: Path, out: Path, precision: str, cache: Path, *, block_size: int | None = None,
          accuracy_level: int | None = None, algo: str | None = None, log: Path | None = None) -> None:
    """Run the builder: ``source`` (HF folder) -> ``out`` (model.onnx, genai_config.json, tokenizer files)."""
    options = {}
    if precision in ("int4", "int8"):
        if block_size is not None:
            options["block_size"] = block_size
        if accuracy_level is not None:
            options["accuracy_level"] = accuracy_level
        if algo is not None:
            options["algo_config"] = BUILDER_ALGOS[algo]
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    if options:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode < 0:
        from ...procs import crash_error

        raise crash_error("onnxruntime-genai's model builder", f"building the {precision} model", -proc.returncode)
    if proc.returncode != 0 or not (out / "model.onnx").is_file() or not (out / "genai_config.json").is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        raise ExportError(f"onnxruntime-genai's model builder failed for {precision} (exit {proc.returncode}):\n{tail}",
                          hint="run with KOQUANT_DEBUG=1, or report the builder's message above")
