"""The one way koquant runs native backends where a crash is caught, and reports it.

llama.cpp, onnxruntime and GPTQModel's kernels are native code: a bug there (llama.cpp's AMX
segfault on Sapphire Rapids, a ``-march=native`` build copied to an older CPU) kills the
process with a signal and no Python exception. koquant therefore runs such steps in a child
process and turns a death by signal into one :class:`NativeCrashError` naming the backend, the
step, the signal and the next thing to try.

Two layers use the same report:

- :func:`run` runs ``module:function`` on a JSON job in a fresh interpreter
  (``python -m koquant.procs ENTRY JOB.json``); the function's return value (JSON) comes back,
  a :class:`~koquant.errors.KoquantError` it raises comes back as the same error, and progress
  lines it prints with :func:`event` reach ``on_event``.
- :func:`supervise` runs a whole ``koquant`` command as a child that inherits the terminal;
  the child marks what it is doing with :func:`step` (a breadcrumb file) and the temporary
  folders it writes with :func:`note_staging`, so that a crash anywhere in it is reported the
  same way and its partial output removed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .errors import KoquantError

MARK = "@@koquant "
_STEP_FILE = "KOQUANT_STEP_FILE"
_CRASH_FILE = "KOQUANT_CRASH_FILE"
SUPERVISED = "KOQUANT_SUPERVISED"


class NativeCrashError(KoquantError):
    """A backend's native code killed its process (segfault, illegal instruction, abort, OOM kill)."""

    exit_code = 5


_HINTS = {
    signal.SIGILL: "this build of {backend} uses CPU instructions this machine lacks (a build made on another "
                   "CPU?): reinstall with `bash install.sh`, which builds llama.cpp for every x86-64 CPU; "
                   "`koquant doctor` shows what is installed",
    signal.SIGKILL: "the process was killed from outside, usually by the kernel when memory ran out: "
                    "`koquant plan MODEL` shows the RAM this needs; close other programs or use a smaller quant",
}
_DEFAULT_HINT = ("a bug in {backend}'s native code on this machine: run `koquant doctor` and report its output "
                 "with the command line{log}")


def cache_root() -> Path:
    """koquant's cache folder, ``$KOQUANT_CACHE`` (default ``~/.cache/koquant``): llama.cpp builds, miniatures,
    compiled extensions, crash reports."""
    return Path(os.environ.get("KOQUANT_CACHE") or Path.home() / ".cache" / "koquant")


def crash_dir() -> Path:
    return cache_root() / "crashes"


def signal_name(sig: int) -> str:
    try:
        s = signal.Signals(sig)
    except ValueError:
        return f"signal {sig}"
    desc = signal.strsignal(s) or ""
    return f"{s.name} ({desc.lower()})" if desc else s.name


def crash_error(backend: str, step: str, sig: int, crash_log: Path | None = None) -> NativeCrashError:
    """The one-line report of a child that died by ``sig``; keeps its crash log in koquant's cache."""
    kept = None
    if crash_log is not None and crash_log.is_file() and crash_log.stat().st_size:
        crash_dir().mkdir(parents=True, exist_ok=True)
        kept = crash_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{backend.replace(' ', '_')}.log"
        shutil.copyfile(crash_log, kept)
    hint = _HINTS.get(sig, _DEFAULT_HINT).format(backend=backend, log=f" and the crash log {kept}" if kept else "")
    return NativeCrashError(f"{backend} crashed with {signal_name(sig)} while {step}; nothing was written", hint=hint)


# ---------------------------------------------------------------- a job in a child process
def run(entry: str, job: dict, *, backend: str, step: str, work: Path | None = None, env: dict | None = None,
        cwd: Path | None = None, on_event=None, on_output=None, log: Path | None = None):
    """Run ``entry`` (``"module:function"``) on ``job`` in a child; return what the function returned.

    ``on_event(dict)`` gets what the child reports with :func:`event`; ``on_output(bytes)`` every
    other chunk of its output, which also goes to ``log`` when given.
    """
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="koquant-job-")))
        work.mkdir(parents=True, exist_ok=True)
        name = entry.rsplit(":", 1)[-1].replace("_", "-")
        job_file, result, crash = work / f"{name}.job.json", work / f"{name}.result.json", work / f"{name}.crash.log"
        for p in (result, crash):
            p.unlink(missing_ok=True)
        job_file.write_text(json.dumps({"job": job, "result": str(result.resolve())}), encoding="utf-8")
        child_env = {**(env or os.environ), _CRASH_FILE: str(crash.resolve())}
        child_env.pop(_STEP_FILE, None)
        sink = stack.enter_context(open(log, "ab")) if log is not None else None
        tail: list[bytes] = []
        proc = subprocess.Popen([sys.executable, "-m", "koquant.procs", entry, str(job_file.resolve())],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=child_env)
        try:
            pending = b""
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    at = line.find(MARK.encode())
                    if at >= 0:
                        if on_event is not None:
                            on_event(json.loads(line[at + len(MARK):]))
                        continue
                    line += b"\n"
                    if sink is not None:
                        sink.write(line)
                    if on_output is not None:
                        on_output(line)
                    tail = (tail + [line])[-12:]
                if b"\r" in pending and MARK.encode()[:1] not in pending:  # progress bars redraw with \r only
                    cut = pending.rindex(b"\r") + 1
                    if sink is not None:
                        sink.write(pending[:cut])
                    if on_output is not None:
                        on_output(pending[:cut])
                    pending = pending[cut:]
            if pending:
                tail.append(pending)
                if sink is not None:
                    sink.write(pending)
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if rc < 0:
            raise crash_error(backend, step, -rc, crash)
        out = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else None
        if out is None:
            text = b"".join(tail).decode("utf-8", "replace").strip()
            raise KoquantError(f"{backend} failed while {step} (exit {rc})" + (f":\n{text[-1500:]}" if text else ""),
                               hint="run with KOQUANT_DEBUG=1 and report the output above")
        if "error" in out:
            e = out["error"]
            if os.environ.get("KOQUANT_DEBUG") and e.get("traceback"):
                print(e["traceback"], file=sys.stderr)
            cls = _error_class(e.get("type"))
            err = cls(e["message"], hint=e.get("hint"))
            raise err
        return out["value"]


def _error_class(name: str | None):
    from . import errors

    cls = getattr(errors, name or "", None)
    return cls if isinstance(cls, type) and issubclass(cls, KoquantError) else KoquantError


def event(**kw) -> None:
    """From inside a job: report progress to the parent's ``on_event``."""
    sys.stdout.write("\n" + MARK + json.dumps(kw) + "\n")
    sys.stdout.flush()


def _child(entry: str, job_path: str) -> int:
    spec = json.loads(Path(job_path).read_text(encoding="utf-8"))
    result = Path(spec["result"])
    module, func = entry.split(":")
    try:
        value = getattr(importlib.import_module(module), func)(spec["job"])
    except KoquantError as e:
        result.write_text(json.dumps({"error": {"type": type(e).__name__, "message": e.message, "hint": e.hint,
                                                "traceback": traceback.format_exc()}}), encoding="utf-8")
        return 2
    except Exception as e:  # noqa: BLE001 - reported to the parent with its traceback
        result.write_text(json.dumps({"error": {"type": "KoquantError", "message": f"{type(e).__name__}: {e}",
                                                "hint": "run with KOQUANT_DEBUG=1 and report the traceback",
                                                "traceback": traceback.format_exc()}}), encoding="utf-8")
        return 1
    result.write_text(json.dumps({"value": value}), encoding="utf-8")
    return 0


def enable_crash_log() -> None:
    """In a child: Python's stacks go to the crash file when native code faults."""
    path = os.environ.get(_CRASH_FILE)
    if path and not faulthandler.is_enabled():
        global _crash_fh
        _crash_fh = open(path, "w")  # noqa: SIM115 - must stay open until the process ends
        faulthandler.enable(_crash_fh, all_threads=True)


_crash_fh = None


# ---------------------------------------------------------------- breadcrumbs of a supervised command
_crumb: dict = {"backend": None, "step": None, "staging": []}


def _write_crumb() -> None:
    path = os.environ.get(_STEP_FILE)
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_crumb, f)
        os.replace(tmp, path)


@contextlib.contextmanager
def step(backend: str, what: str):
    """Mark native work in progress (``backend`` doing ``what``) for the supervisor's crash report."""
    prev = (_crumb["backend"], _crumb["step"])
    _crumb["backend"], _crumb["step"] = backend, what
    _write_crumb()
    try:
        yield
    finally:
        _crumb["backend"], _crumb["step"] = prev
        _write_crumb()


def note_staging(path: Path | None, done: bool = False) -> None:
    """A temporary output folder the supervisor removes if the command crashes."""
    p = str(Path(path).resolve()) if path is not None else None
    if p is None:
        return
    if done:
        _crumb["staging"] = [s for s in _crumb["staging"] if s != p]
    elif p not in _crumb["staging"]:
        _crumb["staging"].append(p)
    _write_crumb()


def supervise(argv: list[str]) -> int:
    """Run ``koquant ARGV`` as a child on this terminal; report its native crash in one line."""
    with tempfile.TemporaryDirectory(prefix="koquant-run-") as tmp:
        crumbs, crash = Path(tmp) / "step.json", Path(tmp) / "crash.log"
        env = {**os.environ, SUPERVISED: "1", _STEP_FILE: str(crumbs), _CRASH_FILE: str(crash)}
        proc = subprocess.Popen([sys.executable, "-m", "koquant", *argv], env=env)
        # the terminal's Ctrl-C reaches the child too; it decides what an interrupt means. A SIGTERM or
        # SIGHUP sent to this process alone (a service manager, a test) is passed on, so no child outlives it.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        passed = {s: signal.signal(s, lambda sig, _frame: proc.send_signal(sig)) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            rc = proc.wait()
        finally:
            signal.signal(signal.SIGINT, old)
            for s, handler in passed.items():
                signal.signal(s, handler)
        if rc >= 0:
            return rc
        sig = -rc
        info = {}
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(crumbs.read_text(encoding="utf-8"))
        for p in info.get("staging") or []:
            shutil.rmtree(p, ignore_errors=True)
        if sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # stopped on purpose, not a crash
            print(f"stopped by {signal.Signals(sig).name}; nothing was written", file=sys.stderr)
            return 128 + sig
        backend = info.get("backend") or "koquant's native code"
        what = info.get("step") or f"running `koquant {' '.join(argv[:1])}`"
        err = crash_error(backend, what, sig, crash)
        if os.environ.get("KOQUANT_DEBUG") and crash.is_file():
            sys.stderr.write(crash.read_text(errors="replace"))
        print(f"error: {err.message}", file=sys.stderr)
        print(f"  hint: {err.hint}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    enable_crash_log()
    sys.exit(_child(sys.argv[1], sys.argv[2]))
