"""Run ``koquant`` in a child process and ``kill -9`` it at a chosen point of an export.

Two kinds of points:

- a file appearing in the export's temporary folder (``.OUT.koquant-tmp-*``), polled from
  outside: the child is killed while it (or its converter/builder child) is working;
- a function of koquant reached in the child (``pause_at``): a small wrapper, run with
  ``python -c``, replaces it with one that writes a marker file and sleeps, and the test kills
  the process from outside once the marker is there. This is test instrumentation only;
  koquant itself has no pause hook.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_WRAPPER = r"""
import json, os, sys, time
spec = json.loads(sys.argv[1])

def pause(label):
    with open(spec["marker"], "w") as f:
        f.write(label)
    time.sleep(3600)

at = spec.get("pause_at")
if at == "gguf-validate":
    from koquant.exporters.gguf import exporter
    exporter.GGUFExporter.measure = lambda self, *a, **k: pause(at)
elif at == "onnx-validate":
    from koquant.exporters.onnx import exporter
    exporter.ONNXExporter.validate = lambda self, *a, **k: pause(at)
elif at == "publish":
    from koquant.artifact import atomic
    atomic.publish = lambda tmp, out: pause(at)
elif at == "between-renames":
    from koquant.artifact import atomic
    atomic._exchange = lambda a, b: False  # a file system without RENAME_EXCHANGE
    real = os.rename
    def rename(src, dst):
        real(src, dst)
        if ".koquant-old-" in str(dst):
            pause(at)
    os.rename = rename
if spec.get("staged_only"):  # the atomic-output mechanism alone, on a tiny artifact
    from pathlib import Path
    from koquant.artifact import staged_output, write_manifest
    from koquant.errors import KoquantError
    try:
        with staged_output(Path(spec["out"]), force=True) as tmp:
            (tmp / "data.bin").write_bytes(spec["payload"].encode())
            write_manifest(tmp, {"format": "test", "payload": spec["payload"]})
            if spec.get("hold"):
                pause("holding")
    except KoquantError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    sys.exit(0)
from koquant.cli.main import main
sys.exit(main(spec["argv"]))
"""


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def start(spec: dict, log: Path) -> subprocess.Popen:
    """The wrapper in a new session (so its own children can be found and reaped by process group)."""
    with open(log, "ab") as sink:
        return subprocess.Popen([sys.executable, "-c", _WRAPPER, json.dumps(spec)], stdout=sink, stderr=sink,
                                env=_env(), start_new_session=True)


def run(spec: dict, log: Path, timeout: float = 600) -> int:
    proc = start(spec, log)
    try:
        return proc.wait(timeout)
    finally:
        reap(proc)


def reap(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the process group (orphaned converter or builder children)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def kill_when(spec: dict, log: Path, ready, what: str, timeout: float = 300) -> None:
    """Start the child, wait until ``ready()`` is true, then ``kill -9`` the koquant process itself.

    Only the koquant process is killed, as the OOM killer or ``kill -9 PID`` would; the test then
    reaps the children it orphaned.
    """
    proc = start(spec, log)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"the export ended (exit {proc.returncode}) before {what}:\n"
                                     + log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        reap(proc)


def kill_at(spec: dict, log: Path, point: str, tmp_path: Path, timeout: float = 300) -> None:
    """Pause the child at ``point`` (see the wrapper), then ``kill -9`` it there."""
    marker = tmp_path / f"reached-{point}-{time.monotonic_ns()}"
    kill_when({**spec, "pause_at": point, "marker": str(marker)}, log, marker.exists, f"reaching {point}", timeout)


def temp_folders(out: Path, tag: str = ".koquant-tmp-") -> list[Path]:
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and tag in p.name)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.koquant-"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes' sha256 (as a dict, so two snapshots compare)."""
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
