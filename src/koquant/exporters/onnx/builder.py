"""onnxruntime-genai's model builder, run on a local HF folder in a child process.

The builder is a script (``python -m onnxruntime_genai.models.builder``) that puts its own folder
on ``sys.path``; running it as a child keeps those modules, its prints and its memory out of
koquant's process. What it supports is data here: the architectures it builds and the options
koquant passes through.

It reads the checkpoint's ``config.json`` through transformers, but expects some fields in an older
layout than transformers 5 writes. :func:`stage_input` gives it (and only it) a folder whose
``config.json`` is in the layout it reads, the other files linked from the staged source; the gate
then checks the result against the source model in transformers as for every export.
"""

from __future__ import annotations

import json
import os
import shutil
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

#: The int4 model's output projection (lm_head) as the builder's options make it. The builder's default
#: quantizes it to int4 like every MatMul, and for tied embeddings shares one int4 matrix between the
#: embedding and lm_head. Otherwise the two are separate: the embedding an int4 GatherBlockQuantized (the
#: only width that op has), lm_head int8 or float.
LM_HEAD_OPTIONS = {
    "int4": {},
    "int8": {"shared_embeddings": "false", "op_types_to_quantize": "MatMul/Gather",
             "matmul_mixed_precision": "last_matmul:int8"},
    "float": {"shared_embeddings": "false", "op_types_to_quantize": "MatMul/Gather",
              "nodes_to_exclude": "/lm_head/MatMul"},
}


def check_architecture(hf_class: str) -> None:
    if hf_class not in BUILDER_ARCHITECTURES:
        raise RecipeError(
            f"onnxruntime-genai's model builder cannot export {hf_class}",
            hint="ONNX export supports " + ", ".join(sorted(BUILDER_ARCHITECTURES)) + "; try --fmt gguf",
        )


# transformers 5 stores per-layer-type rope parameters (Gemma 3) as {layer type: parameters}
_LAYER_TYPES = ("full_attention", "sliding_attention")
BUILDER_INPUT = "builder-source"  # the builder's own copy of the source folder, inside the work folder


def builder_config(config: dict) -> tuple[dict, list[str]] | None:
    """The ``config.json`` the builder reads in place of ``config``, with what was changed; None: ``config`` as is.

    Gemma 3 in transformers 5 keeps ``rope_parameters`` per layer type, while the builder (0.18.0) reads one
    flat ``rope_parameters`` (``rope_type``, ``rope_theta``: the full-attention layers') and the sliding
    layers' base as ``rope_local_base_freq``. transformers turns the flat form back into its per-type form
    when it loads the config (taking the bases from the top-level ``rope_theta``/``rope_local_base_freq``,
    which it consumes), so the flat dict carries ``rope_local_base_freq`` as well: the builder lifts every
    ``rope_parameters`` key onto its config. Its local rope cache reuses the full-attention scaling with the
    local base only, so only a plain (``default``) local rope is something it can build.
    """
    rope = config.get("rope_parameters")
    if not (isinstance(rope, dict) and rope and set(rope) <= set(_LAYER_TYPES)
            and all(isinstance(v, dict) for v in rope.values())):
        return None
    full, local = rope.get("full_attention") or {}, rope.get("sliding_attention")
    flat = {"rope_type": full.get("rope_type", "default"), **full}
    changes = ["rope_parameters: the full-attention layers' entry, flat"]
    if local is not None:
        kinds = {k: v.get("rope_type", "default") for k, v in rope.items()}
        extra = set(local) - {"rope_type", "rope_theta"}
        if kinds["sliding_attention"] != "default" or extra or (kinds.get("full_attention", "default") != "default"):
            raise RecipeError(
                "onnxruntime-genai 0.18.0's model builder gives sliding-window layers the full-attention layers' "
                f"rope scaling with only their own base; this model's rope differs per layer type beyond the base "
                f"({', '.join(f'{k}: {v}' for k, v in kinds.items())})",
                hint="export it with --fmt gguf",
            )
        flat["rope_local_base_freq"] = local["rope_theta"]
        changes.append(f"rope_local_base_freq: {local['rope_theta']} (the sliding-window layers' rope base)")
    out = {k: v for k, v in config.items() if k != "rope_parameters"}
    out["rope_parameters"] = flat
    if "rope_theta" in flat:
        out["rope_theta"] = flat["rope_theta"]
    if "rope_local_base_freq" in flat:
        out["rope_local_base_freq"] = flat["rope_local_base_freq"]
    return out, changes


def stage_input(source: Path, work: Path) -> tuple[Path, list[str]]:
    """The folder the builder reads: ``source`` itself, or (see :func:`builder_config`) a folder in ``work``
    with the builder's ``config.json`` and every other file of ``source`` linked; with what was changed."""
    adapted = builder_config(json.loads((source / "config.json").read_text(encoding="utf-8")))
    if adapted is None:
        return source, []
    config, changes = adapted
    dest = work / BUILDER_INPUT
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    link_files(source, dest, lambda f: f.name != "config.json")
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dest, changes


def link_files(source: Path, dest: Path, keep) -> None:
    """Every file of ``source`` for which ``keep(path)`` holds, linked into ``dest`` (copied where links fail)."""
    for f in source.iterdir():
        if not f.is_file() or not keep(f):
            continue
        try:
            (dest / f.name).symlink_to(f.resolve())
        except OSError:  # no symlinks here (Windows without the privilege): copy
            shutil.copy2(f, dest / f.name)


def build(source: Path, out: Path, precision: str, cache: Path, *, block_size: int | None = None,
          accuracy_level: int | None = None, algo: str | None = None, lm_head: str = "int4",
          log: Path | None = None) -> None:
    """Run the builder: ``source`` (HF folder) -> ``out`` (model.onnx, genai_config.json, tokenizer files).

    Sliding-window layers get a KV cache as long as the others' (``windowed_kv_cache=false``; a no-op for
    models without them): with the builder's default window-sized ring, onnxruntime-genai 0.18.0 refuses
    any ``max_length`` below the window ("KV cache capacity (59) must be at least local_window_size (128)")
    and cannot rewind once the ring has wrapped, while the logits are the same either way.
    """
    options = {"windowed_kv_cache": "false"}
    if precision in ("int4", "int8"):
        if block_size is not None:
            options["block_size"] = block_size
        if accuracy_level is not None:
            options["accuracy_level"] = accuracy_level
        if algo is not None:
            options["algo_config"] = BUILDER_ALGOS[algo]
    if precision == "int4":
        options.update(LM_HEAD_OPTIONS[lm_head])
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
