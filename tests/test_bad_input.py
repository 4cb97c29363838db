"""Bad input: one clear message, a non-zero exit, and nothing left in or beside the output folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from koquant.cli.main import main
from koquant.testing.miniatures import materialize


@pytest.fixture
def model(tmp_path):
    """A private copy of a (random-weight) miniature that a test may damage."""
    return materialize("synatra-mini", tmp_path / "model", trained=False)


def _edit_config(model: Path, **changes):
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(changes)
    (model / "config.json").write_text(json.dumps(cfg))


def _missing_config(m):
    (m / "config.json").unlink()


def _unknown_arch(m):
    _edit_config(m, architectures=["BertForMaskedLM"])


def _truncated_weights(m):
    p = m / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _corrupt_header(m):
    p = m / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[0:8] = (2**62).to_bytes(8, "little")  # absurd header length
    p.write_bytes(bytes(data))


def _garbage_header(m):
    p = m / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[8:20] = b"\xff" * 12
    p.write_bytes(bytes(data))


def _missing_tokenizer(m):
    for name in ("tokenizer.json", "tokenizer.model"):
        (m / name).unlink()


def _vocab_mismatch(m):
    _edit_config(m, vocab_size=30000)


def _pickle_weights(m):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(m / "model.safetensors"), m / "pytorch_model.bin")
    (m / "model.safetensors").unlink()


def _zero_heads(m):
    _edit_config(m, num_attention_heads=0)


def _config_not_json(m):
    (m / "config.json").write_text("{not json")


def _tokenizer_path_escape(m):
    cfg = json.loads((m / "tokenizer_config.json").read_text())
    cfg["vocab_file"] = "../../../etc/passwd"
    (m / "tokenizer_config.json").write_text(json.dumps(cfg))


BAD_MODELS = {
    "missing config.json": (_missing_config, "no config.json", 2),
    "config.json not JSON": (_config_not_json, "config.json is not valid JSON", 2),
    "unknown architecture": (_unknown_arch, "unknown architecture 'BertForMaskedLM'", 2),
    "zero attention heads": (_zero_heads, "lacks valid values for num_attention_heads", 2),
    "truncated safetensors": (_truncated_weights, "model.safetensors is truncated", 2),
    "corrupt safetensors header": (_corrupt_header, "header declares", 2),
    "garbage safetensors header": (_garbage_header, "header is not JSON", 2),
    "missing tokenizer": (_missing_tokenizer, "no tokenizer in", 2),
    "vocab size mismatch": (_vocab_mismatch, "vocab size mismatch", 2),
    "pickle weights": (_pickle_weights, "holds only pickle weights", 2),
    "tokenizer path outside folder": (_tokenizer_path_escape, "points outside the model folder", 2),
}


def _assert_clean(out: Path):
    assert not out.exists() or not any(out.iterdir()), "partial output left behind"
    leftovers = [p.name for p in out.parent.iterdir() if ".koquant-" in p.name]
    assert leftovers == []


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_folder(case, model, tmp_path, capsys):
    damage, message, code = BAD_MODELS[case]
    damage(model)
    out = tmp_path / "out"
    rc = main(["export", str(model), "--fmt", "gguf", "--quant", "Q4_K_M", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == code
    assert message in err
    assert "hint:" in err  # every message names the next step
    assert "Traceback" not in err
    _assert_clean(out)


BAD_OPTIONS = {
    "unknown format": (["--fmt", "tflite"], "unknown format 'tflite'"),
    "unknown quant": (["--quant", "Q4_K_X"], "unknown GGUF quant type(s): Q4_K_X"),
    "imatrix-only type without calibration": (["--quant", "IQ2_XXS", "--no-calib"], "require an importance matrix"),
    "missing calibration file": (["--calib", "/nonexistent/ko.txt"], "calibration text /nonexistent/ko.txt does not exist"),
    "zero calibration chunks": (["--calib-chunks", "0"], "--calib-chunks must be positive"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options(case, model, tmp_path, capsys):
    extra, message = BAD_OPTIONS[case]
    out = tmp_path / "out"
    rc = main(["export", str(model), "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert rc != 0 and message in err, err
    _assert_clean(out)


def test_calibration_overlapping_heldout_is_refused(model, tmp_path, capsys):
    from koquant.quant_recipes.calibration import korean_constitution

    calib = tmp_path / "calib.txt"
    calib.write_text(korean_constitution().plain_text(), encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["export", str(model), "--calib", str(calib), "-o", str(out)])
    assert rc == 2 and "overlaps the held-out evaluation text" in capsys.readouterr().err
    _assert_clean(out)


def test_unwritable_output(model, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc = main(["export", str(model), "-o", str(blocker / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot create the output's parent folder" in err
    assert blocker.read_text() == "x"


def test_output_folder_with_foreign_files_is_not_clobbered(model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc = main(["export", str(model), "-o", str(out)])
    assert rc == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_failed_validation_leaves_nothing(miniature, tmp_path, capsys, monkeypatch):
    """An export that drifts from the source beyond the strict bounds fails the gate: exit 3, no artifact."""
    from koquant.exporters import gate

    monkeypatch.setitem(gate.THRESHOLDS, "Q8_0", gate.Thresholds(1.0, 0.0, 0.0))
    out = tmp_path / "out"
    rc = main(["export", str(miniature("komt-mini")), "--quant", "Q8_0", "--calib-chunks", "4", "--gate", "strict",
               "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 3 and "validation failed" in err and "mean KL" in err
    _assert_clean(out)


def test_pickle_weights_with_allow_pickle(miniature, tmp_path):
    """--allow-pickle loads *.bin with weights_only=True and gives the same GGUF as safetensors."""
    import koquant

    src = materialize("komt-mini", tmp_path / "model")
    _pickle_weights(src)
    recipe = koquant.Recipe("gguf", ("F16",), calib=None, name="komt")
    art = koquant.export(src, recipe, tmp_path / "out", allow_pickle=True)
    ref = koquant.export(miniature("komt-mini"), recipe, tmp_path / "ref")
    assert art.files[0]["validation"]["passed"]
    assert art.files[0]["sha256"] == ref.files[0]["sha256"]
    assert not any(p.suffix == ".bin" for p in art.path.iterdir())
    shutil.rmtree(src)


def test_missing_backend_names_the_extra(model, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    out = tmp_path / "out"
    rc = main(["export", str(model), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "needs llama-cpp-python" in err and "koquant[gguf]" in err
    _assert_clean(out)
