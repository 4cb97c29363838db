"""The ``koquant`` command line.

Every user-caused failure is a ``KoquantError``: printed as one message plus a hint, exit
code non-zero, traceback only with ``KOQUANT_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys
import traceback

from .. import __version__
from ..errors import KoquantError

# subcommand -> module with configure(parser) and main(args) -> int
_COMMANDS = {
    "export": ("koquant.cli.export", "export a Hugging Face checkpoint to GGUF (validated against the source)"),
    "demo": ("koquant.cli.export", "build the built-in Korean miniature and export it to GGUF"),
    "plan": ("koquant.cli.plan", "file size and RAM of every format and quant, from config.json alone"),
    "chat": ("koquant.cli.chat", "chat with an export (GGUF, HF folder, ...) offline, with the source's exact prompts"),
    "verify": ("koquant.cli.verify", "recheck every file of an export against the sizes and hashes in its koquant.json"),
    "bench": ("koquant.cli.bench", "measure exports against the source: perplexity, KL divergence, speed, memory"),
    "serve": ("koquant.cli.serve", "an OpenAI-compatible local server over any export, with the source's exact prompts"),
    "matrix": ("koquant.cli.matrix", "a release matrix (models x recipes) of exports, locally or as Ray tasks, resumable"),
    "doctor": ("koquant.cli.doctor", "this machine's CPU and every backend: versions, build flags, a smoke test each"),
}

#: commands that run native backends in koquant's own process: run under a supervisor that reports a crash
_SUPERVISED = ("export", "demo", "chat", "bench", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koquant",
        description="Korean fine-tuned LLMs from a Hugging Face checkpoint to GGUF, GPTQ and ONNX, "
        "calibrated on Korean and validated against the original.",
    )
    parser.add_argument("--version", action="version", version=f"koquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module, _name=name)
        mod = importlib.import_module(module)
        configure = getattr(mod, f"configure_{name}", None) or mod.configure
        configure(p)
    return parser


def entry(argv: list[str] | None = None) -> int:
    """The ``koquant`` executable: commands that run native code run as a supervised child, so a crash
    in llama.cpp, onnxruntime or torch ends with one line naming the backend, the step and the signal
    (``koquant.procs``) instead of the shell's bare "Segmentation fault"."""
    argv = sys.argv[1:] if argv is None else argv
    from .. import procs

    if os.environ.get(procs.SUPERVISED) or not argv or argv[0] not in _SUPERVISED:
        procs.enable_crash_log()
        return main(argv)
    return procs.supervise(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    mod = importlib.import_module(args._module)
    run = getattr(mod, f"main_{args._name}", None) or mod.main
    try:
        return int(run(args) or 0)
    except KoquantError as e:
        if os.environ.get("KOQUANT_DEBUG"):
            traceback.print_exc()
        if getattr(args, "json", False):
            print(json.dumps({"error": e.message, "hint": e.hint, "type": type(e).__name__}, ensure_ascii=False))
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except OSError as e:  # the machine refused (disk full, permissions, read-only): a message, not a traceback
        if e.errno not in _USER_ERRNOS:
            raise
        if os.environ.get("KOQUANT_DEBUG"):
            traceback.print_exc()
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror}{where}", file=sys.stderr)
        print("  hint: free some space or choose a writable location (-o), then run the command again", file=sys.stderr)
        return 2


_USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)

