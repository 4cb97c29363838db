"""Resource faults: a full disk, an unwritable folder, a missing backend. One message, exit 2, nothing left.

The disk is a real size-limited file system (a tmpfs mounted for the test) when the tests run as
root where mounting is allowed; elsewhere ``ENOSPC`` is simulated by a converter that fills its
output and fails with it (the error path from there on is the same), and the unwritable folder is
a ``chmod 555`` one.
"""

from __future__ import annotations

import errno
import importlib.metadata as md
import importlib.util
import os
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

import pytest

from koquant.exporters import available_formats
from koquant.testing.miniatures import build_miniature

from .badinput import run_cli
from .killing import leftovers, snapshot


@lru_cache(maxsize=1)
def can_mount() -> bool:
    if os.geteuid() != 0 or os.environ.get("KOQUANT_TEST_NO_MOUNT"):  # the variable tries the fallbacks
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as probe:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", probe], check=True)
    return ok


@contextmanager
def small_disk(path: Path, size: str, read_only: bool = False):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _argv(out: Path) -> list[str]:
    return ["export", str(build_miniature("synatra-mini", trained=False)), "--quant", "F16", "--no-calib",
            "--eval-chunks", "1", "--eval-ctx", "64", "--name", "s", "-o", str(out)]


DISK_FULL = "no space left on the disk while exporting"


def _previous_artifact(out: Path) -> dict:
    """A small complete artifact at ``out`` (what an earlier export left), checked by koquant verify."""
    from koquant.artifact import inventory, write_manifest

    out.mkdir()
    (out / "earlier.gguf").write_bytes(b"GGUF earlier export")
    write_manifest(out, {"format": "gguf", "files": [{"path": "earlier.gguf", "quant": "F16"}],
                         "inventory": inventory(out)})
    return snapshot(out)


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("size, stage", [("16m", "converter"), ("80m", "quantizer")])
def test_disk_full_on_a_real_small_file_system(size, stage, tmp_path, capsys):
    """16 MiB: llama.cpp's converter (Python) cannot write the 72 MiB float32 base GGUF. 80 MiB: the base
    fits and llama.cpp's quantizer (C++) runs out writing F16. Either way the previous artifact at OUT
    stays as it was and nothing else is left on the disk."""
    with small_disk(tmp_path / "disk", size) as disk:
        out = disk / "out"
        before = _previous_artifact(out)
        rc, err = run_cli(_argv(out), capsys)
        assert rc == 2 and DISK_FULL in err and "hint:" in err, err
        assert snapshot(out) == before and run_cli(["verify", str(out)], capsys)[0] == 0
        assert sorted(p.name for p in disk.iterdir()) == ["out"]  # no partial file, temporary folder or lock


def test_disk_full_simulated(tmp_path, capsys, monkeypatch):
    """ENOSPC raised in the converter's process (runs everywhere, root or not): same message, nothing left."""
    from koquant.exporters.gguf import llamacpp

    def fill_and_fail(model_dir, outfile, outtype):
        outfile.write_bytes(bytes(1 << 20))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(outfile))

    monkeypatch.setattr(llamacpp, "convert_hf_to_gguf", fill_and_fail)
    out = tmp_path / "out"
    rc, err = run_cli(_argv(out), capsys)
    assert rc == 2 and DISK_FULL in err and "hint:" in err, err
    assert not out.exists() and leftovers(out) == []


def test_unwritable_output_folder(tmp_path, capsys):
    if can_mount():
        cm = small_disk(tmp_path / "ro", "1m", read_only=True)
    elif os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        cm = nullcontext(tmp_path / "ro")
    else:
        pytest.skip("root without mount: nothing is unwritable")
    with cm as parent:
        rc, err = run_cli(_argv(parent / "out"), capsys)
        assert rc == 2 and f"output location {parent} is not writable" in err and "hint:" in err, err
        assert list(parent.iterdir()) == []


# ---------------------------------------------------------------------------- missing backends
# format -> (import names, distribution names) of its backend; a new format must add its entry
BACKENDS = {
    "gguf": (("llama_cpp",), ("llama-cpp-python",)),
    "onnx": (("onnxruntime", "onnxruntime_genai"), ("onnxruntime", "onnxruntime-genai", "onnxruntime-gpu",
                                                   "onnxruntime-genai-cuda")),
    "gptq": (("gptqmodel",), ("gptqmodel",)),
}


@pytest.mark.parametrize("fmt", available_formats())
def test_missing_backend_names_the_extra(fmt, tmp_path, capsys, monkeypatch):
    assert fmt in BACKENDS, f"add the backend of {fmt} to BACKENDS"
    modules, dists = BACKENDS[fmt]
    real_version, real_find_spec = md.version, importlib.util.find_spec

    def version(name):
        if name in dists:
            raise md.PackageNotFoundError(name)
        return real_version(name)

    def find_spec(name, *a, **k):
        return None if name.split(".")[0] in modules else real_find_spec(name, *a, **k)

    monkeypatch.setattr(md, "version", version)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # `import m` now raises ImportError
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(build_miniature("synatra-mini", trained=False)), "--fmt", fmt, "-o", str(out)], capsys)
    assert rc == 2 and "not installed" in err, err
    assert f"-e '.[{fmt}]'" in err, err
    assert not out.exists() and leftovers(out) == []
