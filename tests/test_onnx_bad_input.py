"""ONNX bad input: one clear message with a hint, a non-zero exit, nothing in or beside the output."""

from __future__ import annotations

import subprocess
import sys

import pytest


from .badinput import assert_clean, model, run_cli  # noqa: F401 (model is a fixture)


BAD_OPTIONS = {
    "unknown precision": (["--quant", "int3"], "unknown ONNX quant type(s): int3"),
    "fp16 on CPU": (["--quant", "fp32,fp16"], "fp16 ONNX export is not supported on CPU"),
    "unknown int4 algorithm": (["--int4-algo", "awq"], "unknown int4 algorithm 'awq'"),
    "block size": (["--block-size", "48"], "block size 48 is not supported by MatMulNBits"),
    "accuracy level": (["--accuracy-level", "2"], "accuracy level 2 is not available on the CPU execution provider"),
    "gptq without calibration": (["--int4-algo", "gptq", "--no-calib"], "--int4-algo gptq needs Korean calibration"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_onnx_options(case, model, tmp_path, capsys):
    extra, message = BAD_OPTIONS[case]
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(model), "--fmt", "onnx", "-o", str(out), *extra], capsys)
    assert rc == 2 and message in err and "hint:" in err, err
    assert_clean(out)


def test_onnx_options_refused_for_other_formats(model, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(model), "--fmt", "gguf", "--int4-algo", "rtn", "-o", str(out)], capsys)
    assert rc == 2 and "--int4-algo apply to --fmt onnx only" in err and "hint:" in err
    assert_clean(out)


def test_unsupported_family_is_refused(model, tmp_path, capsys, monkeypatch):
    from koquant.exporters.onnx import builder

    monkeypatch.delitem(builder.BUILDER_ARCHITECTURES, "MistralForCausalLM")
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(model), "--fmt", "onnx", "--quant", "fp32", "-o", str(out)], capsys)
    assert rc == 2 and "model builder cannot export MistralForCausalLM" in err and "try --fmt gguf" in err
    assert_clean(out)


def test_missing_tokenizer(model, tmp_path, capsys):
    for name in ("tokenizer.json", "tokenizer.model"):
        (model / name).unlink()
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(model), "--fmt", "onnx", "-o", str(out)], capsys)
    assert rc == 2 and "no tokenizer in" in err and "hint:" in err
    assert_clean(out)


def test_unwritable_output(model, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, err = run_cli(["export", str(model), "--fmt", "onnx", "-o", str(blocker / "out")], capsys)
    assert rc == 2 and "cannot create the output's parent folder" in err
    assert blocker.read_text() == "x"


def _pretend_installed(monkeypatch, packages: dict[str, str]):
    import importlib.metadata as md

    from koquant.exporters.onnx import genai

    def version(name):
        if name in packages:
            return packages[name]
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(genai.md, "version", version)


def test_cpu_and_gpu_runtimes_together_are_refused(model, tmp_path, capsys, monkeypatch):
    _pretend_installed(monkeypatch, {"onnxruntime": "1.31.1", "onnxruntime-genai": "0.18.0",
                                     "onnxruntime-gpu": "1.31.1"})
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(model), "--fmt", "onnx", "-o", str(out)], capsys)
    assert rc == 2
    assert "the CPU and GPU builds of onnxruntime are installed together" in err
    assert "onnxruntime-gpu==1.31.1" in err and "pip uninstall" in err
    assert_clean(out)


@pytest.mark.parametrize("packages, message", [
    ({}, "needs onnxruntime and onnxruntime-genai"),
    ({"onnxruntime": "1.31.1", "onnxruntime-genai": "0.17.1"}, "onnxruntime-genai 0.17.1 is installed"),
    ({"onnxruntime-gpu": "1.31.1", "onnxruntime-genai-cuda": "0.18.0", "onnxruntime-genai": "0.18.0"},
     "installed together"),
])
def test_missing_or_wrong_runtime(packages, message, model, tmp_path, capsys, monkeypatch):
    _pretend_installed(monkeypatch, packages)
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(model), "--fmt", "onnx", "-o", str(out)], capsys)
    assert rc == 2 and message in err and "pip install" in err
    assert_clean(out)


def test_failed_gate_leaves_nothing(miniature, tmp_path, capsys, monkeypatch):
    from koquant.exporters import gate

    monkeypatch.setitem(gate.THRESHOLDS, "int4", gate.Thresholds(1.0, 0.0, 0.0))
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(miniature("komt-mini")), "--fmt", "onnx", "--int4-algo", "rtn",
                    "--eval-chunks", "1", "-o", str(out)], capsys)
    assert rc == 3 and "validation failed" in err and "int4/model.onnx" in err
    assert_clean(out)


def test_onnx_paths_stay_lean():
    """Choosing and checking the ONNX format imports neither onnxruntime nor torch."""
    code = ("import sys; from koquant.exporters import get_exporter; from koquant.quant_recipes.recipe import Recipe; "
            "get_exporter('onnx').check_recipe(Recipe('onnx', ('int4',))); "
            "print([m for m in ('torch', 'onnx', 'onnxruntime', 'onnxruntime_genai', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
