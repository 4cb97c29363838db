"""GPTQ bad input: one clear message with a hint, a non-zero exit, nothing in or beside the output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from koquant.source.checkpoint import TOKENIZER_FILES
from koquant.exporters.gptq.exporter import GPTQOptions, check_shapes, layer_widths

from .badinput import assert_clean, model, run_cli  # noqa: F401 (model is a fixture)


BAD_OPTIONS = {
    "3-bit": (["--bits", "3"], "GPTQ export does not support 3-bit weights"),
    "2-bit quant name": (["--quant", "w2g128"], "GPTQ export does not support 2-bit weights"),
    "group size 96": (["--group-size", "96"], "GPTQ group size 96 is not supported"),
    "two quants": (["--quant", "w4g128,w8g128"], "GPTQ writes one checkpoint per export"),
    "not a gptq name": (["--quant", "Q4_K_M"], "'q4_k_m' is not a GPTQ quant name"),
    "quant and bits disagree": (["--quant", "w4g128", "--bits", "8"], "quant w4g128 says bits=4, but bits=8"),
    "dampening": (["--damp", "1.5"], "GPTQ dampening 1.5 is outside (0, 1)"),
    "no calibration": (["--no-calib"], "GPTQ needs calibration text, but calibration is off"),
    "missing calibration file": (["--calib", "/nonexistent/ko.txt"], "/nonexistent/ko.txt"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_gptq_options(case, model, tmp_path, capsys):
    extra, message = BAD_OPTIONS[case]
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(model), "--fmt", "gptq", "-o", str(out), *extra], capsys)
    assert rc == 2 and message in err and "hint:" in err, err
    assert_clean(out)


def test_gptq_options_refused_for_other_formats(model, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(model), "--fmt", "onnx", "--group-size", "64", "-o", str(out)], capsys)
    assert rc == 2 and "--group-size apply to --fmt gptq only" in err and "hint:" in err
    assert_clean(out)


def _odd_width_model(src: Path, dest: Path, intermediate: int) -> Path:
    """A random miniature whose MLP is ``intermediate`` wide (so down_proj has that many input columns)."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(src)
    config.intermediate_size = intermediate
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(dest)
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and name != "generation_config.json":
            shutil.copyfile(src / name, dest / name)
    assert json.loads((dest / "config.json").read_text())["intermediate_size"] == intermediate
    return dest


def test_group_size_that_does_not_divide_a_layer_is_refused(model, tmp_path, capsys):
    odd = _odd_width_model(model, tmp_path / "odd", 320)
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(odd), "--fmt", "gptq", "--group-size", "128", "-o", str(out)], capsys)
    assert rc == 2, err
    assert "group size 128 does not divide the input width of model.layers.*.mlp.down_proj (in_features 320)" in err
    assert "group sizes that work for this model: 32, 64, -1" in err
    assert_clean(out)


def test_check_shapes_names_every_failing_layer():
    config = {"hidden_size": 200, "num_attention_heads": 5, "num_key_value_heads": 5, "intermediate_size": 512}
    assert layer_widths(config)["self_attn.o_proj"] == (200, 200)
    with pytest.raises(Exception) as e:
        check_shapes(config, GPTQOptions(group_size=64))
    text = str(e.value)
    for layer in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"):
        assert f"{layer} (in_features 200)" in text
    assert "down_proj" not in text
    assert "-1" in text.split("hint:")[1]
    check_shapes(config, GPTQOptions(group_size=-1))  # one group per row always fits (200 % 8 == 0)


def test_missing_gptqmodel_names_the_extra(model, tmp_path, capsys, monkeypatch):
    import importlib.metadata as md

    real = md.version

    def version(name):
        if name == "gptqmodel":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "version", version)
    out = tmp_path / "out"
    rc, err = run_cli(["export", str(model), "--fmt", "gptq", "-o", str(out)], capsys)
    assert rc == 2 and "GPTQ export needs GPTQModel, which is not installed" in err
    assert "-e '.[gptq]'" in err
    assert_clean(out)
