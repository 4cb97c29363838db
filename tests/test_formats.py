"""The format registry (koquant.exporters): every entry complete, its parts where it says, and the
stages reading it rather than tables of their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from koquant.errors import RecipeError
from koquant.exporters import Exporter, available_formats, export_formats, format_of, formats, get_exporter
from koquant.plan.exports import Export
from koquant.plan.presets import preset_spec
from koquant.runtime.loader import resolve
from koquant.runtime.session import Backend
from koquant.source.architectures import BACKENDS


@pytest.mark.parametrize("fmt", formats(), ids=lambda f: f.name)
def test_entry_points_resolve_to_the_right_kind(fmt):
    backend = fmt.backend_class()
    assert issubclass(backend, Backend) and backend.format == fmt.name
    if fmt.exporter is None:
        with pytest.raises(RecipeError, match="does not make them"):
            fmt.exporter_class()
        return
    exporter = get_exporter(fmt.name)
    assert isinstance(exporter, Exporter) and exporter.format is fmt
    assert set(fmt.default_quants) <= set(fmt.quants)


@pytest.mark.parametrize("fmt", export_formats(), ids=lambda f: f.name)
def test_each_sizer_plans_every_quant_it_is_asked_by_default(fmt):
    spec = preset_spec("synatra-7b")
    sizer = fmt.sizer_function()
    for quant in fmt.planned:
        row = sizer(spec, quant, imatrix=False)
        assert isinstance(row, Export) and row.format == fmt.name and row.variant == quant
        assert row.file_bytes > row.weight_bytes / 2 > 0


def test_architecture_backends_name_the_export_formats():
    # source/ sits below exporters/, so the registry's names are copied there; this keeps the copy honest
    assert sorted(BACKENDS) == available_formats()


def test_unknown_format_lists_the_registry():
    with pytest.raises(RecipeError) as e:
        format_of("safetensors", exported=True)
    assert e.value.hint == "choose one of: " + ", ".join(available_formats())


def _folder(tmp_path, name, files: dict):
    d = tmp_path / name
    d.mkdir()
    for rel, content in files.items():
        (d / rel).write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return d


def test_each_folder_is_recognised_by_exactly_its_format(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    folders = {
        "gguf": _folder(tmp_path, "g", {"m-Q4_K_M.gguf": "", "imatrix.gguf": ""}),
        "onnx": _folder(tmp_path, "o", {"genai_config.json": {}, "config.json": config}),
        "gptq": _folder(tmp_path, "q", {"config.json": {**config, "quantization_config": {"quant_method": "gptq"}}}),
        "hf": _folder(tmp_path, "h", {"config.json": config}),
    }
    folders["gptq-v2"] = _folder(tmp_path, "q2", {"config.json": config, "quantize_config.json": {}})
    for expected, folder in folders.items():
        first = next(f.name for f in formats() if f.detect(folder))
        assert first == expected.split("-")[0], folder
    # the loader resolves them by the same entries; an importance matrix is not a model
    assert resolve(folders["gguf"]).model.name == "m-Q4_K_M.gguf"
    assert resolve(folders["gguf"]).quant == "Q4_K_M"
    assert resolve(folders["gptq"]).format == "gptq"


def test_cli_help_and_plan_read_the_registry_without_exporter_modules():
    code = ("import sys, io, contextlib; from koquant.cli.main import build_parser\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try: build_parser().parse_args(['export', '--help'])\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.endswith('.exporter') or m == 'torch'))\n"
            "print(buf.getvalue())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, help_text = out.split("\n", 1)
    assert loaded == "[]"
    flat = " ".join(help_text.split())
    for fmt in export_formats():
        assert f"{fmt.name} ({fmt.runtime})" in flat
        assert f"{','.join(fmt.default_quants)} for {fmt.name}" in flat
