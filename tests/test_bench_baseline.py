"""A baseline computed once (``koquant bench MODEL --save-baseline FILE``) and reused (``--baseline FILE``).

The reference is the live bench: the same source, text and chunking run through transformers in the
same process layout. Reuse runs on a copy of the model folder without its weights, so the numbers
can only come from the file. Small settings (4 chunks of 256 tokens, one thread) as in test_bench.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from koquant.bench import BenchError, bench, save_baseline
from koquant.cli.main import main as cli_main
from koquant.testing.miniatures import DEFAULT_MODEL

from .badinput import run_cli
from .test_bench import MC_ITEMS, mc_file  # noqa: F401 (a fixture: the multiple-choice items as a file)

QUALITY = dict(threads=1, ctx=256, chunks=4)


@pytest.fixture(scope="module")
def q4(gguf_exports):
    return gguf_exports(DEFAULT_MODEL).path / f"{DEFAULT_MODEL}-Q4_K_M.gguf"


@pytest.fixture(scope="module")
def live(default_model, q4, mc_file):
    """The bench as it runs without a baseline file: the source run here, beside the export."""
    return bench(default_model, [q4], None, mc=mc_file, latency=False, **QUALITY)


@pytest.fixture(scope="module")
def saved(default_model, mc_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("baseline") / "base.safetensors"
    save_baseline(default_model, path, mc=mc_file, **QUALITY)
    return path


@pytest.fixture(scope="module")
def weightless(default_model, tmp_path_factory):
    """The source folder without its weights: what a machine that cannot hold them keeps."""
    folder = tmp_path_factory.mktemp("weightless") / DEFAULT_MODEL
    shutil.copytree(default_model, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


# ---------------------------------------------------------------------------- reuse = live
def test_saved_baseline_gives_the_live_numbers_without_the_weights(live, saved, weightless, q4, mc_file, tmp_path):
    """Bench against the file on a folder holding no weights: every quality number is the live run's, exactly;
    the report says where the baseline came from and has no latency row for it."""
    assert not list(weightless.glob("*.safetensors"))
    out = tmp_path / "report"
    again = bench(weightless, [q4], out, baseline=saved, mc=mc_file, warmup=0, repeats=1, decode_tokens=8, **QUALITY)
    assert again.quality_numbers() == live.quality_numbers()
    assert again.text["kl_method"] == live.text["kl_method"]
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["source"]["baseline_file"]["path"] == str(saved)
    assert data["source"]["baseline_device"] == live.source["baseline_device"] == "cpu"
    assert "latency" not in data["baseline"] and data["exports"][0]["decode_ratio"] is None
    assert data["exports"][0]["decode_tok_s"] > 0
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "read from `base.safetensors`" in md and "the source was not run in this bench" in md
    assert "| source | transformers |" in md  # its quality row
    assert not any(line.startswith("| source | ") and "ms" in line for line in md.splitlines()[md.index("## Latency"):])
    assert any("weights (model.safetensors) are not in" in n for n in data["baseline"]["notes"])


def test_the_file_records_what_it_was_computed_from(saved, default_model, q4):
    """Model file hashes (the export manifest's), text sha256, chunking and ids, dtype and device, version;
    readable by the safetensors library itself."""
    from safetensors import safe_open

    import koquant
    from koquant.artifact import Artifact
    from koquant.bench.baseline import KEY
    from koquant.bench.quality import read_text
    from koquant.source.checkpoint import Checkpoint

    with safe_open(saved, "np") as f:
        record = json.loads(f.metadata()[KEY])
        chunks = f.get_tensor("chunks")
        names = set(f.keys())
    ckpt = Checkpoint.open(default_model)
    assert record["model"]["files"] == ckpt.file_hashes() == Artifact.open(q4.parent).record.source["files"]
    assert record["text"]["sha256"] == read_text(None).sha256  # the built-in held-out text, as the bench reads it
    assert {k: record["chunking"][k] for k in ("ctx", "chunks", "first_scored", "scored_per_chunk")} == {
        "ctx": 256, "chunks": 4, "first_scored": 128, "scored_per_chunk": 127}
    assert chunks.shape == (4, 256) and chunks.dtype == np.int32
    assert record["dtype"] == ckpt.source_dtype == "float32"  # as the miniature is stored
    assert record["device"] == "cpu"  # torch sees no GPU here (auto)
    assert record["koquant"] == koquant.__version__ and record["kind"] == "full" and names == {"chunks", "logits"}
    assert record["mc"]["items"] == len(MC_ITEMS) and len(record["result"]["mc_logliks"]) == 7


def test_cli_save_in_bfloat16_records_dtype_and_device(default_model, weightless, q4, mc_file, tmp_path, capsys):
    path = tmp_path / "bf16.safetensors"
    rc = cli_main(["bench", str(default_model), "--save-baseline", str(path), "--baseline-dtype", "bfloat16",
                   "--baseline-device", "cpu", "--ctx", "256", "--chunks", "2", "--threads", "1", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert (summary["dtype"], summary["device"], summary["chunks"], summary["positions"]) == ("bfloat16", "cpu", 2, 254)
    assert summary["bytes"] == path.stat().st_size and summary["ppl"] > 1
    from koquant.bench.baseline import SavedBaseline

    assert (SavedBaseline.open(path).dtype, SavedBaseline.open(path).device) == ("bfloat16", "cpu")
    assert [p.name for p in tmp_path.iterdir()] == ["bf16.safetensors"]  # no scratch left beside it
    _refused([weightless, q4, "--baseline", path, "--ctx", "256", "--chunks", "2", "--no-latency", "--mc", mc_file,
              "-o", tmp_path / "r"], capsys, "the multiple-choice probe differs", "holds no multiple-choice scores")


# ---------------------------------------------------------------------------- refused, with the field named
def _refused(args, capsys, *needles) -> None:
    rc, err = run_cli(["bench", *map(str, args)], capsys)
    assert rc == 2, err
    assert "hint:" in err, err
    for n in needles:
        assert n in err, (n, err)


def test_a_baseline_for_other_inputs_is_refused(saved, weightless, q4, mc_file, tmp_path, capsys):
    from koquant.quant_recipes.calibration import korean_constitution

    out = tmp_path / "r"
    base = [weightless, q4, "--baseline", saved, "--threads", "1", "--no-latency", "-o", out]
    other_text = tmp_path / "other.txt"
    other_text.write_text(korean_constitution().plain_text() + "\n부칙 끝.", encoding="utf-8")
    _refused([*base, "--ctx", "256", "--chunks", "4", "--text", other_text], capsys, "the text differs", "other.txt")
    _refused([*base, "--ctx", "128", "--chunks", "4"], capsys, "the chunking differs", "--ctx 256 --chunks 4")
    _refused([*base, "--ctx", "256", "--chunks", "2"], capsys, "the chunking differs")
    _refused([*base, "--ctx", "256", "--chunks", "4", "--baseline-dtype", "bfloat16"], capsys, "the dtype differs")
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("\n".join(json.dumps(i, ensure_ascii=False) for i in MC_ITEMS[:2]) + "\n", encoding="utf-8")
    _refused([*base, "--ctx", "256", "--chunks", "4", "--mc", fewer], capsys, "the multiple-choice probe differs")

    other = tmp_path / "other-model"
    shutil.copytree(weightless, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "rope_theta": 20000.0}))
    _refused([other, *base[1:], "--ctx", "256", "--chunks", "4"], capsys, "the model differs",
             "config.json has other content")
    shutil.copy(weightless / "config.json", other / "config.json")
    (other / "model.safetensors").write_bytes(saved.read_bytes())  # weights that are not the source's
    _refused([other, *base[1:], "--ctx", "256", "--chunks", "4"], capsys, "the model differs",
             "model.safetensors has other content")

    foreign = tmp_path / "foreign-export"
    shutil.copytree(q4.parent, foreign)
    manifest = json.loads((foreign / "koquant.json").read_text())
    manifest["source"]["files"]["config.json"] = "0" * 64
    (foreign / "koquant.json").write_text(json.dumps(manifest))
    _refused([weightless, foreign / q4.name, *base[2:], "--ctx", "256", "--chunks", "4"], capsys,
             "the model differs", "exported from another model", "config.json")
    assert not out.exists()


def test_a_damaged_baseline_is_refused(saved, weightless, q4, default_model, tmp_path, capsys):
    out = tmp_path / "r"
    args = [weightless, q4, "--ctx", "256", "--chunks", "4", "--no-latency", "-o", out, "--baseline"]
    data = saved.read_bytes()
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    _refused([*args, flipped], capsys, "is damaged", "does not match its sha256", "--save-baseline")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) // 2])
    _refused([*args, cut], capsys, "is damaged", "truncated")
    _refused([*args, default_model / "model.safetensors"], capsys, "not a koquant baseline")
    _refused([*args, tmp_path / "none.safetensors"], capsys, "does not exist")
    assert not out.exists()


def test_save_is_atomic_and_replaces_only_a_baseline(default_model, saved, tmp_path, capsys):
    """A save that fails leaves the earlier file as it was and no scratch; a file that is not a baseline is kept
    unless --force; flags that belong to a bench are refused with --save-baseline."""
    earlier = tmp_path / "base.safetensors"
    shutil.copy(saved, earlier)
    with pytest.raises(BenchError, match="benching source .* failed: n_ctx=8192 is longer"):
        save_baseline(default_model, earlier, threads=1, ctx=8192, chunks=1)
    assert earlier.read_bytes() == saved.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors"]
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    _refused([default_model, "--save-baseline", mine, "--ctx", "256", "--chunks", "1"], capsys,
             "is not a koquant baseline; refusing to overwrite")
    assert mine.read_text() == "mine"
    _refused([default_model, "x.gguf", "--save-baseline", earlier], capsys, "runs the source alone", "ARTIFACT")


# ---------------------------------------------------------------------------- the file format
def test_top_k_rows_read_from_the_file_score_as_from_the_recorder(tmp_path, monkeypatch):
    """The large-vocabulary kind (ids int32, log-probs float32, rest float64, argmax int64) survives the file:
    KL and top-1 against it are bit-identical to those against the live recorder's folder."""
    from koquant.bench import quality as q
    from koquant.source.safetensors import write_safetensors

    rng = np.random.default_rng(1)
    vocab, rows = 20_000, 40
    base = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    export = base + (rng.standard_normal((rows, vocab)) * 0.1).astype(np.float32)
    monkeypatch.setattr(q, "FULL_BASELINE_BYTES", 1 << 16)
    rec = q.BaselineRecorder(tmp_path / "rows", rows, vocab)
    assert rec.kind == "topk"
    rec.write(0, base)
    rec.close()
    write_safetensors(tmp_path / "rows.safetensors", q.row_arrays(tmp_path / "rows"), block_bytes=1 << 12)
    lp = q.log_softmax(export)
    from_dir = q.Baseline(tmp_path / "rows").compare(0, lp, np.argmax(export, axis=-1))
    from_file = q.Baseline(tmp_path / "rows.safetensors").compare(0, lp, np.argmax(export, axis=-1))
    assert from_file[1] == from_dir[1]
    np.testing.assert_array_equal(from_file[0], from_dir[0])
