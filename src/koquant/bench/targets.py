"""What is benched: the source checkpoint and each export, resolved from paths before anything runs.

An ARTIFACT argument is whatever ``koquant.load`` accepts: an artifact folder koquant wrote (each
file or variant it lists becomes one entry: ``gguf:Q4_K_M``, ``onnx:int4``, ...), one ``.gguf``
file, an ONNX variant folder, a GPTQ folder or another Hugging Face folder. Sizes come from the
files: ``file_bytes`` is what a user ships (the weight files), ``bytes_per_token`` the weights a
decode step reads (every weight once, except the input embedding table, of which one row is read,
unless it doubles as the output head).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .settings import BenchError

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
#: format -> (module its runtime imports, the extra that installs it): checked before anything runs
_RUNTIME_PACKAGES = {"gguf": ("llama_cpp", "gguf"), "onnx": ("onnxruntime_genai", "onnx"),
                     "gptq": ("gptqmodel", "gptq")}


@dataclass
class BenchTarget:
    name: str  # e.g. "gguf:Q4_K_M"; the source is "source"
    format: str  # hf | gguf | onnx | gptq
    path: str  # what koquant.load is given
    quant: str | None  # passed as koquant.load(..., quant=)
    model: str  # the resolved model file or folder
    file_bytes: int = 0
    bytes_per_token: int = 0
    notes: list[str] = field(default_factory=list)


def source_target(ckpt, source_dir: Path, dtype: str) -> BenchTarget:
    """The source checkpoint (an opened :class:`~koquant.source.checkpoint.Checkpoint` of ``source_dir``) as a
    target."""
    t = BenchTarget("source", "hf", str(source_dir), None, str(source_dir))
    t.file_bytes = sum(p.stat().st_size for p in ckpt.weight_files)
    t.bytes_per_token = _hf_bytes_per_token(ckpt, dtype)
    return t


def expand(paths: list[str | os.PathLike]) -> list[BenchTarget]:
    """One entry per runnable export in ``paths``, named uniquely, checked before any runtime starts."""
    from ..runtime.loader import FORMAT_NAMES, available_backends, resolve

    if not paths:
        raise BenchError("no export to bench", hint="koquant bench SOURCE_DIR ARTIFACT... (e.g. an export folder)")
    targets: list[BenchTarget] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise BenchError(f"artifact {p} does not exist",
                             hint="pass an export folder, a .gguf file, an ONNX or GPTQ folder koquant wrote")
        for quant in _variants(p):
            target = resolve(p, quant)
            if target.format not in available_backends():
                raise BenchError(f"{p} is a {FORMAT_NAMES.get(target.format, target.format)} export, which "
                                 "koquant has no runtime for",
                                 hint="formats koquant can bench: " + ", ".join(FORMAT_NAMES[f] for f in available_backends()))
            _check_runtime(target.format, p)
            name = f"{target.format}:{target.quant or Path(target.model).name}"
            t = BenchTarget(name, target.format, str(p), quant, str(target.model), notes=list(target.notes))
            t.file_bytes = file_bytes(t.format, Path(t.model))
            t.bytes_per_token = bytes_per_token(t.format, Path(t.model))
            targets.append(t)
    _unique_names(targets)
    return targets


def _check_runtime(fmt: str, where: Path) -> None:
    import importlib.util

    from ..errors import missing_extra

    module, extra = _RUNTIME_PACKAGES.get(fmt, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        raise missing_extra(f"benching {where} needs {module}, which is not installed", extra)


def _variants(p: Path) -> list[str | None]:
    """The quants of an artifact folder listing several files or variants; [None] for anything else."""
    from ..artifact import MANIFEST, Artifact

    if p.is_dir() and (p / MANIFEST).is_file():
        files = [f for f in Artifact.open(p).record.files if f.quant]
        if len(files) > 1:
            return [str(f.quant) for f in files]
    return [None]


def _unique_names(targets: list[BenchTarget]) -> None:
    seen: dict[str, int] = {}
    for t in targets:
        seen[t.name] = seen.get(t.name, 0) + 1
    for t in targets:
        if seen[t.name] > 1:  # the same quant from two artifacts: say which folder
            t.name = f"{t.name} ({Path(t.path).resolve().name})"
    names = [t.name for t in targets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BenchError(f"{', '.join(dupes)} given more than once", hint="pass each export once")


# ---------------------------------------------------------------------------- sizes
def file_bytes(fmt: str, model: Path) -> int:
    """Bytes of the weight files a user ships for this export."""
    if model.is_file():
        return model.stat().st_size
    if fmt == "onnx":
        files = [p for p in model.iterdir() if p.is_file() and (p.suffix == ".onnx" or p.name.endswith(".onnx.data"))]
    else:
        files = [p for p in model.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
    return sum(p.stat().st_size for p in files)


def bytes_per_token(fmt: str, model: Path) -> int:
    """Weight bytes one decode step reads: all weights but the input embedding table (unless tied)."""
    if fmt == "gguf":
        return _gguf_bytes_per_token(model)
    if fmt == "onnx":
        return _onnx_bytes_per_token(model)
    if fmt == "gptq":
        return _safetensors_bytes_per_token(model)
    from ..source.checkpoint import Checkpoint

    ckpt = Checkpoint.open(model)
    return _hf_bytes_per_token(ckpt, None)


def _gguf_bytes_per_token(path: Path) -> int:
    from ..exporters.gguf.reader import read_gguf

    tensors = {t.name: t.n_bytes for t in read_gguf(path).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:  # untied: the token embedding is only looked up
        total -= tensors.get("token_embd.weight", 0)
    return total


_ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _hf_bytes_per_token(ckpt, dtype: str | None) -> int:
    """The source's weights as the baseline holds them (``dtype``; None: as stored)."""
    arch = ckpt.architecture
    total, embed = 0, 0
    for name, t in ckpt.tensors.items():
        n = t.nbytes
        if dtype is not None and t.dtype in ("F32", "BF16", "F16"):
            elements = 1
            for d in t.shape:
                elements *= d
            n = elements * _ELEMENT_BYTES[dtype]
        total += n
        if name == f"{arch.embed}.weight":
            embed = n
    tied = bool(ckpt.config.get("tie_word_embeddings")) or f"{arch.head}.weight" not in ckpt.tensors
    return total - (0 if tied else embed)


def _safetensors_bytes_per_token(folder: Path) -> int:
    from ..source.safetensors import read_safetensors_header

    tensors = {}
    for p in sorted(folder.glob("*.safetensors")):
        tensors.update({n: t.nbytes for n, t in read_safetensors_header(p).items()})
    total = sum(tensors.values())
    if any(n.endswith("lm_head.weight") for n in tensors):
        total -= sum(v for n, v in tensors.items() if n.endswith("embed_tokens.weight"))
    return total


def _onnx_bytes_per_token(folder: Path) -> int:
    """Initializer bytes of model.onnx (read without its external data), less an untied embedding table."""
    model = folder / "model.onnx"
    try:
        import onnx
    except ImportError:  # the runtime without the onnx package: count the files
        return file_bytes("onnx", folder)
    graph = onnx.load(str(model), load_external_data=False).graph
    sizes: dict[str, int] = {}
    for init in graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        sizes[init.name] = int(ext["length"]) if "length" in ext else len(init.raw_data)
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    inputs = {i.name for i in graph.input}
    embed = 0
    for node in graph.node:  # the lookup table: a Gather (or its quantized form) indexed by input_ids
        if node.op_type.startswith("Gather") and len(node.input) > 1 and node.input[1] in inputs:
            tables = [n for n in node.input if n in sizes]
            if tables and all(uses.get(n, 0) == 1 for n in tables):
                embed += sum(sizes[n] for n in tables)
    return sum(sizes.values()) - embed
