"""``koquant chat``: talk to any export offline, interactively or one prompt at a time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import procs
from ..errors import KoquantError

_SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed")
_HELP = "/reset clears the conversation, /exit or Ctrl-D quits"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help="an export folder, a .gguf file, or a Hugging Face model folder")
    p.add_argument("--quant", help="which file of an export that holds several (e.g. Q4_K_M)")
    p.add_argument("-p", "--prompt", help="answer this one message and exit ('-' reads it from stdin)")
    p.add_argument("--system", help="system prompt (rendered by the model's own chat template)")
    g = p.add_argument_group("sampling (defaults: the model's generation_config.json; the same on every backend)")
    g.add_argument("--max-new-tokens", type=int, help="most tokens per answer")
    g.add_argument("--temperature", type=float, help="0 = greedy")
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int, help="0 = off")
    g.add_argument("--repetition-penalty", type=float, help="1 = off")
    g.add_argument("--seed", type=int, help="fixed seed: the same answer every time")
    r = p.add_argument_group("runtime")
    r.add_argument("--threads", type=int, help="CPU threads (default: half the logical CPUs; torch's own for HF folders)")
    r.add_argument("--ctx", type=int, dest="n_ctx", help="context window in tokens (default: the model's, at most 4096 for GGUF)")
    r.add_argument("--dtype", choices=("float32", "bfloat16"), help="Hugging Face folders: weights dtype (float32)")
    p.add_argument("--stats", action="store_true", help="after each answer, print token counts and speed to stderr")
    p.add_argument("--json", action="store_true", help="with --prompt: print the answer and statistics as JSON")


def main(args: argparse.Namespace) -> int:
    from ..runtime import load

    options = {k: getattr(args, k) for k in ("threads", "n_ctx", "dtype") if getattr(args, k) is not None}
    sampling = {k: getattr(args, k) for k in _SAMPLING_FLAGS if getattr(args, k) is not None}
    prompt = args.prompt
    if prompt == "-":
        prompt = sys.stdin.read()
    with procs.step("koquant's runtime", f"loading {args.artifact}"):
        session = load(args.artifact, quant=args.quant, **options)
    try:
        session.defaults.with_overrides(**sampling)  # bad flags fail before the first question
        system = [{"role": "system", "content": args.system}] if args.system else []
        # the supervisor (koquant.cli.main.entry) names this step if the backend's native code crashes
        with procs.step(session.backend, f"answering in koquant chat ({Path(args.artifact).name})"):
            if prompt is not None:
                return _one_shot(session, system + [{"role": "user", "content": prompt}], sampling, args)
            return _interactive(session, system, sampling, args)
    finally:
        session.close()


def _one_shot(session, messages: list[dict], sampling: dict, args) -> int:
    if args.json:
        text = session.chat(messages, **sampling)
        print(json.dumps({"text": text, "stats": session.last.to_dict(), "session": _summary(session),
                          "tokenizer_check": session.last_tokenizer_check.describe()}, ensure_ascii=False))
        return 0
    for piece in session.chat(messages, stream=True, **sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    _after_answer(session, args)
    return 0


def _interactive(session, system: list[dict], sampling: dict, args) -> int:
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
    s = _summary(session)
    print(f"koquant chat: {s['model']} ({s['format']}{' ' + s['quant'] if s['quant'] else ''} on {s['backend']}, "
          f"{s['threads']} threads, model {s['model_mib']:.0f} MiB). {_HELP}.", file=sys.stderr)
    for note in session.notes:
        print(f"note: {note}", file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0]
            if command in ("/exit", "/quit"):
                return 0
            if command == "/reset":
                history.clear()
                session.reset()
                print("(conversation cleared)", file=sys.stderr)
            else:
                print(f"unknown command {command}: {_HELP}", file=sys.stderr)
            continue
        user = {"role": "user", "content": text}
        reply: list[str] = []
        try:
            for piece in session.chat(system + history + [user], stream=True, **sampling):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            print("\n(interrupted; this turn is dropped)", file=sys.stderr)
            continue
        except KoquantError as e:
            print(f"\nerror: {e.message}", file=sys.stderr)
            if e.hint:
                print(f"  hint: {e.hint}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        history += [user, {"role": "assistant", "content": "".join(reply)}]
        _after_answer(session, args)


def _after_answer(session, args) -> None:
    check = session.last_tokenizer_check
    if check is not None and not check.identical:
        print(f"note: {check.describe()}", file=sys.stderr)
    if args.stats and session.last is not None:
        st = session.last
        print(f"[{st.prompt_tokens} prompt tokens ({st.reused_tokens} cached), {st.new_tokens} new, "
              f"{st.decode_tokens_per_s:.1f} tok/s, stop: {st.stop_reason}]", file=sys.stderr)


def _summary(session) -> dict:
    mem = session.memory()
    return {"model": session.path.name, "format": session.format, "quant": session.quant, "backend": session.backend,
            "threads": session.threads, "model_mib": mem["model_bytes"] / 2**20, "rss_mib": mem["rss_bytes"] / 2**20}
