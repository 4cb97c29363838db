"""Shared by the bad-input tests: a random-weight model to break, the CLI run, the nothing-left check."""

from __future__ import annotations

from pathlib import Path

import pytest

from koquant.cli.main import main
from koquant.testing.miniatures import materialize


@pytest.fixture
def model(tmp_path):
    return materialize("synatra-mini", tmp_path / "model", trained=False)


def assert_clean(out: Path):
    assert not out.exists() or not any(out.iterdir()), "partial output left behind"
    assert [p.name for p in out.parent.iterdir() if ".koquant-" in p.name] == []


def run_cli(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err
