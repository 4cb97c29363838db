"""One export to several formats: ``koquant export MODEL --fmt gguf,gptq,onnx`` writes one validated bundle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from koquant.cli.main import main

from .runtime_backends import gptq_available, onnx_available

FORMATS = ["gguf"] + (["gptq"] if gptq_available() else []) + (["onnx"] if onnx_available() else [])
pytestmark = pytest.mark.skipif(len(FORMATS) < 2, reason="needs two export formats installed (gguf and gptq or onnx)")


@pytest.fixture(scope="module")
def bundle(miniature, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "out"
    quants = ["--quant", "gguf=Q8_0,Q4_K_M"] + (["--quant", "onnx=int4"] if "onnx" in FORMATS else [])
    r = subprocess.run([sys.executable, "-m", "koquant", "export", str(miniature("komt-mini")), "--fmt",
                        ",".join(FORMATS), *quants, "--calib-chunks", "4", "--calib-ctx", "256", "-o", str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr
    return out


def test_one_artifact_with_a_folder_per_format(bundle):
    top = json.loads((bundle / "koquant.json").read_text())
    assert top["format"] == "bundle" and top["parts"] == {f: f for f in FORMATS}
    parts = {f: json.loads((bundle / f / "koquant.json").read_text()) for f in FORMATS}
    assert [p["format"] for p in parts.values()] == FORMATS
    assert {f["path"].split("/")[0] for f in top["files"]} == set(FORMATS)
    assert all(f["validation"]["passed"] for f in top["files"])
    # one source, one calibration text, one held-out reference for every format
    assert len({json.dumps(p["source"], sort_keys=True) for p in parts.values()}) == 1
    assert len({p["calibration"]["sha256"] for p in parts.values()}) == 1
    assert len({json.dumps(p["evaluation"], sort_keys=True) for p in parts.values()}) == 1
    assert top["calibration"]["parts"]["gguf"]["file"] == "imatrix.gguf"
    # the same chunks (tokenized and hashed once) for every format; GGUF's importance matrix and ONNX int4's
    # GPTQ from one walk over the source
    assert len({p["calibration"]["chunks_sha256"] for p in parts.values()}) == 1
    assert top["calibration"]["chunks_sha256"] == parts["gguf"]["calibration"]["chunks_sha256"]
    one_pass = ["importance matrix (gguf)"] + (["int4 GPTQ, block 32 (onnx)"] if "onnx" in FORMATS else [])
    assert parts["gguf"]["calibration"]["one_pass"] == one_pass
    for f in ("gguf", "onnx"):
        if f in FORMATS:
            assert parts[f]["calibration"]["one_pass"] == one_pass == top["calibration"]["parts"][f]["one_pass"]
    if "gptq" in FORMATS:  # GPTQModel computes its Hessians in its own process, from the same chunks
        assert "one_pass" not in parts["gptq"]["calibration"] and "GPTQModel" in parts["gptq"]["calibration"]["used_for"]
    card = (bundle / "README.md").read_text()
    for f in FORMATS:
        assert f"## {f.upper()} (`{f}/`)" in card and (bundle / f / "README.md").is_file()
    assert not any(p.name.startswith(".work") for p in bundle.rglob("*"))


def test_the_bundle_verifies_and_loads_by_quant(bundle):
    import koquant
    from koquant.runtime.loader import variants

    assert main(["verify", str(bundle)]) == 0
    for f in FORMATS:
        assert main(["verify", str(bundle / f)]) == 0
    labels = [v.label for v in variants(bundle)]
    assert labels[:2] == ["Q8_0", "Q4_K_M"]
    with koquant.load(bundle, quant="Q4_K_M") as s:
        assert s.format == "gguf" and s.quant == "Q4_K_M"
        ids = s.encode_chat([{"role": "user", "content": "안녕하세요"}])
    if "onnx" in FORMATS:
        with koquant.load(bundle, quant="onnx-int4") as s:
            assert s.format == "onnx" and s.encode_chat([{"role": "user", "content": "안녕하세요"}]) == ids
    from koquant.runtime.loader import LoadError

    with pytest.raises(LoadError, match="choose one"):
        koquant.load(bundle)
    with pytest.raises(LoadError, match="has no Q2_K"):
        koquant.load(bundle, quant="Q2_K")


@pytest.mark.parametrize("args, message", [
    (["--fmt", "gguf,gptq", "--quant", "Q8_0"], "does not say which of gguf, gptq"),
    (["--fmt", "gguf", "--quant", "onnx=int4"], "names onnx, which --fmt does not export"),
    (["--fmt", "gguf,gptq", "--int4-algo", "rtn"], "apply to --fmt onnx only"),
    (["--fmt", "gguf,pdf"], "pdf"),
])
def test_bad_multi_format_requests_are_refused(miniature, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    rc = main(["export", str(miniature("komt-mini")), *args, "-o", str(out)])
    assert rc != 0
    assert message in capsys.readouterr().err
    assert not out.exists()
