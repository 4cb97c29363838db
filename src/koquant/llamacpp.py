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

from .errors import BackendMissingError, ExportError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"


def cache_root() -> Path:
    return Path(os.environ.get("KOQUANT_CACHE") or Path.home() / ".cache" / "koquant")


def import_llama_cpp():
    """The binding, checked against the pinned version."""
    try:
        import llama_cpp
    except ImportError:
        raise BackendMissingError(
            "GGUF export needs llama-cpp-python, which is not installed",
            hint=f"pip install -c constraints.txt -e '.[gguf]' in a checkout, or pip install 'koquant[gguf]' "
            f"(builds {SDIST} from source, ~12 CPU-minutes)",
        ) from None
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON_VERSION:
        raise BackendMissingError(
            f"llama-cpp-python {llama_cpp.__version__} is installed but koquant is pinned to {LLAMA_CPP_PYTHON_VERSION}",
            hint=f"pip install {SDIST} (the converter and the binding must come from the same llama.cpp)",
        )
    return llama_cpp


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
    """Run the vendored converter with its own gguf-py. Returns its log."""
    src = llama_cpp_source()
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join([str(src / "gguf-py"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not outfile.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise ExportError(f"llama.cpp's convert_hf_to_gguf.py failed on {model_dir.name}:\n{tail}",
                          hint="check that the model folder loads with transformers; KOQUANT_DEBUG=1 shows more")
    return proc.stderr


# ---------------------------------------------------------------- quantize through the binding
FLOAT_TYPES = ("F32", "F16", "BF16")


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
def capture_llama_log(lines: list[str], echo: bool = False):
    """Collect llama.cpp's log lines while the block runs, then restore its default logger."""
    llama_cpp = import_llama_cpp()
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


def quantize(src: Path, dst: Path, quant: str, imatrix=None, nthread: int = 0) -> QuantizeResult:
    """``llama_model_quantize`` with an optional importance matrix (``koquant.imatrix.Imatrix``)."""
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
        keep.append(arr)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
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
    reader = gguf_reader(path)
    return {t.name: t.tensor_type.name for t in reader.tensors}


def gguf_metadata_string(path: Path, key: str) -> str | None:
    reader = gguf_reader(path)
    f = reader.fields.get(key)
    if f is None:
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8")


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
    for name in imatrix.names():
        w.add_tensor(f"{name}.in_sum2", imatrix.sum2[name].astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[imatrix.counts[name]]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_imatrix_gguf(path: Path) -> dict[str, tuple]:
    """``{tensor: (in_sum2 float64 array, count)}`` from an imatrix GGUF (ours or llama-imatrix's)."""
    import numpy as np

    reader = gguf_reader(path)
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.array(t.data, dtype=np.float64).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = float(np.array(t.data).reshape(-1)[0])
    return {n: (sums[n], counts[n]) for n in sums}


# ---------------------------------------------------------------- llama.cpp's own tools
TOOLS = ("llama-imatrix", "llama-perplexity")


def build_tools(targets=TOOLS, jobs: int | None = None) -> Path:
    """Build llama.cpp tools from the pinned sources (cached). Returns the bin folder."""
    src = llama_cpp_source()
    out = cache_root() / f"llama-tools-{LLAMA_CPP_PYTHON_VERSION}"
    bindir = out / "bin"
    if all((bindir / t).is_file() for t in targets):
        return bindir
    if shutil.which("cmake") is None:
        raise BackendMissingError("building llama.cpp tools needs cmake", hint="apt-get install cmake (or pip install cmake)")
    build = out / "build"
    cfg = ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
           "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
           "-DLLAMA_BUILD_TOOLS=ON", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_OPENMP=OFF"]
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
