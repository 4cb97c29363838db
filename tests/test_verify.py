"""``koquant verify``: exit 0 when every file matches koquant.json, 4 with each change listed, 2 for no artifact.

Artifacts here are small folders with a real manifest (``inventory()`` + ``write_manifest()``, what
``koquant export`` writes last); real GGUF and ONNX artifacts are verified in ``test_kill.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from koquant.artifact import inventory, write_manifest
from koquant.source.checkpoint import sha256_file
from koquant.cli.main import main


def _artifact(root: Path) -> Path:
    """A GGUF-like artifact with a tokenizer folder and an ONNX-like precision folder with its own manifest."""
    root.mkdir()
    (root / "m-F16.gguf").write_bytes(b"GGUF" + bytes(1000))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text('{"model": {}}')
    (root / "int4").mkdir()
    (root / "int4" / "model.onnx").write_bytes(b"onnx graph")
    (root / "int4" / "model.onnx.data").write_bytes(bytes(4096))
    folder_files = {p.name: sha256_file(p) for p in sorted((root / "int4").iterdir())}
    write_manifest(root / "int4", {"format": "onnx", "files": [{"path": "model.onnx", "quant": "int4"}],
                                   "part_of": "../koquant.json", "folder_files": folder_files})
    (root / "README.md").write_text("# card\n")
    manifest = {"format": "gguf", "files": [{"path": "m-F16.gguf", "quant": "F16", "sha256": sha256_file(root / "m-F16.gguf"),
                                              "size": 1004}], "tokenizer": {"folder": "tokenizer"}}
    manifest["inventory"] = inventory(root)
    write_manifest(root, manifest)
    return root


def _verify(path: Path, capsys, *extra) -> tuple[int, str, str]:
    rc = main(["verify", str(path), *extra])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, cap.err


def test_intact(tmp_path, capsys):
    art = _artifact(tmp_path / "art")
    rc, out, _ = _verify(art, capsys)
    assert rc == 0 and "intact, 6 files" in out and sha256_file(art / "koquant.json") in out
    assert set(json.loads((art / "koquant.json").read_text())["inventory"]) == {
        "README.md", "m-F16.gguf", "tokenizer/tokenizer.json", "int4/koquant.json", "int4/model.onnx",
        "int4/model.onnx.data"}


def _flip_byte(p: Path):
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))


TAMPER = {
    "one byte flipped": (lambda a: _flip_byte(a / "m-F16.gguf"), "CHANGED  m-F16.gguf: same size, different sha256"),
    "truncated": (lambda a: (a / "int4" / "model.onnx.data").write_bytes(bytes(10)),
                  "CHANGED  int4/model.onnx.data: 10 bytes, recorded 4096"),
    "tokenizer file removed": (lambda a: (a / "tokenizer" / "tokenizer.json").unlink(),
                               "MISSING  tokenizer/tokenizer.json"),
    "file added": (lambda a: (a / "tokenizer" / "extra.py").write_text("import os"),
                   "EXTRA    tokenizer/extra.py: not in koquant.json"),
    "file replaced by a link to /dev/zero": (
        lambda a: ((a / "m-F16.gguf").unlink(), os.symlink("/dev/zero", a / "m-F16.gguf")),
        "CHANGED  m-F16.gguf: m-F16.gguf is now a symbolic link"),
    "file replaced by a FIFO (never opened)": (
        lambda a: ((a / "m-F16.gguf").unlink(), os.mkfifo(a / "m-F16.gguf")),
        "CHANGED  m-F16.gguf: no longer a regular file"),
    "folder replaced by a link": (
        lambda a: (os.rename(a / "tokenizer", a / "tok2"), os.symlink(a / "tok2", a / "tokenizer")),
        "CHANGED  tokenizer/tokenizer.json: tokenizer is now a symbolic link"),
    "sub-manifest edited": (
        lambda a: (a / "int4" / "koquant.json").write_text((a / "int4" / "koquant.json").read_text() + " "),
        "CHANGED  int4/koquant.json"),
    "card removed": (lambda a: (a / "README.md").unlink(), "MISSING  README.md"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered(case, tmp_path, capsys):
    art = _artifact(tmp_path / "art")
    tamper, line = TAMPER[case]
    tamper(art)
    rc, out, err = _verify(art, capsys)
    assert rc == 4, (out, err)
    assert line in out, out
    assert "differs from its koquant.json" in err and "hint:" in err


def test_json_output_and_exit_code(tmp_path, capsys):
    art = _artifact(tmp_path / "art")
    (art / "notes.txt").write_text("x")
    rc, out, _ = _verify(art, capsys, "--json")
    report = json.loads(out)
    assert rc == 4 and not report["intact"]
    assert report["findings"] == [{"kind": "extra", "path": "notes.txt", "detail": "not in koquant.json"}]


def test_a_manifest_that_disagrees_with_itself(tmp_path, capsys):
    """files[] and the inventory must agree: an edit to one of them shows."""
    art = _artifact(tmp_path / "art")
    m = json.loads((art / "koquant.json").read_text())
    m["files"][0]["sha256"] = "0" * 64
    write_manifest(art, m)
    rc, out, _ = _verify(art, capsys)
    assert rc == 4 and "files[] and inventory disagree" in out


def test_sub_manifest_folder_files_are_cross_checked(tmp_path, capsys):
    art = _artifact(tmp_path / "art")
    sub = json.loads((art / "int4" / "koquant.json").read_text())
    sub["folder_files"]["model.onnx"] = "f" * 64
    write_manifest(art / "int4", sub)
    m = json.loads((art / "koquant.json").read_text())
    m["inventory"] = inventory(art)  # consistent top-level inventory, inconsistent sub-manifest
    write_manifest(art, m)
    rc, out, _ = _verify(art, capsys)
    assert rc == 4 and "int4/model.onnx: int4/koquant.json (folder_files) and the inventory disagree" in out


def test_a_precision_folder(tmp_path, capsys):
    """Inside its artifact, the whole artifact is verified; on its own, its folder_files are."""
    art = _artifact(tmp_path / "art")
    rc, out, _ = _verify(art / "int4", capsys)
    assert rc == 0 and "part of the artifact" in out
    alone = tmp_path / "alone"
    os.rename(art / "int4", alone)
    rc, out, _ = _verify(alone, capsys)
    assert rc == 0 and "checked against its folder_files" in out
    _flip_byte(alone / "model.onnx.data")
    rc, out, _ = _verify(alone, capsys)
    assert rc == 4 and "CHANGED  model.onnx.data" in out


def test_not_an_artifact(tmp_path, capsys):
    rc, _, err = _verify(tmp_path, capsys)
    assert rc == 2 and "is not a koquant artifact (no koquant.json)" in err
