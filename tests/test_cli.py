"""The command line: start-up stays lean, the demo produces a validated artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KOQUANT = [sys.executable, "-m", "koquant"]


def test_help_does_not_import_heavy_backends():
    code = ("import sys; from koquant.cli.main import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_version_and_help():
    out = subprocess.run([*KOQUANT, "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("export", "demo", "plan"):
        assert cmd in out
    assert subprocess.run([*KOQUANT, "--version"], capture_output=True, text=True).stdout.startswith("koquant ")


def test_no_command_prints_help_and_fails():
    proc = subprocess.run(KOQUANT, capture_output=True, text=True)
    assert proc.returncode == 2 and "export" in proc.stdout


def test_readme_main_job(default_model, tmp_path):
    """The README's second set-up command: the demo exports the built-in model, validated."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "bash install.sh\n.venv/bin/koquant demo -o koquant-demo\n" in readme
    assert ".venv/bin/python -m pytest\n" in readme
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*KOQUANT, "demo", "-o", str(tmp_path / "koquant-demo"), "--json"], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    art = Path(summary["artifact"])
    assert [f["quant"] for f in summary["files"]] == ["F16", "Q8_0", "Q4_K_M"]
    assert all(f["validation"]["passed"] and f["validation"]["token_ids_identical"] for f in summary["files"])
    assert {p.name for p in art.iterdir()} >= {"ocelot-mini-Q4_K_M.gguf", "koquant.json", "README.md"}
    manifest = json.loads((art / "koquant.json").read_text())
    assert manifest["calibration"]["name"] == "kobill"
    assert "calibrating on Korean text" in proc.stderr  # progress is shown


@pytest.mark.parametrize("argv", [["export", "--help"], ["demo", "--help"], ["plan", "--help"]])
def test_subcommand_help(argv):
    proc = subprocess.run([*KOQUANT, *argv], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: koquant" in proc.stdout
