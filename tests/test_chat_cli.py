"""``koquant chat``: one-shot prompts for every format, and the interactive mode through a pseudo-terminal."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time

import pytest

from koquant.runtime import load

from .runtime_backends import onnx_available

KOQUANT = [sys.executable, "-m", "koquant"]
FAMILY = "ocelot-mini"
QUESTION = "자기소개서를 첨삭해 주세요: 저는 성실합니다."
FLAGS = ["--temperature", "0", "--max-new-tokens", "12", "--threads", "1"]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "KOQUANT_DEBUG": ""}


def _formats() -> list[str]:
    runs = ["hf", "gguf:F16", "gguf:Q4_K_M"]
    if onnx_available():
        runs += ["onnx:fp32", "onnx:int4"]
    return runs


@pytest.fixture(scope="module")
def target(miniature, gguf_exports, request):
    """target(fmt) -> (path, extra CLI args) of the ocelot miniature in that format."""

    def get(fmt: str):
        kind, _, variant = fmt.partition(":")
        if kind == "hf":
            return miniature(FAMILY), []
        if kind == "gguf":
            return gguf_exports(FAMILY).path, ["--quant", variant]
        if kind == "onnx":
            return request.getfixturevalue("onnx_exports")(FAMILY).path, ["--quant", variant]
        raise AssertionError(fmt)

    return get


def _expected(path, quant, messages) -> str:
    with load(path, quant=quant, threads=1) as s:
        return s.chat(messages, temperature=0, max_new_tokens=12)


@pytest.mark.parametrize("fmt", _formats())
def test_one_shot_prompt(fmt, target):
    path, extra = target(fmt)
    quant = extra[1] if extra else None
    proc = subprocess.run([*KOQUANT, "chat", str(path), *extra, "--prompt", QUESTION, *FLAGS],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = _expected(path, quant, [{"role": "user", "content": QUESTION}])
    assert want.strip(), "the model answered nothing to compare"
    assert proc.stdout == want + "\n"


def test_one_shot_system_json_and_stdin(target):
    path, extra = target("gguf:Q4_K_M")
    system = "당신은 첨삭 전문가입니다."
    proc = subprocess.run([*KOQUANT, "chat", str(path), *extra, "--prompt", "-", "--system", system, "--json", *FLAGS],
                          input=QUESTION, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    want = _expected(path, "Q4_K_M", [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}])
    assert out["text"] == want
    assert out["stats"]["new_tokens"] >= 1 and out["stats"]["stop_reason"] in ("max_new_tokens", "stop_token")
    assert out["session"]["backend"] == "llama.cpp" and out["session"]["threads"] == 1
    assert "identically" in out["tokenizer_check"]


def test_errors_are_one_message_and_a_hint(target):
    path, _ = target("gguf:F16")
    proc = subprocess.run([*KOQUANT, "chat", str(path), "--prompt", "hi"], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 2
    assert "choose one" in proc.stderr and "--quant Q4_K_M" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*KOQUANT, "chat", str(path), "--quant", "F16", "--prompt", "hi", "--top-p", "1.5"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 2 and "top_p=1.5 is invalid" in proc.stderr and proc.stdout == ""


def test_piped_lines_and_exit_command(target):
    path, extra = target("gguf:Q4_K_M")
    proc = subprocess.run([*KOQUANT, "chat", str(path), *extra, *FLAGS, "--stats"], input="/help\n안녕\n/exit\n무시됨\n",
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unknown command /help" in proc.stderr
    assert len(re.findall(r"prompt tokens", proc.stderr)) == 1  # the line after /exit was never read


# ---------------------------------------------------------------------------- interactive, in a pty
def _read_until(fd: int, marker: bytes, seen: bytearray, timeout: float = 240) -> bytes:
    """Read from ``fd`` into ``seen`` until ``marker`` appears after the current end; return the new bytes."""
    start = len(seen)
    deadline = time.monotonic() + timeout
    while marker not in seen[start:]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {marker!r}; got {bytes(seen[start:])[-1500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            raise AssertionError(f"the chat exited while waiting for {marker!r}; got {bytes(seen[start:])[-1500:]!r}")
        seen += chunk
    return bytes(seen[start:])


_STATS = re.compile(rb"\[(\d+) prompt tokens \((\d+) cached\), (\d+) new")


def test_interactive_multi_turn_reset_and_ctrl_d(target):
    path, extra = target("gguf:Q4_K_M")
    master, slave = os.openpty()
    proc = subprocess.Popen([*KOQUANT, "chat", str(path), *extra, *FLAGS, "--stats"], stdin=slave, stdout=slave,
                            stderr=slave, env=_env(), close_fds=True, start_new_session=True)
    os.close(slave)
    seen = bytearray()
    try:
        banner = _read_until(master, b">>> ", seen)
        assert b"koquant chat: ocelot-mini-Q4_K_M.gguf" in banner and b"/reset" in banner

        def turn(text: str) -> tuple[bytes, tuple[int, int, int]]:
            os.write(master, text.encode("utf-8") + b"\n")
            out = _read_until(master, b">>> ", seen)
            m = _STATS.search(out)
            assert m, out[-1500:]
            return out.replace(b"\r\n", b"\n"), tuple(int(g) for g in m.groups())

        out1, (p1, _, n1) = turn(QUESTION)
        answer = _expected(path, "Q4_K_M", [{"role": "user", "content": QUESTION}])
        assert answer.strip() and answer.encode("utf-8") in out1
        _, (p2, cached2, _) = turn("더 짧게 고쳐 주세요.")
        assert p2 > p1 + n1 // 2 and cached2 > 0  # the history is in the prompt, and its prefix was cached
        os.write(master, b"/reset\n")
        assert b"(conversation cleared)" in _read_until(master, b">>> ", seen)
        _, (p3, cached3, _) = turn(QUESTION)
        assert p3 == p1 and cached3 == 0
        os.write(master, b"\x04")  # Ctrl-D at the prompt
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_chat_is_listed_and_start_up_stays_lean():
    out = subprocess.run([*KOQUANT, "--help"], capture_output=True, text=True, check=True).stdout
    assert "chat" in out
    code = ("import sys; from koquant.cli.main import build_parser; build_parser(); "
            "print([m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
