"""Models from the Hugging Face Hub, offline: a real huggingface_hub cache laid out as snapshot_download leaves it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from koquant.source.checkpoint import Checkpoint
from koquant.source.hub import parse_hub_id, snapshot_origin

REPO = "koquant-test/komt-mini"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(hf_home: Path, model: Path, repo: str = REPO, commit: str = COMMIT,
                      extra: dict[str, bytes] | None = None) -> Path:
    """``HF_HOME/hub/models--org--name`` with blobs/, snapshots/<commit>/ (links into blobs) and refs/main."""
    root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    files = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    files.update(extra or {})
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory, miniature):
    home = tmp_path_factory.mktemp("hf-home")
    snap = lay_out_hub_cache(home, miniature("komt-mini"))
    return home, snap


def _koquant(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "koquant", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **env})


def test_hub_ids_are_parsed():
    assert parse_hub_id("org/name").repo_id == "org/name"
    assert parse_hub_id("org/name@v1.0").revision == "v1.0"
    for bad in ("name", "./org/name", "/abs/path", "org/name/extra", "org/../x", "org/name@"):
        assert parse_hub_id(bad) is None, bad


def test_a_snapshot_folder_is_named_after_its_repo(hub_home):
    _, snap = hub_home
    assert snapshot_origin(snap).repo_id == REPO and snapshot_origin(snap).commit == COMMIT
    ckpt = Checkpoint.open(snap)
    assert ckpt.name == "komt-mini"  # not the commit hash
    assert ckpt.hub.commit == COMMIT


def test_export_a_hub_id_offline(hub_home, tmp_path):
    home, _ = hub_home
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    r = _koquant("export", REPO, "--fmt", "gguf", "--quant", "Q8_0", "--calib-chunks", "4", "-o", str(out), env=env)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "koquant.json").read_text())
    assert manifest["source"]["hub"] == {"repo_id": REPO, "revision": None, "commit": COMMIT}
    assert manifest["source"]["name"] == "komt-mini" and manifest["source"]["base_model"] == REPO
    assert [f["path"] for f in manifest["files"]] == ["komt-mini-Q8_0.gguf"]
    card = (out / "README.md").read_text()
    assert f"base_model: {REPO}" in card and COMMIT in card

    # a revision pinned by commit, and a repo the cache does not hold
    code = (f"from koquant.source.checkpoint import Checkpoint; c = Checkpoint.open('{REPO}@{COMMIT}'); "
            "print(c.name, c.hub.revision, c.hub.commit)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **env})
    assert r.returncode == 0 and r.stdout.split() == ["komt-mini", COMMIT, COMMIT], r.stderr
    missing = tmp_path / "missing"
    r = _koquant("export", "koquant-test/not-cached@main", "--fmt", "gguf", "-o", str(missing), env=env)
    assert r.returncode != 0
    assert "not in the Hub cache" in r.stderr and "HF_HUB_OFFLINE" in r.stderr and "Traceback" not in r.stderr
    assert not missing.exists()


def test_pickle_files_stay_on_the_hub_without_allow_pickle(tmp_path, miniature):
    """Offline, the snapshot may hold a pickle file; it is refused unless --allow-pickle, as for a local folder."""
    home = tmp_path / "hf"
    model = miniature("komt-mini")
    snap = lay_out_hub_cache(home, model, repo="koquant-test/pickled", extra={"pytorch_model.bin": b"\x80\x04."})
    for st in snap.glob("*.safetensors"):
        st.unlink()
    r = _koquant("export", "koquant-test/pickled", "--fmt", "gguf", "-o", str(tmp_path / "o"),
                 env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0 and "pickle" in r.stderr and "--allow-pickle" in r.stderr, r.stderr
