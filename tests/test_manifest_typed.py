"""The typed manifest (koquant.artifact.manifest.Manifest): JSON in, the same JSON out."""

from __future__ import annotations

import json

from koquant.artifact import ArtifactFile, Manifest, load_manifest, write_manifest


def _full() -> dict:
    return {
        "schema": 1, "format": "gguf", "name": "m",
        "source": {"name": "m", "base_model": "m", "architecture": "X", "dtype": "float32", "files": {}},
        "recipe": {"fmt": "gguf", "quants": ["Q8_0"], "version": 1}, "calibration": None,
        "evaluation": {"text": "t", "sha256": "0" * 64, "chunks": 1, "chunk_size": 16, "heldout_tokens": 16},
        "chat_template": {"sha256": None, "template": None}, "tokenizer": {"folder": None},
        "generation_config": None, "tools": {"koquant": "0"},
        "files": [ArtifactFile("m-Q8_0.gguf", "Q8_0", "a" * 64, 3, {"w": "q8_0", "b": "f32"}).to_dict()],
        "notes": [], "inventory": {"m-Q8_0.gguf": {"size": 3, "sha256": "a" * 64}},
    }


def test_a_manifest_round_trips_key_for_key():
    d = _full()
    assert json.dumps(Manifest.from_dict(d).to_dict()) == json.dumps(d)
    fresh = Manifest.from_dict(d)
    fresh._keys = None  # as export builds it: the canonical order is the written order
    assert json.dumps(fresh.to_dict()) == json.dumps(d)


def test_unknown_keys_from_a_newer_koquant_survive(tmp_path):
    d = _full()
    d["files"][0]["future_field"] = {"x": 1}
    d = {"schema": 1, "from_the_future": [1, 2], **{k: v for k, v in d.items() if k != "schema"}, "trailer": "z"}
    (tmp_path / "koquant.json").write_text(json.dumps(d), encoding="utf-8")
    m = load_manifest(tmp_path)
    assert m.extra == {"from_the_future": [1, 2], "trailer": "z"}
    assert m.files[0].extra == {"future_field": {"x": 1}}
    assert json.dumps(m.to_dict()) == json.dumps(d)
    write_manifest(tmp_path, m)
    assert json.loads((tmp_path / "koquant.json").read_text(encoding="utf-8")) == d


def test_a_sparse_manifest_gains_no_keys():
    d = {"format": "onnx", "files": [{"path": "model.onnx", "quant": "int4"}], "folder_files": {"model.onnx": "f"}}
    m = Manifest.from_dict(d)
    assert m.format == "onnx" and m.files[0].quant == "int4" and m.folder_files == {"model.onnx": "f"}
    assert m.to_dict() == d
    m.part_of = "../koquant.json"  # a record set since is written after the ones read
    assert list(m.to_dict()) == ["format", "files", "folder_files", "part_of"]
