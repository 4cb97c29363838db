"""koquant runs on the CPUs users have: a portable llama.cpp, no AMX path, crashes reported, koquant doctor.

These hold on any x86-64 machine: the build is checked by what it ships and by the instructions
in its code (objdump), the variant choice by llama.cpp's own scores on this CPU, the baseline
variant by running an export on it, and crash reporting by a real signal in a real child.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from koquant.exporters.gguf import llamacpp

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                reason="llama.cpp's CPU variants checked here are the x86-64 ones")

CPU_FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
ROOT = Path(__file__).resolve().parent.parent


def _koquant(*argv, env=None, timeout=900, cwd=None):
    """``python -m koquant ARGV`` as a user runs it (the supervised entry point)."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "koquant", *argv], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=cwd)


def _zmm_lines(path: Path) -> int:
    """How many instructions of ``path`` use AVX-512 registers (zmm)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True, check=True)
    return len(re.findall(r"%zmm\d", out.stdout))


# ---------------------------------------------------------------- the build
def test_llama_cpp_is_the_portable_build():
    lib = llamacpp.import_llama_cpp()
    files = llamacpp.cpu_variant_files(lib)
    # llama.cpp's x86-64 release scheme: a baseline, AVX2 and AVX-512 generations, and the AMX one
    assert {"x64", "haswell", "skylakex", "icelake", "sapphirerapids"} <= set(files), sorted(files)
    assert not (Path(lib.__file__).parent / "lib" / "libggml-cpu.so").exists(), "a single-CPU ggml-cpu is installed"
    cpu = llamacpp.cpu_backend(lib)
    assert cpu.build == "portable"
    assert cpu.variant in files
    # the chosen variant is the best-scoring one this CPU runs, AMX variants aside
    runnable = {n: s for n, s in cpu.variants.items() if s > 0 and n not in cpu.skipped}
    assert cpu.variant == max(runnable, key=runnable.get)
    assert cpu.variants["x64"] > 0  # every x86-64 runs the baseline


def test_baseline_variants_hold_no_avx512_code():
    """The AVX2 variant a machine without AVX-512 loads has no zmm instruction; the AVX-512 one does."""
    files = llamacpp.cpu_variant_files(llamacpp.import_llama_cpp())
    assert _zmm_lines(files["haswell"]) == 0
    assert _zmm_lines(files["x64"]) == 0
    assert _zmm_lines(files["skylakex"]) > 1000  # the check can see AVX-512 code where it is


def test_no_amx_path_is_in_use():
    lib = llamacpp.import_llama_cpp()
    cpu = llamacpp.cpu_backend(lib)
    info = llamacpp.system_info()
    assert "AMX_INT8 = 1" not in info, info
    assert cpu.features.get("AMX_INT8") != "1"
    if "amx_int8" in CPU_FLAGS:  # an AMX host: llama.cpp scores the AMX variant highest, koquant skips it
        assert cpu.variants["sapphirerapids"] > 0
        assert "sapphirerapids" in cpu.skipped and "20824" in cpu.skipped["sapphirerapids"]
        assert cpu.variants["sapphirerapids"] >= max(cpu.variants.values())
    else:
        assert cpu.variants["sapphirerapids"] == 0
    assert cpu.extra_bufts  # REPACK stays on: only AMX is unsafe
    assert "REPACK = 1" in info


def test_tools_are_built_without_avx512_or_amx(llama_tools):
    for tool in llamacpp.TOOLS:
        assert _zmm_lines(llama_tools / tool) == 0, tool


def test_baseline_variant_exports_the_demo(tmp_path, default_model):
    """What a machine without AVX-512 runs: the AVX2 variant, forced, through a whole export and its gate."""
    probe = subprocess.run(
        [sys.executable, "-c", "from koquant.exporters.gguf import llamacpp; import json; "
         "c = llamacpp.cpu_backend(); "
         "print(json.dumps({'variant': c.variant, 'features': c.features, 'info': llamacpp.system_info()}))"],
        capture_output=True, text=True, env={**os.environ, llamacpp.VARIANT_ENV: "haswell"}, check=True)
    got = json.loads(probe.stdout)
    assert got["variant"] == "haswell"
    assert got["features"].get("AVX2") == "1" and "AVX512" not in got["features"]
    out = tmp_path / "demo"
    r = _koquant("export", str(default_model), "--quant", "Q4_K_M", "--calib-chunks", "4", "-o", str(out), "--json",
                 env={llamacpp.VARIANT_ENV: "haswell"})
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((out / "koquant.json").read_text())
    assert manifest["files"][0]["validation"]["passed"]


def test_unknown_variant_is_refused_clearly():
    r = subprocess.run([sys.executable, "-c", "from koquant.exporters.gguf import llamacpp; llamacpp.cpu_backend()"],
                       capture_output=True, text=True, env={**os.environ, llamacpp.VARIANT_ENV: "pentium3"})
    assert r.returncode != 0
    assert "pentium3 names no CPU variant" in r.stderr and "haswell" in r.stderr


# ---------------------------------------------------------------- native crashes are reported
_CRASH_AT = {
    # a real SIGSEGV raised where llama.cpp runs: the gate's child, and chat's own process
    "gguf-gate": "from koquant.exporters.gguf import llamacpp\n"
                 "llamacpp.heldout_logits = lambda job: os.kill(os.getpid(), signal.SIGSEGV)\n",
    "chat-decode": "from koquant.runtime.backends import gguf\n"
                   "gguf.GGUFBackend.forward = lambda self, ids: os.kill(os.getpid(), signal.SIGSEGV)\n",
    "doctor-smoke": "from koquant.cli import doctor\ndoctor.smoke_llama = lambda job: os.kill(os.getpid(), signal.SIGSEGV)\n",
    "sigill": "from koquant.exporters.gguf import llamacpp\n"
              "llamacpp.heldout_logits = lambda job: os.kill(os.getpid(), signal.SIGILL)\n",
}


def _inject(tmp_path: Path, where: str) -> dict:
    """A sitecustomize that makes every Python of the run crash at ``where`` (test instrumentation only)."""
    d = tmp_path / f"inject-{where}"
    d.mkdir()
    (d / "sitecustomize.py").write_text("import os, signal\n" + _CRASH_AT[where])
    return {"PYTHONPATH": os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def test_crash_in_the_gguf_gate_is_one_line_and_writes_nothing(tmp_path, default_model):
    out = tmp_path / "out"
    r = _koquant("export", str(default_model), "--quant", "Q8_0", "--no-imatrix", "-o", str(out),
                 env=_inject(tmp_path, "gguf-gate"))
    assert r.returncode == 5, (r.returncode, r.stderr[-2000:])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: llama.cpp crashed with SIGSEGV (segmentation fault) while validating "
                      f"{default_model.name}-Q8_0.gguf; nothing was written"], r.stderr
    assert "koquant doctor" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_sigill_names_the_build_as_the_cause(tmp_path, default_model):
    out = tmp_path / "out"
    r = _koquant("export", str(default_model), "--quant", "Q8_0", "--no-imatrix", "-o", str(out),
                 env=_inject(tmp_path, "sigill"))
    assert r.returncode == 5
    assert "crashed with SIGILL (illegal instruction)" in r.stderr and "bash install.sh" in r.stderr
    assert not out.exists()


def test_crash_in_chat_is_reported_before_the_process_ends(tmp_path, gguf_exports):
    art = gguf_exports("ocelot-mini")
    r = _koquant("chat", str(art.path), "--quant", "Q8_0", "--prompt", "안녕하세요", "--max-new-tokens", "4",
                 env=_inject(tmp_path, "chat-decode"))
    assert r.returncode == 5, r.stderr[-2000:]
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and line[0].startswith("error: llama.cpp crashed with SIGSEGV"), r.stderr
    assert "while answering in koquant chat" in line[0]
    assert "Segmentation fault" not in r.stderr.replace("(segmentation fault)", "")
    logs = re.findall(r"crash log (\S+\.log)", r.stderr)
    assert logs and "Fatal Python error: Segmentation fault" in Path(logs[0]).read_text()


# ---------------------------------------------------------------- koquant doctor
def test_doctor_lists_every_backend_and_passes_its_smoke_tests():
    r = _koquant("doctor", "--json", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert set(rep["backends"]) == {"llama.cpp", "torch", "onnxruntime", "gptqmodel"}
    assert rep["cpu"]["model"] and rep["cpu"]["logical_cpus"] >= 1
    for name, b in rep["backends"].items():
        assert b["found"], name
        assert b["smoke"]["passed"], (name, b["smoke"])
    llama = rep["backends"]["llama.cpp"]
    assert llama["versions"]["llama-cpp-python"] == llamacpp.LLAMA_CPP_PYTHON_VERSION
    assert llama["cpu"]["build"] == "portable" and llama["smoke"]["variant"] == llama["cpu"]["variant"]
    assert rep["backends"]["onnxruntime"]["mixed_cpu_gpu_install"] is False
    assert "CPUExecutionProvider" in rep["backends"]["onnxruntime"]["providers"]
    assert rep["backends"]["torch"]["cpu_capability"]
    text = _koquant("doctor", "--no-smoke")
    assert text.returncode == 0 and "llama.cpp: llama-cpp-python" in text.stdout and "CPU variant" in text.stdout


def test_doctor_reports_a_crashing_backend_and_goes_on(tmp_path):
    r = _koquant("doctor", "--json", env=_inject(tmp_path, "doctor-smoke"))
    assert r.returncode == 1
    rep = json.loads(r.stdout)
    smoke = rep["backends"]["llama.cpp"]["smoke"]
    assert not smoke["passed"] and smoke["error"].startswith("llama.cpp crashed with SIGSEGV")
    assert rep["backends"]["torch"]["smoke"]["passed"]  # the report went on past the crash
