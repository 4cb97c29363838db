"""``koquant serve``: an OpenAI-compatible HTTP server over any export, with the source's exact prompts.

    koquant.serve("out/", quant="Q4_K_M", port=8000)   # blocks; Ctrl-C stops it

``app`` holds the routes, ``pool`` the sessions and the wait queue, ``schema`` OpenAI's request and
response shapes. FastAPI and uvicorn are the ``serve`` extra, imported only here.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from pathlib import Path

from ..errors import KoquantError, missing_extra

DEFAULT_PORT = 8000
API_KEY_ENV = "KOQUANT_API_KEY"


class ServeError(KoquantError):
    """The server cannot start as asked."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def choose_variants(artifact: str | os.PathLike, quant: str | None):
    """The variants to serve: every one ``artifact`` offers, or those ``quant`` names (``Q4_K_M``, ``onnx-int4``)."""
    from ..runtime.loader import variants

    found = variants(artifact)
    names = {}
    for v in found:  # two sub-artifacts with the same name and label: tell them apart by folder
        names.setdefault(v.name, []).append(v)
    out = []
    for v in found:
        if len(names[v.name]) > 1:
            from dataclasses import replace

            v = replace(v, label=f"{Path(v.path).name}-{v.label}")
        out.append(v)
    if quant is None:
        return out
    want = quant.strip().lower()
    picked = [v for v in out if want in (v.label.lower(), (v.quant or "").lower(), v.name.lower())
              or v.label.lower().endswith("-" + want)]
    if not picked:
        raise ServeError(f"{artifact} has no {quant}", hint="it offers " + ", ".join(v.label for v in out))
    return picked


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use",
                             hint="choose another with --port, or stop the server that holds it") from None
        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(e, socket.gaierror):
            raise ServeError(f"cannot listen on {host}: {e.strerror or e}",
                             hint="give an address of this machine with --host (default 127.0.0.1)") from None
        raise


def serve(artifact: str | os.PathLike, *, quant: str | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          api_key: str | None = None, parallel: int = 1, queue: int = 64, max_models: int = 2,
          n_ctx: int | None = None, threads: int | None = None, max_body: int = 4 * 2**20,
          log_requests: bool = False) -> None:
    """Serve ``artifact`` (an export folder, a .gguf, an HF folder, a folder of exports) until interrupted.

    Binding anything but a loopback address needs ``api_key`` (or ``$KOQUANT_API_KEY``)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise missing_extra(f"koquant serve needs FastAPI and uvicorn ({e.name} is missing)", "serve") from None
    from .app import create_app
    from .pool import Models, Settings

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(host) and not api_key:
        raise ServeError(f"--host {host} would let other machines use this server without a key",
                         hint=f"pass --api-key KEY (or set {API_KEY_ENV}), or keep the default --host 127.0.0.1")
    for name, value, low in (("--parallel", parallel, 1), ("--queue", queue, 0), ("--max-models", max_models, 1)):
        if value < low:
            raise ServeError(f"{name} {value} is out of range", hint=f"use {name} {low} or more")
    settings = Settings(parallel=parallel, queue=queue, max_models=max_models, threads=threads, n_ctx=n_ctx)
    models = Models(choose_variants(artifact, quant), settings)
    first = models.pools[models.default]
    print(f"koquant serve: loading {first.variant.name} ({parallel} session{'s' if parallel > 1 else ''})",
          file=sys.stderr, flush=True)
    from .. import procs

    with procs.step("koquant's runtime", f"loading {first.variant.name} for koquant serve"):
        first.load_now()
    sock = bind(host, port)
    where = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"

    def ready():  # the socket is bound: clients may connect from here on
        print(f"koquant serve: {where}/v1 serving " + ", ".join(models.names())
              + (" (API key required)" if api_key else ""), file=sys.stderr, flush=True)

    app = create_app(models, api_key=api_key, max_body=max_body, on_ready=ready)
    config = uvicorn.Config(app, log_level="info" if log_requests else "warning", access_log=log_requests,
                            timeout_graceful_shutdown=5, timeout_keep_alive=30, lifespan="on")
    server = uvicorn.Server(config)
    try:
        with procs.step(first.sessions[0].backend, f"serving {first.variant.name} at {where}"):
            server.run(sockets=[sock])
    finally:
        sock.close()
        models.close()


from .. import _callable_package  # noqa: E402 - after serve is defined

_callable_package(__name__, "serve")
