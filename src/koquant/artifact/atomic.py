"""An artifact folder written atomically: output lock, staged folder, swap into place, recovery.

What an export guarantees, whatever happens to it (``tests/test_kill.py`` kills real exports):

- Everything is written under ``.OUT.koquant-tmp-*`` beside the output folder ``OUT``, while the
  exporting process holds ``.OUT.koquant-lock`` (an ``flock``, which the kernel drops when the
  process dies, ``kill -9`` included). A second export into the same ``OUT`` is refused.
- Only after validation passed does the finished folder replace ``OUT``, in one atomic step:
  ``renameat2(RENAME_EXCHANGE)`` swaps the two folders, so ``OUT`` is at every instant either the
  previous complete artifact (or nothing) or the new complete one. On file systems without the
  exchange, ``OUT`` is renamed aside first; if the process dies between the two renames, the next
  export into ``OUT`` puts the previous artifact back before doing anything else.
- The next export into ``OUT`` removes the temporary folders of exports that were killed.
- The manifest's ``inventory`` (:mod:`koquant.artifact.inventory`) records the size and sha256 of
  every other file of the artifact; ``koquant verify`` (:mod:`koquant.artifact.verify`) checks them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

from .. import procs
from ..errors import ExportError, OutputError
from .manifest import MANIFEST

try:
    import fcntl
except ImportError:  # not POSIX: no locking, stale temporary folders are only ignored
    fcntl = None

TMP_TAG, OLD_TAG, LOCK_TAG = ".koquant-tmp-", ".koquant-old-", ".koquant-lock"


def check_output_location(out: Path, force: bool = False, marker: str = MANIFEST, what: str = "koquant artifact") -> None:
    """Fail early, before minutes of work, if ``out`` cannot be written. A non-empty folder is only
    replaced without ``force`` when it holds ``marker`` (it is an earlier ``what``)."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is a file", hint="choose a folder path with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file() and not force:
        raise OutputError(
            f"output folder {out} is not empty and is not a {what}; refusing to overwrite it",
            hint="choose a new folder with -o, or pass --force to replace it",
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output's parent folder {parent}: {e.strerror}",
                          hint="choose a writable location with -o") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output location {parent} is not writable", hint="choose a writable folder with -o")


# ---------------------------------------------------------------------------- atomic output
def _sibling(out: Path, tag: str, unique: bool = True) -> Path:
    return out.parent / (f".{out.name}{tag}" + (uuid.uuid4().hex[:8] if unique else ""))


@contextmanager
def output_lock(out: Path):
    """Hold ``.OUT.koquant-lock`` beside ``out`` (one koquant process per output folder at a time).

    The lock is an ``flock``: the kernel releases it when the holder dies, so a killed export never
    blocks the next one. The file is removed on release (after checking that the path still names
    the locked file, so two processes never both believe they hold it).
    """
    if fcntl is None:
        yield
        return
    path = _sibling(out, LOCK_TAG, unique=False)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot write in {out.parent}: {e.strerror}", hint="choose a writable folder with -o") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"another koquant process is writing {out} right now",
                              hint="wait for it to finish, or choose another folder with -o") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file between our open and our lock: retry
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def recover(out: Path, marker: str = MANIFEST) -> None:
    """Undo what killed exports into ``out`` left behind. Call with :func:`output_lock` held.

    A previous artifact (a folder holding ``marker``) renamed aside by an interrupted non-atomic swap
    goes back to ``out``;
    every other temporary folder of ``out`` is removed.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return
    prefix = f".{out.name}."
    leftovers = [p for p in out.parent.iterdir()
                 if p.name.startswith(prefix) and (TMP_TAG in p.name or OLD_TAG in p.name) and not p.is_symlink()]
    olds = sorted((p for p in leftovers if OLD_TAG in p.name and (p / marker).is_file()),
                  key=lambda p: p.stat().st_mtime)
    if not os.path.lexists(out) and olds:
        os.rename(olds[-1], out)
        leftovers.remove(olds[-1])
    for p in leftovers:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without the wrapper
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``, replacing what is there in one atomic step."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
    elif _exchange(tmp, out):  # tmp now holds the previous artifact
        if tmp.is_symlink():
            tmp.unlink()
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = _sibling(out, OLD_TAG)
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 16 * 2**20
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "[Errno 28]")


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or a child process's message inside it) says the disk is full."""
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
        return True
    return isinstance(e, Exception) and any(t in str(e) for t in _DISK_FULL_TEXT)


def _nearly_full(folder: Path) -> bool:
    """A backend failed with a message of its own (llama.cpp: "iostream error") while the disk was full."""
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


@contextmanager
def staged_output(out: Path, force: bool = False, marker: str = MANIFEST, what: str = "koquant artifact"):
    """Yield a temporary folder beside ``out``; on success swap it into place, on failure remove it."""
    out = Path(out)
    check_output_location(out, force, marker, what)
    with output_lock(out):
        recover(out, marker)
        tmp = _sibling(out, TMP_TAG)
        try:
            tmp.mkdir()
        except OSError as e:
            raise OutputError(f"cannot write in {out.parent}: {e.strerror}", hint="choose a writable folder with -o") from None
        procs.note_staging(tmp)
        try:
            yield tmp
            publish(tmp, out)
            procs.note_staging(tmp, done=True)
        except BaseException as e:
            full = disk_full(e) or (isinstance(e, (ExportError, OSError)) and _nearly_full(out.parent))
            shutil.rmtree(tmp, ignore_errors=True)
            if full:
                free = shutil.disk_usage(out.parent).free
                raise OutputError(
                    f"no space left on the disk while exporting to {out} ({free / 2**20:.1f} MiB free in {out.parent} "
                    "after removing the partial export); nothing was written",
                    hint="free some space or choose -o on a larger disk (koquant plan MODEL shows the size of "
                    "every file; the export also needs room for one source-precision GGUF while it runs)",
                ) from None
            raise
