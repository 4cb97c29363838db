"""onnxruntime-genai as koquant uses it: the install check, loading, logits and greedy decoding.

The CPU runtime (``onnxruntime`` + ``onnxruntime-genai``) and the GPU runtime
(``onnxruntime-gpu`` + ``onnxruntime-genai-cuda``) install into the same ``onnxruntime`` module
and silently overwrite each other, so a mix of the two is refused before anything runs.
Nothing here imports onnxruntime until a function is called.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
from pathlib import Path

import numpy as np

from ...errors import BackendMissingError, ExportError, install_hint, missing_extra

CPU_PACKAGES = ("onnxruntime", "onnxruntime-genai")
GPU_PACKAGES = ("onnxruntime-gpu", "onnxruntime-genai-cuda")
GENAI_PINNED = "0.18.0"  # the builder's graphs and options are those of this release
BUILDER_DEPENDENCIES = ("onnx", "onnx-ir", "torch")  # imported by the builder but not declared by it
_REINSTALL = ("pip uninstall -y onnxruntime onnxruntime-genai onnxruntime-gpu onnxruntime-genai-cuda && "
              + install_hint("onnx") + "   (or '.[onnx-gpu]' on a CUDA machine, never both)")


class OnnxRuntimeConflictError(BackendMissingError):
    """The CPU and GPU builds of onnxruntime are installed together; one overwrote the other."""


def installed_runtime_packages() -> dict[str, str]:
    """Name -> version of every onnxruntime / onnxruntime-genai distribution that is installed."""
    out = {}
    for name in CPU_PACKAGES + GPU_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def check_install() -> dict[str, str]:
    """Refuse a missing, mixed or unpinned ONNX runtime with one clear message; return the versions."""
    found = installed_runtime_packages()
    cpu = [p for p in CPU_PACKAGES if p in found]
    gpu = [p for p in GPU_PACKAGES if p in found]
    if cpu and gpu:
        raise OnnxRuntimeConflictError(
            "the CPU and GPU builds of onnxruntime are installed together ("
            + ", ".join(f"{p}=={found[p]}" for p in cpu + gpu)
            + "); both write the same 'onnxruntime' module, so whichever was installed last silently replaced "
            "the other's files",
            hint="keep exactly one: " + _REINSTALL,
        )
    genai = found.get("onnxruntime-genai") or found.get("onnxruntime-genai-cuda")
    if genai is None or not (found.get("onnxruntime") or found.get("onnxruntime-gpu")):
        raise missing_extra(
            "ONNX export needs onnxruntime and onnxruntime-genai, which are not installed",
            "onnx",
        )
    if genai != GENAI_PINNED:
        raise missing_extra(
            f"onnxruntime-genai {genai} is installed, but koquant is built against {GENAI_PINNED}",
            "onnx",
        )
    missing = [d for d in BUILDER_DEPENDENCIES if importlib.util.find_spec(d.replace("-", "_")) is None]
    if missing:
        raise missing_extra(
            f"onnxruntime-genai's model builder needs {', '.join(missing)}, which is not installed",
            "onnx",
        )
    return found


def import_og():
    check_install()
    import onnxruntime_genai as og

    return og


def load_model(folder: Path, threads: int = 0):
    """An onnxruntime-genai model from an export folder, optionally limited to ``threads`` threads."""
    og = import_og()
    config = og.Config(str(folder))
    if threads:
        opts = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
    try:
        return og.Model(config)
    except Exception as e:  # noqa: BLE001 - the runtime reports every load failure as a plain exception
        raise ExportError(f"onnxruntime-genai cannot load {folder}: {e}",
                          hint="the export is incomplete or was built for another runtime version") from None


def min_cache(folder: Path) -> int:
    """The shortest KV cache (``max_length``) a generator of the export may ask for: its sliding window.

    The runtime keeps a sliding-window layer's keys and values in a cache of ``max_length`` positions, up
    to the window and its slack, and refuses one smaller than the window (``KV cache capacity (96) must be
    at least local_window_size (128)``); 0 for a model without sliding-window layers.
    """
    config = json.loads((Path(folder) / "genai_config.json").read_text(encoding="utf-8"))
    window = (config["model"]["decoder"].get("sliding_window") or {}).get("window_size") or 0
    return max(int(window), 0)


def _params(og, model, max_length: int):
    p = og.GeneratorParams(model)
    # greedy, nothing that reshapes the distribution (genai_config carries the card's sampling settings)
    p.set_search_options(do_sample=False, max_length=max_length, min_length=0, repetition_penalty=1.0,
                         num_beams=1, temperature=1.0)
    return p


def prompt_logits(model, ids, cache: int = 0) -> np.ndarray:
    """Next-token logits [positions, vocab] (float32) for one prompt of token ids, as the runtime computes them
    (``cache``: the least KV cache to ask for, :func:`min_cache`)."""
    og = import_og()
    g = og.Generator(model, _params(og, model, max(len(ids) + 1, cache)))
    g.append_tokens(np.asarray(ids, dtype=np.int32))
    return np.asarray(g.get_output("logits"), dtype=np.float32)[0]


def greedy(model, prompt, new_tokens: int, cache: int = 0) -> list[int]:
    """Greedy continuation of ``prompt`` by the runtime's own generator: ``new_tokens`` tokens, or up to EOS
    (``cache``: the least KV cache to ask for, :func:`min_cache`)."""
    og = import_og()
    g = og.Generator(model, _params(og, model, max(len(prompt) + new_tokens, cache)))
    g.append_tokens(np.asarray(prompt, dtype=np.int32))
    for _ in range(new_tokens):
        if g.is_done():
            break
        g.generate_next_token()
    return [int(t) for t in g.get_sequence(0)[len(prompt):]][:new_tokens]


def tokenizer(model):
    return import_og().Tokenizer(model)


def gate_job(job: dict) -> dict:
    """Child job of the ONNX gate (``koquant.procs``): the runtime's logits on each held-out chunk, its greedy
    continuation, and (with ``parity``) how its own tokenizer and template engine compare with the source's."""
    from ... import procs
    from .parity import template_parity, tokenizer_parity

    model = load_model(Path(job["folder"]), job["threads"])
    cache = min_cache(Path(job["folder"]))
    out: dict = {}
    if job.get("parity"):
        p, tok = job["parity"], tokenizer(model)
        out["parity"] = {"tokenizer": tokenizer_parity(tok, p["text"], p["source_ids"], p["bos_id"]),
                         "chat_template": template_parity(tok, p["template"], p["bos_token"], p["eos_token"])}
    if job.get("chunks") is not None:
        try:
            files = []
            for k, chunk in enumerate(job["chunks"]):
                f = Path(job["out"]) / f"onnx-logits-{k}.npy"
                np.save(f, prompt_logits(model, chunk, cache))
                files.append(str(f))
                procs.event(done=k + 1, total=len(job["chunks"]))
            out["logits"] = files
            out["greedy"] = greedy(model, job["prompt"], job["new_tokens"], cache)
        except RuntimeError as e:  # onnxruntime's kernel failures
            raise ExportError(f"onnxruntime-genai cannot run the {job['quant']} export: {str(e)[:400]}",
                              hint="report this with the command line; try another --quant") from None
    return out
