"""A real ``koquant serve`` subprocess on 127.0.0.1, for the server tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``koquant serve ARTIFACT ARGS`` started through the real entry point (the supervisor and its child)."""

    def __init__(self, artifact, *args: str, env: dict | None = None, wait: float = 240.0, key: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.log = Path(tempfile.mkstemp(prefix="koquant-serve-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "koquant", "serve", str(artifact), "--port", str(self.port), *args]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.monotonic() + wait
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"koquant serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                r = httpx.get(self.url + "/health", headers=self.headers(), timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"koquant serve did not answer within {wait:.0f} s:\n{self.output()}")
            time.sleep(0.2)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def post(self, path: str, body=None, *, raw: bytes | None = None, headers: dict | None = None,
             timeout: float = 120) -> httpx.Response:
        hdrs = {**self.headers(), **(headers or {})}
        if raw is not None:
            hdrs.setdefault("Content-Type", "application/json")
            return httpx.post(self.url + path, content=raw, headers=hdrs, timeout=timeout)
        return httpx.post(self.url + path, json=body, headers=hdrs, timeout=timeout)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, headers={**self.headers(), **kw.pop("headers", {})}, timeout=30, **kw)

    def openai(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key or "unused", max_retries=0, timeout=120, **kw)

    def worker_pid(self) -> int:
        """The process that serves (the supervisor's child)."""
        import psutil

        children = psutil.Process(self.proc.pid).children()
        return children[0].pid if children else self.proc.pid

    def rss(self) -> int:
        with open(f"/proc/{self.worker_pid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def metric(self, name: str, **labels) -> float:
        """One sample of ``GET /metrics``."""
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        key = f"{name}{{{want}}}" if labels else name
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        raise KeyError(key)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
