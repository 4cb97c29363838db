"""llama.cpp, pinned: the converter from the llama-cpp-python sdist and the Python binding.

The converter must be the one vendored with the binding's llama.cpp (the PyPI ``gguf``
package does not work with it), so the sdist of the pinned llama-cpp-python is fetched once
from the package index and cached. The same sources build llama.cpp's own tools
(llama-imatrix, llama-perplexity) for the tests that compare koquant against them.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import BackendMissingError, ExportError, missing_extra
from ...procs import cache_root
from ...source.architectures import ARCHITECTURES, GGUF_EMBED, GGUF_HEAD, GGUF_LAYERS, GGUF_NORM, Dims

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"


def import_llama_cpp():
    """The binding, checked against the pinned version."""
    try:
        import llama_cpp
    except ImportError:
        raise missing_extra(
            "GGUF export needs llama-cpp-python, which is not installed", "gguf",
            more=f" in a checkout, or pip install 'koquant[gguf]' (builds {SDIST} from source, ~12 CPU-minutes)",
        ) from None
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON_VERSION:
        raise BackendMissingError(
            f"llama-cpp-python {llama_cpp.__version__} is installed but koquant is pinned to {LLAMA_CPP_PYTHON_VERSION}",
            hint=f"pip install {SDIST} (the converter and the binding must come from the same llama.cpp)",
        )
    cpu_backend(llama_cpp)
    return llama_cpp


# ---------------------------------------------------------------- which CPU code llama.cpp runs
#: how install.sh builds llama-cpp-python: every x86-64 CPU variant as its own module, picked at load time
#: (llama.cpp's own release scheme), never -march=native; mtmd (images) is not used by koquant
PORTABLE_CMAKE_ARGS = ("-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON",
                       "-DCMAKE_INSTALL_BINDIR=llama_cpp/lib", "-DLLAVA_BUILD=OFF")
#: CPU features whose code koquant never runs: llama.cpp's AMX extra buffer type segfaults in
#: ggml_backend_amx_mul_mat on Sapphire Rapids class Xeons (llama.cpp issue 20824, unfixed)
UNSAFE_FEATURES = ("AMX_INT8",)
VARIANT_ENV = "KOQUANT_LLAMA_CPU_VARIANT"


@dataclass
class CpuBackend:
    """What llama.cpp runs on this machine, decided once per process.

    ``build`` is ``portable`` (one ``libggml-cpu-<variant>.so`` per CPU generation, koquant loads the
    best one this CPU runs that has no AMX code) or ``single`` (one ``libggml-cpu.so``, built for
    whatever CPU compiled it; on an AMX host its extra buffer types are then switched off).
    """

    build: str
    variant: str | None
    variants: dict[str, int]  # variant -> llama.cpp's score on this CPU (0: cannot run here)
    skipped: dict[str, str]  # variant -> why it was not chosen although this CPU runs it
    features: dict[str, str]  # the chosen code's compile-time features (AVX2, AVX512, REPACK, ...)
    extra_bufts: bool  # whether models open with extra buffer types (weight repacking)
    reason: str

    def to_dict(self) -> dict:
        return {"build": self.build, "variant": self.variant, "variants": self.variants, "skipped": self.skipped,
                "features": self.features, "extra_buffer_types": self.extra_bufts, "reason": self.reason}


_CPU: CpuBackend | None = None


class _Feature(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


def _features_of(reg, get_proc) -> dict[str, str]:
    fn = get_proc(reg, b"ggml_backend_get_features")
    if not fn:
        return {}
    arr = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), ctypes.c_void_p)(fn)(reg)
    out, i = {}, 0
    while arr[i].name:
        out[arr[i].name.decode()] = arr[i].value.decode()
        i += 1
    return out


def _loaded_library(llama_cpp, name: str) -> str:
    """The file of ``name`` that libllama itself loaded. A wheel stores ``libggml.so``, ``.so.0`` and
    ``.so.0.x`` as separate copies (zip has no links): opening another copy would load a second ggml
    with a backend registry of its own, which llama.cpp never sees."""
    folder = Path(llama_cpp.__file__).parent / "lib"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if Path(path).name.startswith(f"{name}.so") and Path(path).parent == folder:
            return path
    return str(next((p for p in (folder / f"{name}.so.0", folder / f"{name}.so") if p.exists()), folder / f"{name}.so"))


def _ggml(llama_cpp):
    lib = ctypes.CDLL(_loaded_library(llama_cpp, "libggml"))
    lib.ggml_backend_load.restype = ctypes.c_void_p
    lib.ggml_backend_load.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    base = ctypes.CDLL(_loaded_library(llama_cpp, "libggml-base"))
    get_proc = base.ggml_backend_reg_get_proc_address
    get_proc.restype = ctypes.c_void_p
    get_proc.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib, get_proc


def cpu_variant_files(llama_cpp) -> dict[str, Path]:
    """The CPU variant modules a portable build ships (empty for a single-CPU build)."""
    lib = Path(llama_cpp.__file__).parent / "lib"
    return {p.name[len("libggml-cpu-"):-len(".so")]: p for p in sorted(lib.glob("libggml-cpu-*.so"))}


def cpu_backend(llama_cpp=None) -> CpuBackend:
    """Load llama.cpp's CPU code once per process: the best safe variant of a portable build.

    ``KOQUANT_LLAMA_CPU_VARIANT=haswell`` (any shipped variant) forces one, e.g. to check what a
    machine without AVX-512 runs; ``KOQUANT_LLAMA_EXTRA_BUFFERS=0|1`` forces extra buffer types.
    """
    global _CPU
    if _CPU is not None:
        return _CPU
    llama_cpp = llama_cpp or import_llama_cpp()
    files = cpu_variant_files(llama_cpp)
    ggml, get_proc = _ggml(llama_cpp)
    if not files:  # a single-CPU build links its CPU backend; read what it was compiled with
        reg = ggml.ggml_backend_reg_by_name(b"CPU")
        feats = _features_of(reg, get_proc) if reg else {}
        unsafe = [f for f in UNSAFE_FEATURES if feats.get(f) == "1"]
        reason = (f"single-CPU build with {', '.join(unsafe)}: extra buffer types off (llama.cpp issue 20824)"
                  if unsafe else "single-CPU build (reinstall with install.sh for the portable one)")
        _CPU = CpuBackend("single", None, {}, {}, feats, _extra_bufts(not unsafe), reason)
        return _CPU
    scores, skipped, safe = {}, {}, {}
    for name, path in files.items():
        mod = ctypes.CDLL(str(path))
        score = 1
        if hasattr(mod, "ggml_backend_score"):
            mod.ggml_backend_score.restype = ctypes.c_int
            score = int(mod.ggml_backend_score())
        scores[name] = score
        if score <= 0:
            continue
        mod.ggml_backend_init.restype = ctypes.c_void_p
        reg = mod.ggml_backend_init()
        feats = _features_of(reg, get_proc)
        unsafe = [f for f in UNSAFE_FEATURES if feats.get(f) == "1"]
        if unsafe:
            skipped[name] = f"{', '.join(unsafe)} extra buffer type crashes (llama.cpp issue 20824)"
        else:
            safe[name] = feats
    forced = os.environ.get(VARIANT_ENV)
    if forced:
        if forced not in files:
            raise BackendMissingError(f"{VARIANT_ENV}={forced} names no CPU variant of this llama.cpp build",
                                      hint="choose one of: " + ", ".join(files))
        if scores[forced] <= 0:
            raise BackendMissingError(f"{VARIANT_ENV}={forced}: this CPU cannot run that variant",
                                      hint="choose one of: " + ", ".join(n for n in files if scores[n] > 0))
        chosen, reason = forced, f"forced by {VARIANT_ENV}"
    elif safe:
        chosen = max(safe, key=lambda n: scores[n])
        reason = "the best variant this CPU runs" + (f" without {', '.join(skipped)}" if skipped else "")
    else:
        raise BackendMissingError("no CPU variant of this llama.cpp build runs safely on this machine",
                                  hint="koquant doctor lists the variants; reinstall with bash install.sh")
    lines: list[str] = []
    with capture_llama_log(lines, llama_cpp=llama_cpp):  # its "loaded CPU backend" line is not for the console
        loaded = ggml.ggml_backend_reg_by_name(b"CPU") or ggml.ggml_backend_load(str(files[chosen]).encode())
    if not loaded:
        raise BackendMissingError(f"llama.cpp could not load its CPU code {files[chosen].name}",
                                  hint="reinstall llama-cpp-python with bash install.sh")
    reg = ggml.ggml_backend_reg_by_name(b"CPU")
    feats = _features_of(reg, get_proc)
    _CPU = CpuBackend("portable", chosen, scores, skipped, feats, _extra_bufts(feats.get("AMX_INT8") != "1"), reason)
    return _CPU


def portable_wheel(jobs: int | None = None) -> Path:
    """The pinned llama-cpp-python built portably (:data:`PORTABLE_CMAKE_ARGS`), cached by version and flags.

    pip's own wheel cache is keyed by the sdist alone, so a ``-march=native`` wheel built earlier
    (or on another machine sharing the cache) would be reused whatever ``CMAKE_ARGS`` say; koquant
    builds with ``--no-cache-dir`` into a folder of its own whose name carries the flags.
    """
    import hashlib
    import json
    import platform
    import time

    key = hashlib.sha256(" ".join(PORTABLE_CMAKE_ARGS).encode()).hexdigest()[:12]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}-{platform.machine()}"
    folder = cache_root() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}-portable-{tag}-{key}"
    found = sorted(folder.glob("llama_cpp_python-*.whl"))
    if found:
        return found[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as tmp:
        env = {**os.environ, "CMAKE_ARGS": " ".join(PORTABLE_CMAKE_ARGS),
               "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs or os.cpu_count() or 2)}
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
               SDIST, "-w", tmp]
        start = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("llama_cpp_python-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise BackendMissingError(f"building {SDIST} failed:\n{tail}",
                                      hint="it needs a C/C++ compiler and cmake >= 3.21 (apt-get install build-essential cmake)")
        (Path(tmp) / "build.json").write_text(json.dumps({
            "cmake_args": list(PORTABLE_CMAKE_ARGS), "build_s": round(time.monotonic() - start, 1),
            "jobs": int(env["CMAKE_BUILD_PARALLEL_LEVEL"]), "built_on": platform.processor() or platform.machine()}))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not any(folder.glob("llama_cpp_python-*.whl")):
                raise
        os.makedirs(tmp, exist_ok=True)  # TemporaryDirectory removes it again
    return sorted(folder.glob("llama_cpp_python-*.whl"))[0]


def _extra_bufts(default: bool) -> bool:
    env = os.environ.get("KOQUANT_LLAMA_EXTRA_BUFFERS")
    return default if env in (None, "") else env not in ("0", "false", "off")


def model_params(lib=None):
    """``llama_model_params`` for a CPU load with koquant's extra-buffer policy (see :func:`cpu_backend`)."""
    lib = lib or import_llama_cpp()
    mp = lib.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.use_extra_bufts = cpu_backend(lib).extra_bufts
    return mp


def system_info() -> str:
    return import_llama_cpp().llama_print_system_info().decode("utf-8", "replace").strip()


def llama_cpp_source() -> Path:
    """The vendored llama.cpp tree of the pinned sdist (converter, gguf-py, sources)."""
    override = os.environ.get("KOQUANT_LLAMA_CPP_SRC")
    if override:
        src = Path(override)
        if not (src / "convert_hf_to_gguf.py").is_file():
            raise BackendMissingError(
                f"KOQUANT_LLAMA_CPP_SRC={src} has no convert_hf_to_gguf.py",
                hint="point it at the vendor/llama.cpp folder of the unpacked llama-cpp-python sdist",
            )
        return src
    root = cache_root() / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"
    src = root / "vendor" / "llama.cpp"
    if (src / "convert_hf_to_gguf.py").is_file():
        return src
    _fetch_sdist(root)
    return src


def _fetch_sdist(root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", SDIST, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise BackendMissingError(
                f"could not fetch the llama.cpp sources ({SDIST} sdist) from the package index: "
                + (proc.stderr.strip().splitlines() or ["no archive"])[-1],
                hint="run once with access to the package index, or set KOQUANT_LLAMA_CPP_SRC to an unpacked "
                "sdist's vendor/llama.cpp folder",
            )
        out = Path(tmp) / "unpacked"
        with tarfile.open(archives[0]) as tar:
            tar.extractall(out, filter="data")
        (top,) = list(out.iterdir())
        try:
            os.rename(top, root)
        except OSError:
            if not (root / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
                raise


def convert_hf_to_gguf(model_dir: Path, outfile: Path, outtype: str) -> str:
    """Run the vendored converter with its own gguf-py (through :mod:`.converter_shim`). Returns its log."""
    src = llama_cpp_source()
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join([str(src / "gguf-py"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # the converter itself, through koquant's shim (a pre-tokenizer fallback: see converter_shim)
    shim = Path(__file__).with_name("converter_shim.py")
    cmd = [sys.executable, str(shim), str(src), str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not outfile.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise ExportError(f"llama.cpp's convert_hf_to_gguf.py failed on {model_dir.name}:\n{tail}",
                          hint="check that the model folder loads with transformers; KOQUANT_DEBUG=1 shows more")
    return proc.stderr


# ---------------------------------------------------------------- quantize through the binding
def ftype_of(quant: str) -> int:
    llama_cpp = import_llama_cpp()
    name = "LLAMA_FTYPE_ALL_F32" if quant == "F32" else f"LLAMA_FTYPE_MOSTLY_{quant}"
    if not hasattr(llama_cpp, name):
        raise ExportError(f"llama.cpp has no file type {quant}")
    return getattr(llama_cpp, name)


@dataclass
class QuantizeResult:
    log: list[str] = field(default_factory=list)
    fallbacks: list[dict] = field(default_factory=list)


_FALLBACK = re.compile(
    r"warning:\s+(\S+)\s+-\s+ncols\s+(\d+)\s+not divisible by\s+(\d+)\s+\(required for type\s+(\S+)\).*?->\s*falling back to\s+(\S+)",
    re.S,
)


@contextmanager
def capture_llama_log(lines: list[str], echo: bool = False, llama_cpp=None):
    """Collect llama.cpp's log lines while the block runs, then restore its default logger."""
    llama_cpp = llama_cpp or import_llama_cpp()
    buf: list[str] = []

    @llama_cpp.llama_log_callback
    def _cb(level, text, _user):
        s = text.decode("utf-8", errors="replace")
        buf.append(s)
        if echo:
            sys.stderr.write(s)

    llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))
    try:
        yield
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        lines.extend("".join(buf).splitlines())


#: the calibration llama-quantize records in every file it quantizes with an importance matrix, by the
#: names of tools/quantize/quantize.cpp's ``LLM_KV_QUANTIZE_IMATRIX_*`` constants (tests/test_imatrix.py
#: pins them to the vendored source); llama.cpp writes the counts as u32
QUANTIZE_IMATRIX_KEYS = {"FILE": "quantize.imatrix.file", "DATASET": "quantize.imatrix.dataset",
                         "N_ENTRIES": "quantize.imatrix.entries_count", "N_CHUNKS": "quantize.imatrix.chunks_count"}
_KV_STR_BYTES = 127  # llama_model_kv_override.val_str holds 128 bytes, the last one its terminator


def imatrix_overrides(imatrix, imatrix_file: str, dataset: str | None) -> list[tuple[str, str | int]]:
    """The ``(key, value)`` pairs llama-quantize writes for ``--imatrix imatrix_file``: the file, its first
    dataset (when it names one), its entry count and its chunk count (when known)."""
    keys = QUANTIZE_IMATRIX_KEYS
    pairs: list[tuple[str, str | int]] = [(keys["FILE"], imatrix_file)]
    if dataset:
        pairs.append((keys["DATASET"], dataset))
    pairs.append((keys["N_ENTRIES"], len(imatrix.names())))
    if imatrix.n_chunks > 0:
        pairs.append((keys["N_CHUNKS"], imatrix.n_chunks))
    return pairs


def _kv_override_array(llama_cpp, pairs: list[tuple[str, str | int]]):
    """``pairs`` as the ``llama_model_kv_override`` array llama.cpp reads up to an entry with an empty key.
    A string longer than the field is cut to whole UTF-8 characters, as llama-quantize cuts it to 127 bytes."""
    arr = (llama_cpp.llama_model_kv_override * (len(pairs) + 1))()  # zeroed: the last entry is the terminator
    for o, (key, value) in zip(arr, pairs):
        o.key = key.encode()
        if isinstance(value, str):
            o.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            o.value.val_str = value.encode()[:_KV_STR_BYTES].decode("utf-8", "ignore").encode()
        else:
            o.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            o.value.val_i64 = value
    arr[len(pairs)].key = b""
    return arr


def quantize(src: Path, dst: Path, quant: str, imatrix=None, nthread: int = 0, *, imatrix_file: str = "imatrix.gguf",
             dataset: str | None = None) -> QuantizeResult:
    """``llama_model_quantize`` with an optional importance matrix (``koquant.exporters.gguf.imatrix.Imatrix``).

    With one, the file records its calibration as llama-quantize does (:func:`imatrix_overrides`):
    ``imatrix_file`` names the saved matrix, ``dataset`` the calibration text it was computed on.
    """
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = nthread
    params.ftype = ftype_of(quant)
    keep = []  # keep ctypes buffers alive during the call
    if imatrix is not None:
        names = imatrix.names()
        arr = (llama_cpp.llama_model_imatrix_data * (len(names) + 1))()
        for i, n in enumerate(names):
            vals = imatrix.values(n)
            cbuf = (ctypes.c_float * len(vals)).from_buffer_copy(vals.tobytes())
            bname = n.encode()
            keep.extend([cbuf, bname])
            arr[i].name = bname
            arr[i].data = ctypes.cast(cbuf, ctypes.POINTER(ctypes.c_float))
            arr[i].size = len(vals)
        arr[len(names)].name = None
        overrides = _kv_override_array(llama_cpp, imatrix_overrides(imatrix, imatrix_file, dataset))
        keep.extend([arr, overrides])
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    result = QuantizeResult()
    with capture_llama_log(result.log):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        detail = [ln for ln in result.log if "error" in ln.lower() or "requires" in ln.lower()] or result.log[-5:]
        raise ExportError(f"llama.cpp failed to quantize to {quant}: " + " ".join(d.strip() for d in detail[-3:]))
    for m in _FALLBACK.finditer("\n".join(result.log)):
        result.fallbacks.append(
            {"tensor": m.group(1), "ncols": int(m.group(2)), "wanted": m.group(4), "used": m.group(5), "block": int(m.group(3))}
        )
    return result


# ---------------------------------------------------------------- reading GGUF files
def gguf_reader(path: Path):
    """The vendored gguf-py reader (same version as the converter that wrote the file)."""
    return _vendored_gguf().GGUFReader(str(path))


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """Tensor name -> ggml type name, from koquant's header reader (gguf-py's reader decodes every
    metadata element, minutes for a 150k-token vocabulary; this one reads the tensor table only)."""
    from .reader import read_gguf

    return {t.name: t.type for t in read_gguf(path).tensors}


def gguf_metadata_string(path: Path, key: str) -> str | None:
    from .reader import read_gguf

    value = read_gguf(path).metadata.get(key)
    return value if isinstance(value, str) else None


def _vendored_gguf():
    src = llama_cpp_source() / "gguf-py"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    import gguf  # noqa: PLC0415 - the vendored copy, found through sys.path

    return gguf


def write_imatrix_gguf(path: Path, imatrix, dataset: str, chunk_size: int) -> None:
    """Save an importance matrix in llama-imatrix's GGUF layout (``<tensor>.in_sum2`` / ``.counts``)."""
    import numpy as np

    gguf = _vendored_gguf()
    w = gguf.GGUFWriter(str(path), arch="")
    w.kv_data[0].pop("general.architecture", None)
    w.add_type("imatrix")
    w.add_array(gguf.Keys.IMatrix.DATASETS, [dataset])
    w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, imatrix.n_chunks)
    w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, chunk_size)
    for name in imatrix.names():  # one row (and count) per expert of a 3-D expert tensor, else one
        sums = imatrix.sum2[name]
        w.add_tensor(f"{name}.in_sum2", sums.astype(np.float32).reshape(len(sums), -1))
        w.add_tensor(f"{name}.counts", np.asarray(imatrix.counts[name], dtype=np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_llama_gguf(path: Path, *, hidden: int, ff: int, heads: int, layers: int, vocab: int = 261,
                     dtype: str = "float32", seed: int = 0) -> None:
    """A random-weight Llama GGUF with a byte-level SentencePiece vocabulary (``vocab`` >= 261 tokens).

    For what needs a real llama.cpp model but not a trained one: ``koquant doctor``'s smoke test
    and the speed benchmarks (decode speed does not depend on the weights' values).
    """
    import numpy as np

    gguf = _vendored_gguf()
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "▁안녕"]
    tokens += [f"▁tok{i}" for i in range(vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_file_type(0 if dtype == "float32" else 1)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def rand(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype))

    def ones(name):
        w.add_tensor(name, np.ones(hidden, dtype=np.float32))

    llama = ARCHITECTURES["llama"]
    widths = llama.linear_widths(Dims(hidden, ff, hidden, hidden))  # as many key/value heads as heads
    rand(f"{GGUF_EMBED}.weight", len(tokens), hidden)
    ones(f"{GGUF_NORM}.weight")
    rand(f"{GGUF_HEAD}.weight", len(tokens), hidden)
    for i in range(layers):
        for norm in llama.norms:
            ones(f"{GGUF_LAYERS}.{i}.{norm.gguf}.weight")
        for lin in llama.linears:
            cols, rows = widths[lin.hf]
            rand(f"{GGUF_LAYERS}.{i}.{lin.gguf}.weight", rows, cols)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_imatrix_gguf(path: Path) -> dict[str, tuple]:
    """``{tensor: (in_sum2 float64 array, count)}`` from an imatrix GGUF (ours or llama-imatrix's); for an
    expert tensor the sums of every expert, flattened, and an array of per-expert counts."""
    import numpy as np

    reader = gguf_reader(path)
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.array(t.data, dtype=np.float64).reshape(-1)
        elif t.name.endswith(".counts"):
            per = np.array(t.data, dtype=np.float64).reshape(-1)
            counts[t.name[: -len(".counts")]] = float(per[0]) if len(per) == 1 else per
    return {n: (sums[n], counts[n]) for n in sums}


# ---------------------------------------------------------------- llama.cpp's own tools
TOOLS = ("llama-imatrix", "llama-perplexity")
#: the tools are static binaries for any x86-64 with AVX2 (llama.cpp's "haswell" level): no -march=native,
#: no AVX-512, no AMX, so a cached build runs on every machine that shares the cache
TOOLS_CMAKE_ARGS = ("-DGGML_NATIVE=OFF", "-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
                    "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AMX_TILE=OFF",
                    "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF")


def build_tools(targets=TOOLS, jobs: int | None = None) -> Path:
    """Build llama.cpp tools from the pinned sources (cached). Returns the bin folder."""
    src = llama_cpp_source()
    out = cache_root() / f"llama-tools-{LLAMA_CPP_PYTHON_VERSION}-avx2"
    bindir = out / "bin"
    if all((bindir / t).is_file() for t in targets):
        return bindir
    if shutil.which("cmake") is None:
        raise BackendMissingError("building llama.cpp tools needs cmake", hint="apt-get install cmake (or pip install cmake)")
    build = out / "build"
    cfg = ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
           "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
           "-DLLAMA_BUILD_TOOLS=ON", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_OPENMP=OFF", *TOOLS_CMAKE_ARGS]
    jobs = jobs or os.cpu_count() or 2
    for cmd in (cfg, ["cmake", "--build", str(build), "-j", str(jobs), "--target", *targets]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ExportError("building llama.cpp tools failed:\n" + "\n".join(proc.stderr.splitlines()[-10:]))
    bindir.mkdir(parents=True, exist_ok=True)
    for t in targets:
        shutil.copy2(build / "bin" / t, bindir / t)
    shutil.rmtree(build, ignore_errors=True)
    return bindir


# ---------------------------------------------------------------- a model on the CPU
def open_model(path: Path, *, n_ctx: int, n_batch: int, threads: int, flash_attn: bool = False,
               error=ExportError, log: list[str] | None = None):
    """``(model, context)`` of ``path`` on the CPU, with koquant's extra-buffer policy; ``error`` on failure.
    llama.cpp's log lines of the load go to ``log`` when given."""
    lib = import_llama_cpp()
    lines: list[str] = log if log is not None else []
    with capture_llama_log(lines):
        model = lib.llama_model_load_from_file(str(path).encode(), model_params(lib))
    if not model:
        detail = " ".join(ln.strip() for ln in lines if "error" in ln.lower() or "failed" in ln.lower())[-400:]
        raise error(f"llama.cpp could not load {Path(path).name}: {detail or 'unknown error'}",
                    hint="check that the file is a complete GGUF written for this llama.cpp version")
    cp = lib.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = cp.n_ubatch = n_batch
    cp.n_seq_max = 1
    cp.n_threads = cp.n_threads_batch = threads
    cp.no_perf = True
    # off unless asked, like llama-cpp-python's Llama: the gate and the runtime share these numerics
    cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    with capture_llama_log(lines):
        ctx = lib.llama_init_from_model(model, cp)
    if not ctx:
        lib.llama_model_free(model)
        raise error(f"llama.cpp could not create a context of {n_ctx} tokens for {Path(path).name}",
                    hint="try a smaller context")
    return model, ctx


def tokenize(lib, vocab, text: str, add_special: bool, parse_special: bool) -> list[int]:
    data = text.encode("utf-8")
    cap = len(data) + 8
    for _ in range(2):
        buf = (lib.llama_token * cap)()
        n = lib.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special)
        if n >= 0:
            return list(buf[:n])
        cap = -n
    raise ExportError("llama.cpp could not tokenize the text")


def heldout_logits(job: dict) -> dict:
    """Child job of the GGUF gate: the file's ids for the held-out text and its logits on each chunk."""
    import numpy as np

    from ... import procs

    lib = import_llama_cpp()
    longest = max(len(c) for c in job["chunks"])
    model, ctx = open_model(Path(job["path"]), n_ctx=job["n_ctx"], n_batch=max(longest, 1), threads=job["threads"])
    try:
        vocab = lib.llama_model_get_vocab(model)
        n_vocab = int(lib.llama_vocab_n_tokens(vocab))
        # like llama-cpp-python's Llama.tokenize(add_bos=True, special=False)
        ids = tokenize(lib, vocab, job["text"], add_special=True, parse_special=False)
        mem = lib.llama_get_memory(ctx)
        batch = lib.llama_batch_init(longest, 0, 1)
        files = []
        try:
            for k, chunk in enumerate(job["chunks"]):
                lib.llama_memory_clear(mem, True)
                for i, t in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, i, 1
                    batch.seq_id[i][0], batch.logits[i] = 0, 1
                batch.n_tokens = len(chunk)
                rc = lib.llama_decode(ctx, batch)
                if rc != 0:
                    raise ExportError(f"llama.cpp failed to evaluate held-out chunk {k} (llama_decode returned {rc})")
                rows = np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(len(chunk) * n_vocab,))
                f = Path(job["out"]) / f"logits-{k}.npy"
                np.save(f, rows.reshape(len(chunk), n_vocab))
                files.append(str(f))
                procs.event(done=k + 1, total=len(job["chunks"]))
        finally:
            lib.llama_batch_free(batch)
    finally:
        lib.llama_free(ctx)
        lib.llama_model_free(model)
    return {"ids": ids, "logits": files, "cpu": cpu_backend(lib).to_dict()}


if __name__ == "__main__":  # install.sh: python -m koquant.exporters.gguf.llamacpp wheel
    if sys.argv[1:] == ["wheel"]:
        print(portable_wheel())
    else:
        sys.exit("usage: python -m koquant.exporters.gguf.llamacpp wheel")
