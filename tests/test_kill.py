"""kill -9 at any point of an export leaves either no artifact or the previous complete one; a rerun succeeds.

Real ``koquant export`` processes are killed (``SIGKILL``, no cleanup code runs) while the converter
or the ONNX builder is writing, while the export is validated, and just before the finished folder
is swapped into place. After each kill the output folder is checked with ``koquant verify`` and
byte for byte against the previous artifact; the rerun after a kill must succeed and remove what
killed runs left (the folder of the run killed just before the swap, complete, must hold the same
bytes as the published one).
Random-weight miniatures and one lossless type keep each export to seconds. The model folder also
carries custom code (``auto_map``, ``modeling_*.py``) that would leave a canary file if it ever ran.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from koquant.cli.main import main
from koquant.testing.miniatures import materialize

from . import killing


def _model_with_custom_code(tmp_path: Path) -> tuple[Path, Path]:
    """A random miniature whose folder also carries code (auto_map in config.json, modeling_*.py) that
    would create a canary file if anything imported it: koquant stages only vetted files, so it never runs."""
    model = materialize("synatra-mini", tmp_path / "model", trained=False)
    canary = tmp_path / "canary"
    touch = f"import pathlib; pathlib.Path({str(canary)!r}).touch()\n"
    (model / "modeling_evil.py").write_text(touch + "from transformers import MistralForCausalLM as EvilForCausalLM\n")
    (model / "configuration_evil.py").write_text(touch + "from transformers import MistralConfig as EvilConfig\n")
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model / "config.json").write_text(json.dumps(cfg))
    return model, canary


def _verify(out: Path, capsys) -> int:
    rc = main(["verify", str(out)])
    capsys.readouterr()
    return rc


def _gguf_argv(model: Path, out: Path) -> list[str]:
    return ["export", str(model), "--quant", "F16", "--no-calib", "--eval-chunks", "1", "--eval-ctx", "64",
            "--name", "s", "-o", str(out)]


def _converting(out: Path):
    """True once llama.cpp's converter has started writing the base GGUF in the temporary folder."""
    def ready():
        return any(p.stat().st_size > 0 for t in killing.temp_folders(out) for p in t.glob(".work/*.gguf"))
    return ready


def test_gguf_export_killed_anywhere(tmp_path, capsys):
    out, log = tmp_path / "out", tmp_path / "child.log"
    model, canary = _model_with_custom_code(tmp_path)
    spec = {"argv": _gguf_argv(model, out)}

    # 1. no previous artifact, killed while llama.cpp's converter writes: nothing at OUT
    killing.kill_when(spec, log, _converting(out), "the converter writing the base GGUF")
    assert not out.exists()
    assert killing.temp_folders(out), "the kill should have left the temporary folder of the dead export"

    # 2. the rerun succeeds and removes what the killed run left
    assert killing.run(spec, log) == 0, log.read_text(errors="replace")[-3000:]
    assert killing.leftovers(out) == []
    assert _verify(out, capsys) == 0
    first = killing.snapshot(out)
    assert "s-F16.gguf" in first and "koquant.json" in first

    # 3-4. with a complete artifact at OUT: killed while validating, and just before the swap
    killing.kill_at(spec, log, "gguf-validate", tmp_path)
    assert killing.snapshot(out) == first and _verify(out, capsys) == 0
    killing.kill_at(spec, log, "publish", tmp_path)
    assert killing.snapshot(out) == first and _verify(out, capsys) == 0
    (stale,) = killing.temp_folders(out)  # a complete, validated export that never replaced OUT:
    assert killing.snapshot(stale) == first  # the same bytes as the first run's
    assert not canary.exists(), "code from the model folder was run"


def test_onnx_export_killed_anywhere(tmp_path, capsys):
    model, canary = _model_with_custom_code(tmp_path)
    out, log = tmp_path / "out", tmp_path / "child.log"
    spec = {"argv": ["export", str(model), "--fmt", "onnx", "--quant", "fp32", "--no-calib", "--eval-chunks", "1",
                     "--eval-ctx", "64", "--name", "s", "-o", str(out)]}

    def building():  # onnxruntime-genai's builder (a child process) has started writing the fp32 folder
        return any((t / "fp32").is_dir() or (t / ".work" / "builder-cache").is_dir() for t in killing.temp_folders(out))

    killing.kill_when(spec, log, building, "the ONNX builder writing")
    assert not out.exists() and killing.temp_folders(out)
    assert killing.run(spec, log) == 0, log.read_text(errors="replace")[-3000:]
    assert killing.leftovers(out) == [] and _verify(out, capsys) == 0
    first = killing.snapshot(out)
    assert {"fp32/model.onnx", "fp32/model.onnx.data", "fp32/koquant.json"} <= set(first)
    killing.kill_at(spec, log, "onnx-validate", tmp_path)
    assert killing.snapshot(out) == first and _verify(out, capsys) == 0
    killing.kill_at(spec, log, "publish", tmp_path)
    assert killing.snapshot(out) == first and _verify(out, capsys) == 0
    (stale,) = killing.temp_folders(out)
    assert killing.snapshot(stale) == first
    assert not canary.exists(), "code from the model folder was run"


# ---------------------------------------------------------------------------- the mechanism alone
def _staged(out: Path, payload: str, **kw) -> dict:
    return {"staged_only": True, "out": str(out), "payload": payload, **kw}


def test_kill_between_the_two_renames_of_the_fallback_swap(tmp_path):
    """Without RENAME_EXCHANGE, OUT is renamed aside first; a kill right then is undone by the next run."""
    from koquant.artifact import output_lock, recover

    out, log = tmp_path / "out", tmp_path / "child.log"
    assert killing.run(_staged(out, "v1"), log) == 0
    first = killing.snapshot(out)
    killing.kill_at(_staged(out, "v2"), log, "between-renames", tmp_path)
    assert not out.exists()  # the window the exchange closes: OUT is aside, the new one not yet in place
    (old,) = killing.temp_folders(out, ".koquant-old-")
    assert killing.snapshot(old) == first
    with output_lock(out):  # what every export into OUT does first
        recover(out)
    assert killing.snapshot(out) == first and killing.leftovers(out) == []
    assert killing.run(_staged(out, "v3"), log) == 0
    assert (out / "data.bin").read_text() == "v3" and killing.leftovers(out) == []


def test_a_live_export_is_never_disturbed(tmp_path):
    """A second export into the same OUT is refused while the first runs; its temporary folder is left alone."""
    out, log = tmp_path / "out", tmp_path / "child.log"
    marker = tmp_path / "holding"
    first = killing.start(_staged(out, "v1", hold=True, marker=str(marker)), log)
    try:
        while not marker.exists():
            assert first.poll() is None, log.read_text()
            time.sleep(0.02)
        assert killing.run(_staged(out, "v2"), log) == 2
        assert "another koquant process is writing" in log.read_text()
        assert len(killing.temp_folders(out)) == 1 and not out.exists()
    finally:
        killing.reap(first)
    assert killing.run(_staged(out, "v3"), log) == 0
    assert (out / "data.bin").read_text() == "v3" and killing.leftovers(out) == []


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux-only")
def test_publish_swaps_atomically(tmp_path):
    """On Linux the swap is one renameat2(RENAME_EXCHANGE): OUT never disappears, not even briefly."""
    from koquant.artifact.atomic import _exchange

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    if not _exchange(a, b):
        pytest.skip("this file system has no RENAME_EXCHANGE (koquant falls back to two renames, tested above)")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
