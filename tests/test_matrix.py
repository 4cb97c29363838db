"""``koquant matrix``: models x recipes, on the local executor and on a local Ray cluster, resumable."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from koquant.cli.main import main
from koquant.matrix import load_spec, parse_spec, run_matrix
from koquant.matrix.spec import SpecError

MODELS = ("komt-mini", "ocelot-mini")


def _spec(tmp_path: Path, miniature, recipes: str, models=MODELS, threads: int = 1) -> Path:
    text = f"threads = {threads}\nretries = 1\n"
    for m in models:
        text += f'\n[[model]]\nsource = "{miniature(m)}"\nname = "{m}"\n'
    p = tmp_path / "spec.toml"
    p.write_text(text + recipes)
    return p


GOOD = '''
[[recipe]]
name = "q8"
formats = ["gguf"]
quants = { gguf = ["Q8_0"] }
calib_chunks = 4
calib_ctx = 128

[[recipe]]
name = "q4"
formats = "gguf"
quants = { gguf = ["Q4_K_M"] }
calib_chunks = 4
calib_ctx = 128
'''

# refused by the exporter: an imatrix-only type without calibration
BROKEN = '''
[[recipe]]
name = "broken"
formats = ["gguf"]
quants = { gguf = ["IQ2_XXS"] }
calib = "none"
'''


def test_spec_errors_name_the_problem(tmp_path, miniature):
    with pytest.raises(SpecError, match="lists no"):
        parse_spec({"model": [{"source": str(miniature("komt-mini"))}]})
    with pytest.raises(SpecError, match="unknown key"):
        parse_spec({"model": [{"source": str(miniature("komt-mini")), "weights": 1}], "recipe": [{}]})
    with pytest.raises(SpecError, match="neither a folder nor a Hub id"):
        parse_spec({"model": [{"source": "./no/such/thing/here"}], "recipe": [{}]})
    with pytest.raises(SpecError, match="two recipes are named"):
        parse_spec({"model": [{"source": str(miniature("komt-mini"))}], "recipe": [{"name": "a"}, {"name": "a"}]})
    bad = tmp_path / "bad.toml"
    bad.write_text("[[model]\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(bad)
    spec = parse_spec({"model": [{"source": str(miniature("komt-mini"))}], "recipe": [
        {"formats": "gguf", "quants": {"gguf": ["q8_0"]}}]})
    assert [c.id for c in spec.cells] == [f"{miniature('komt-mini').name}/gguf"]
    assert spec.cells[0].recipes[0]["quants"] == ["Q8_0"]


def test_local_executor_two_models_two_recipes_and_resume(tmp_path, miniature):
    spec = _spec(tmp_path, miniature, GOOD)
    out = tmp_path / "out"
    assert main(["matrix", str(spec), "-o", str(out)]) == 0
    data = json.loads((out / "matrix.json").read_text())
    assert [c["status"] for c in data["cells"]] == ["done"] * 4
    assert {(r["model"], r["recipe"], r["quant"]) for r in data["rows"]} == {
        (m, r, q) for m in MODELS for r, q in (("q8", "Q8_0"), ("q4", "Q4_K_M"))}
    for r in data["rows"]:
        assert r["size"] > 0 and 0 <= r["kl_mean"] < 1 and r["node"]
        assert (out / r["model"] / r["recipe"] / r["file"]).is_file()
    md = (out / "matrix.md").read_text()
    assert "4 of 4 cells done" in md and all((out / f"matrix-{m}.png").is_file() for m in MODELS)

    # a rerun skips every verified cell; a cell whose artifact changed is exported again
    victim = out / MODELS[0] / "q4"
    gguf = next(victim.glob("*.gguf"))
    gguf.write_bytes(gguf.read_bytes()[:-1] + b"\0")
    t0 = time.monotonic()
    spec_obj = load_spec(spec)
    outcome = run_matrix(spec_obj, out)
    redone = [k for k, r in outcome.records.items() if not r.get("skipped")]
    assert redone == [f"{MODELS[0]}/q4"], redone
    assert all(r["status"] == "done" for r in outcome.records.values())
    assert time.monotonic() - t0 < 600


@pytest.fixture
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_executor_survives_a_killed_worker_and_records_failures(tmp_path, miniature, ray_cluster):
    spec = load_spec(_spec(tmp_path, miniature, GOOD.split("[[recipe]]\nname = \"q4\"")[0] + BROKEN))
    out = tmp_path / "out"
    victim = f"{MODELS[1]}--q8"
    log = out / ".matrix" / "logs" / f"{victim}.log"
    killed = {}

    def kill_once():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            text = log.read_text() if log.is_file() else ""
            m = re.search(r"attempt 1 on .* \(pid (\d+)\)", text)
            if m:
                time.sleep(2)  # mid-task: the export is running
                os.kill(int(m.group(1)), signal.SIGKILL)
                killed["pid"] = int(m.group(1))
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_once)
    killer.start()
    events = []
    outcome = run_matrix(spec, out, executor="ray", on_event=events.append)
    killer.join()
    assert killed, "the victim's worker was never seen running"
    status = {k: r["status"] for k, r in outcome.records.items()}
    assert status == {f"{m}/q8": "done" for m in MODELS} | {f"{m}/broken": "failed" for m in MODELS}, status
    # the killed cell ran again (Ray retried the task), in a worker other than the one killed
    assert log.read_text().count("--- attempt") == 2
    assert outcome.records[f"{MODELS[1]}/q8"]["ray_worker_pid"] != killed["pid"]
    for m in MODELS:
        broken = outcome.records[f"{m}/broken"]
        assert broken["attempt"] == 2 and "importance matrix" in broken["error"]
    md = (out / "matrix.md").read_text()
    assert "2 of 4 cells done" in md and "failed: " in md
    rows = json.loads((out / "matrix.json").read_text())["rows"]
    assert sum(r["status"] == "done" for r in rows) == 2

    # resumed: the finished cells are kept, only the failed ones run again
    again = run_matrix(spec, out, executor="ray")
    assert {k for k, r in again.records.items() if r.get("skipped")} == {f"{m}/q8" for m in MODELS}
    assert {k for k, r in again.records.items() if r["status"] == "failed"} == {f"{m}/broken" for m in MODELS}
