"""``koquant bench`` on the trained default miniature and its exports, through the real runtimes.

The references are independent of the bench: llama.cpp's own ``llama-perplexity`` for GGUF
perplexity, transformers' own forward pass for the multiple-choice log-likelihoods, PIL for the
plot. Settings are small (4 chunks of 256 tokens, 2 timed runs, 32 decode steps) so the file
fits CI on 2 cores; the default settings run in ``benchmarks/bench_default_set.py``.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from koquant.bench import BenchError, bench
from koquant.cli.main import main as cli_main
from koquant.testing.miniatures import DEFAULT_MODEL

from .badinput import run_cli
from .runtime_backends import gptq_available, onnx_available

# one thread: on a 2-core machine shared with other work, two threads per runtime spend more time
# waiting for each other than computing (torch decodes 7x slower there than with one)
SMALL = dict(threads=1, ctx=256, chunks=4, warmup=1, repeats=2, decode_tokens=32)
MC_ITEMS = [
    {"context": "대한민국은 민주", "choices": ["공화국이다.", "주의이다."], "label": 0},
    {"context": "대한민국의 주권은 국민에게 있고, 모든 권력은 ", "choices": ["국민으로부터 나온다.", "정부로부터 나온다."], "label": 0},
    {"context": "국회는 ", "choices": ["법률을 제정한다.", "사과를 먹는다.", "바다를 건넌다."], "label": 0},
]


@pytest.fixture(scope="module")
def artifacts(gguf_exports, request):
    """The default miniature's exports: GGUF F16/Q8_0/Q4_K_M, ONNX fp32/int4, GPTQ w4g128 (as installed)."""
    paths = [gguf_exports(DEFAULT_MODEL).path]
    if onnx_available():
        paths.append(request.getfixturevalue("onnx_exports")(DEFAULT_MODEL).path)
    if gptq_available():
        paths.append(request.getfixturevalue("gptq_exports")(DEFAULT_MODEL).path)
    return paths


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("mc") / "items.jsonl"
    p.write_text("\n".join(json.dumps(i, ensure_ascii=False) for i in MC_ITEMS) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def run(default_model, artifacts, mc_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report"
    report = bench(default_model, artifacts, out, mc=mc_file, **SMALL)
    return report, out


def _expected_names() -> list[str]:
    names = ["gguf:F16", "gguf:Q8_0", "gguf:Q4_K_M"]
    if onnx_available():
        names += ["onnx:fp32", "onnx:int4"]
    if gptq_available():
        names += ["gptq:w4g128"]
    return names


# ---------------------------------------------------------------------------- the report
def test_writes_all_three_outputs_naming_every_export(run):
    report, out = run
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]
    assert not list(out.parent.glob(f".{out.name}.koquant-*")), "the staging folder was left behind"
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in data["exports"]] == _expected_names()
    md = (out / "report.md").read_text(encoding="utf-8")
    for name in _expected_names():
        assert f"| {name} |" in md
    # the baseline is the source in its stored dtype (the miniature is stored as float32), and says so
    assert data["source"]["stored_dtype"] == data["source"]["baseline_dtype"] == "float32"
    assert "run by transformers in **float32** (the dtype it is stored in)" in md
    # the chunking is stated: 4 chunks of 256, positions 128..254 scored
    assert data["text"]["chunks"] == 4 and data["text"]["scored_per_chunk"] == 127
    assert data["baseline"]["positions"] == 4 * 127
    assert "llama-perplexity" in data["text"]["chunking"]
    assert data["machine"]["memory_bandwidth"]["bytes_per_s"] > 1e8
    assert {"koquant", "torch", "llama_cpp_python"} <= set(data["versions"])
    for e in data["exports"]:
        for key in ("kl_mean", "kl_p99", "kl_max", "top1", "ppl", "ppl_ratio", "decode_tok_s", "ttft_s", "load_s",
                    "prefill_128_tok_s", "prefill_512_tok_s", "peak_rss_bytes", "file_bytes", "bound_tok_s"):
            assert isinstance(e[key], (int, float)) and math.isfinite(e[key]), (e["name"], key, e.get(key))
        assert 0 <= e["kl_mean"] <= e["kl_p99"] <= e["kl_max"]
        assert 0 < e["top1"] <= 1
        lat = e["latency"]["decode_tok_s"]
        assert len(lat["values"]) == SMALL["repeats"] and lat["min"] <= lat["median"] <= lat["max"]
        # a separate process per export: its peak RSS is its own, above what it held before loading
        assert e["rss_before_load_bytes"] < e["peak_rss_bytes"] < 8 * 2**30


def test_numbers_mean_what_they_say(run):
    report, _ = run
    f16 = report.export("gguf:F16")
    assert f16["kl_mean"] < 1e-4  # the bound for F16 against an fp32-stored source
    assert f16["top1"] >= 0.999
    assert abs(f16["ppl_ratio"] - 1) < 1e-3
    # quantization costs something, more at 4 bits than at 8
    q8, q4 = report.export("gguf:Q8_0"), report.export("gguf:Q4_K_M")
    assert f16["kl_mean"] < q8["kl_mean"] < q4["kl_mean"]
    assert f16["file_bytes"] > q8["file_bytes"] > q4["file_bytes"]
    assert q4["size_ratio"] < 0.5
    if onnx_available():
        assert report.export("onnx:fp32")["kl_mean"] < 1e-6
        assert report.export("onnx:fp32")["kl_mean"] < report.export("onnx:int4")["kl_mean"]
    # bytes per decoded token: the weights without the untied input embedding
    assert 0 < q4["bytes_per_token"] < q4["file_bytes"]
    assert report.baseline["ppl_ratio"] == 1.0 and report.baseline.get("kl_mean") is None


def test_png_opens_and_labels_every_export(run, tmp_path):
    from PIL import Image

    from koquant.bench.plot import render

    report, out = run
    with Image.open(out / "report.png") as im:
        im.verify()
    with Image.open(out / "report.png") as im:
        assert im.format == "PNG"
        w, h = im.size
        assert 1000 <= w <= 2000 and 400 <= h <= 1000, im.size
        # not a blank canvas: several distinct colours
        assert len(im.convert("RGB").getcolors(1 << 20)) > 20
    labels = render(report, tmp_path / "again.png")
    assert labels["size_vs_kl"] == report.names
    assert labels["decode"] == report.names


def test_pareto_front():
    from koquant.bench.plot import pareto_front

    pts = [("a", 20.0, 1e-6), ("b", 11.0, 1e-3), ("c", 7.0, 2e-2), ("d", 6.5, 3e-2), ("e", 8.0, 5e-2)]
    assert pareto_front(pts) == ["d", "c", "b", "a"]  # e is bigger and worse than c



def test_large_vocabulary_baseline_keeps_top_k_and_bounds_kl(tmp_path, monkeypatch):
    """Past the size budget the baseline keeps each row's top-k log-probs and the tail's mass (not
    positions x vocab floats): its KL is a lower bound within a hair of the exact one, top-1 is exact."""
    from koquant.bench import quality as q

    rng = np.random.default_rng(0)
    vocab, rows = 50_000, 96
    base = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    export = base + (rng.standard_normal((rows, vocab)) * 0.05).astype(np.float32)
    export[::7] += (rng.standard_normal((len(export[::7]), vocab)) * 2).astype(np.float32)  # some rows far off

    def kl_and_agree(folder):
        baseline = q.Baseline(folder)
        lp = q.log_softmax(export)
        return baseline.kind, *baseline.compare(0, lp, np.argmax(export, axis=-1))

    full = q.BaselineRecorder(tmp_path / "full", rows, vocab)
    assert full.kind == "full"
    full.write(0, base)
    full.close()
    monkeypatch.setattr(q, "FULL_BASELINE_BYTES", 1 << 20)
    assert q.baseline_kind(rows, vocab) == "topk" and q.baseline_kind(rows, q.TOPK) == "full"
    top = q.BaselineRecorder(tmp_path / "top", rows, vocab)
    top.write(0, base[:50])
    top.write(50, base[50:])
    top.close()
    on_disk = sum(f.stat().st_size for f in (tmp_path / "top").iterdir())
    assert on_disk < rows * vocab * 4 / 5

    kind_full, kl_full, agree_full = kl_and_agree(tmp_path / "full")
    kind_top, kl_top, agree_top = kl_and_agree(tmp_path / "top")
    assert (kind_full, kind_top) == ("full", "topk")
    assert agree_full == agree_top < rows
    assert np.all(kl_top <= kl_full + 1e-9)
    assert np.allclose(kl_top, kl_full, rtol=0.1, atol=1e-6)  # these logits are flatter than a trained LM's
    assert "lower bound" in q.kl_method("topk") and "whole vocabulary" in q.kl_method("full")

# ---------------------------------------------------------------------------- reproducible, and right
def test_quality_numbers_are_reproducible(run, default_model, artifacts, mc_file):
    """Same inputs, same quality numbers: bench again (quality only) one export of each runtime."""
    report, _ = run
    one_each = [artifacts[0] / f"{DEFAULT_MODEL}-Q4_K_M.gguf", *artifacts[1:]]
    if onnx_available():
        one_each[1] = artifacts[1] / "int4"
    again = bench(default_model, one_each, None, mc=mc_file, latency=False,
                  **{k: v for k, v in SMALL.items() if k not in ("warmup", "repeats", "decode_tokens")})
    first = report.quality_numbers()
    assert again.quality_numbers() == {name: first[name] for name in again.quality_numbers()}
    assert len(again.exports) == len(artifacts)


def _llama_perplexity(bindir, model, text_file, ctx: int, chunks: int) -> float:
    # llama.cpp's tools print through an asynchronous log thread; on a loaded machine the process can exit
    # before it has written the last lines (rc 0, no "Final estimate"): such a run is repeated
    for _ in range(3):
        proc = subprocess.run([str(bindir / "llama-perplexity"), "-m", str(model), "-f", str(text_file), "-c",
                               str(ctx), "--chunks", str(chunks), "-t", "1"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
        if m:
            return float(m.group(1))
    raise AssertionError((proc.stdout + proc.stderr)[-2000:])


def test_gguf_perplexity_matches_llama_perplexity(run, llama_tools, tmp_path):
    """Same file, same text, same chunking: koquant's numbers are llama.cpp's own within 0.5 %."""
    from koquant.quant_recipes.calibration import korean_constitution

    report, _ = run
    text = tmp_path / "constitution.txt"
    text.write_text(korean_constitution().plain_text(), encoding="utf-8")  # what the bench reads by default
    for name in ("gguf:F16", "gguf:Q4_K_M"):
        e = report.export(name)
        want = _llama_perplexity(llama_tools, e["model"], text, SMALL["ctx"], SMALL["chunks"])
        assert abs(e["ppl"] / want - 1) < 0.005, (name, e["ppl"], want)


def test_multiple_choice_probe_matches_transformers(run, default_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report, _ = run
    tok = AutoTokenizer.from_pretrained(default_model)
    model = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32).eval()
    want = []
    for item in MC_ITEMS:
        n_ctx = len(tok(item["context"])["input_ids"])
        for choice in item["choices"]:
            ids = tok(item["context"] + choice)["input_ids"]
            start = next((i for i, (a, b) in enumerate(zip(ids, tok(item["context"])["input_ids"])) if a != b),
                         min(n_ctx, len(ids)))
            with torch.inference_mode():
                lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            want.append(sum(float(lp[i - 1, ids[i]]) for i in range(start, len(ids))))
    base = report.baseline
    np.testing.assert_allclose(base["mc_logliks"], want, rtol=1e-4, atol=1e-4)
    assert base["mc"]["picks"] == [int(np.argmax(want[k:k + len(i["choices"])]))
                                   for k, i in zip(np.cumsum([0] + [len(i["choices"]) for i in MC_ITEMS]), MC_ITEMS)]
    f16 = report.export("gguf:F16")
    np.testing.assert_allclose(f16["mc_logliks"], want, rtol=1e-3, atol=1e-3)
    assert f16["mc"]["agreement"] == 1.0
    for e in report.exports:
        assert e["mc"]["items"] == len(MC_ITEMS) and 0 <= e["mc"]["acc"] <= 1


def test_baseline_dtype_override_is_used_and_stated(run, default_model, gguf_exports, tmp_path, capsys):
    """--baseline-dtype bfloat16 runs the fp32-stored source in bf16, and the report says so (CLI, --json)."""
    report, _ = run
    art = gguf_exports(DEFAULT_MODEL).path / f"{DEFAULT_MODEL}-F16.gguf"
    out = tmp_path / "bf16"
    rc = cli_main(["bench", str(default_model), str(art), "--baseline-dtype", "bfloat16", "--no-latency", "--ctx", "256",
                   "--chunks", "4", "--threads", "1", "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["baseline_dtype"] == "bfloat16"
    assert [e["name"] for e in summary["entries"]] == ["source", "gguf:F16"]
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["source"]["stored_dtype"] == "float32" and data["source"]["baseline_dtype"] == "bfloat16"
    assert "**bfloat16** (--baseline-dtype; it is stored as float32)" in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "report.png").is_file() and "decode_tok_s" not in data["exports"][0]
    # bf16 activations move the baseline away from the exact float32 computation the F16 file reproduces
    kl_bf16 = data["exports"][0]["kl_mean"]
    assert kl_bf16 > 10 * report.export("gguf:F16")["kl_mean"]
    assert data["baseline"]["ppl"] != report.baseline["ppl"]


# ---------------------------------------------------------------------------- bad input
def _cli(args, capsys) -> tuple[int, str]:
    return run_cli(["bench", *map(str, args)], capsys)


def _nothing_written(out) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.koquant-*"))


def test_missing_artifact_is_one_message(default_model, tmp_path, capsys):
    out = tmp_path / "r"
    rc, err = _cli([default_model, tmp_path / "nope.gguf", "-o", out], capsys)
    assert rc == 2 and "nope.gguf does not exist" in err and "hint:" in err
    _nothing_written(out)


def test_unknown_format_and_non_model(default_model, tmp_path, capsys):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "koquant.json").write_text(json.dumps({"format": "tflite", "files": [{"path": "m.tflite", "quant": "x"}]}))
    out = tmp_path / "r"
    rc, err = _cli([default_model, odd, "-o", out], capsys)
    assert rc == 2 and "no runtime" in err
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"not a model")
    rc, err = _cli([default_model, junk, "-o", out], capsys)
    assert rc == 2 and "not a model koquant can run" in err
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"definitely not gguf")
    rc, err = _cli([default_model, fake, "-o", out], capsys)
    assert rc == 2 and "GGUF" in err
    _nothing_written(out)


def test_text_and_probe_files_are_checked(default_model, gguf_exports, tmp_path, capsys):
    art = gguf_exports(DEFAULT_MODEL).path / f"{DEFAULT_MODEL}-Q4_K_M.gguf"
    out = tmp_path / "r"
    rc, err = _cli([default_model, art, "--text", tmp_path / "missing.txt", "-o", out], capsys)
    assert rc == 2 and "missing.txt does not exist" in err
    short = tmp_path / "short.txt"
    short.write_text("대한민국은 민주공화국이다.\n", encoding="utf-8")
    rc, err = _cli([default_model, art, "--text", short, "-o", out], capsys)
    assert rc == 2 and "fewer than one chunk" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "가", "choices": ["나"], "label": 0}\n', encoding="utf-8")
    rc, err = _cli([default_model, art, "--mc", bad, "-o", out], capsys)
    assert rc == 2 and "bad.jsonl:1" in err
    rc, err = _cli([tmp_path / "no-model", art, "-o", out], capsys)
    assert rc == 2 and "does not exist" in err
    _nothing_written(out)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    rc, err = _cli([default_model, art, "-o", taken], capsys)
    assert rc == 2 and "not a koquant bench report" in err
    assert (taken / "keep.txt").read_text() == "mine"


def test_importance_matrix_in_a_glob_is_skipped_and_reported(default_model, gguf_exports, tmp_path, capsys):
    """``koquant bench MODEL OUT/*.gguf``: the glob brings imatrix.gguf along; it is skipped with a note, every
    model file is benched, and the report says what was skipped."""
    art = gguf_exports(DEFAULT_MODEL).path
    given = sorted(art.glob("*.gguf"))
    assert art / "imatrix.gguf" in given
    out = tmp_path / "r"
    rc = cli_main(["bench", str(default_model), *map(str, given), "--no-latency", "--ctx", "256", "--chunks", "1",
                   "--threads", "1", "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    imatrix = str(art / "imatrix.gguf")
    assert f"note: skipping {imatrix}: an importance matrix (general.type imatrix), not a model" in captured.err
    summary = json.loads(captured.out)
    assert [e["name"] for e in summary["entries"]] == ["source", "gguf:F16", "gguf:Q4_K_M", "gguf:Q8_0"]
    skipped = [{"path": imatrix, "reason": "an importance matrix (general.type imatrix), not a model"}]
    assert summary["skipped"] == skipped
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["skipped"] == skipped
    assert f"Skipped (not a model): `{imatrix}`" in (out / "report.md").read_text(encoding="utf-8")


def test_damaged_target_is_refused_before_any_measurement(default_model, gguf_exports, tmp_path, capsys, monkeypatch):
    """A truncated GGUF after good ones stops the bench before anything runs, naming it; no report is written.
    A list holding nothing but an importance matrix is refused alike, and koquant.load refuses one."""
    import koquant
    import koquant.bench.runner as runner
    from koquant.runtime.loader import LoadError

    def no_work(*_a, **_kw):
        raise AssertionError("a worker ran before every target was checked")

    monkeypatch.setattr(runner, "_run_worker", no_work)
    art = gguf_exports(DEFAULT_MODEL).path
    good = art / f"{DEFAULT_MODEL}-Q4_K_M.gguf"
    cut = tmp_path / f"{DEFAULT_MODEL}-Q8_0.gguf"
    data = (art / cut.name).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "r"
    rc, err = _cli([default_model, good, cut, "-o", out], capsys)
    assert rc == 2
    assert f"{cut} is truncated" in err and f"hint: the download or export was cut short; export again; or bench " \
        f"without {cut.name}" in err
    _nothing_written(out)
    with pytest.raises(BenchError, match="is truncated"):
        bench(default_model, [good, cut], out, latency=False)
    _nothing_written(out)
    with pytest.raises(BenchError, match=r"nothing to bench: .*imatrix.gguf is an importance matrix"):
        bench(default_model, [art / "imatrix.gguf"], out)
    _nothing_written(out)
    with pytest.raises(LoadError, match="imatrix.gguf is an importance matrix"):
        koquant.load(art / "imatrix.gguf")


def test_a_failing_runtime_leaves_nothing(default_model, gguf_exports, tmp_path):
    """A worker that fails (here: a context longer than the model's positions) stops the bench; no report."""
    art = gguf_exports(DEFAULT_MODEL).path / f"{DEFAULT_MODEL}-Q4_K_M.gguf"
    out = tmp_path / "r"
    with pytest.raises(BenchError, match="benching source .* failed: n_ctx=8192 is longer"):
        bench(default_model, [art], out, threads=1, ctx=8192, chunks=1, latency=False)
    _nothing_written(out)


def test_export_then_bench(default_model, tmp_path, monkeypatch, capsys):
    """``koquant export ... --bench`` benches what it exported into <OUT>-bench (small settings here)."""
    import koquant.cli.bench as cli_bench

    real = cli_bench.run_bench
    monkeypatch.setattr(cli_bench, "run_bench", lambda *a, **kw: real(
        *a, **kw, ctx=256, chunks=2, warmup=0, repeats=1, decode_tokens=8))
    out = tmp_path / "out"
    rc = cli_main(["export", str(default_model), "--quant", "F16", "--no-calib", "--eval-chunks", "1", "--threads", "1",
                   "-o", str(out), "--bench"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "out-bench" / "report.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in data["exports"]] == ["gguf:F16"]
    assert data["exports"][0]["kl_mean"] < 1e-4 and data["exports"][0]["decode_tok_s"] > 0
    assert "out-bench" in capsys.readouterr().out


def test_bench_is_listed_and_start_up_stays_lean():
    out = subprocess.run([sys.executable, "-m", "koquant", "bench", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--baseline-dtype" in out and "REPORT_DIR" in out
    code = ("import sys; from koquant.cli.main import build_parser; build_parser(); import koquant.bench; "
            "print([m for m in ('torch', 'transformers', 'llama_cpp', 'onnxruntime_genai', 'matplotlib') "
            "if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
