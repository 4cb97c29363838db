"""``koquant serve``: an OpenAI-compatible local server over any export."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    from ..serve import API_KEY_ENV, DEFAULT_PORT

    p.add_argument("artifact", type=Path, help="an export folder (or a folder of them), a .gguf file, or a "
                   "Hugging Face model folder")
    p.add_argument("--quant", help="serve only this variant (e.g. Q4_K_M, onnx-int4); default: every variant, "
                   "the request's 'model' picks one")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs "
                   "an API key)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on every request (or set {API_KEY_ENV})")
    p.add_argument("--parallel", type=int, default=1, help="independent sessions per model, each with its own KV "
                   "cache (default 1)")
    p.add_argument("--queue", type=int, default=64, help="requests that may wait for a session per model before "
                   "429 (default 64)")
    p.add_argument("--max-models", type=int, default=2, help="variants held in memory at once (default 2)")
    p.add_argument("--ctx", type=int, dest="n_ctx", help="context window in tokens (default: the model's, at most "
                   "4096 for GGUF)")
    p.add_argument("--threads", type=int, help="CPU threads per session (default: half the logical CPUs, shared "
                   "by the sessions)")
    p.add_argument("--max-body-mib", type=float, default=4, help="largest request body in MiB (default 4)")
    p.add_argument("--log-requests", action="store_true", help="log every request (uvicorn's access log)")


def main(args: argparse.Namespace) -> int:
    from ..serve import serve

    serve(args.artifact, quant=args.quant, host=args.host, port=args.port, api_key=args.api_key,
          parallel=args.parallel, queue=args.queue, max_models=args.max_models, n_ctx=args.n_ctx,
          threads=args.threads, max_body=int(args.max_body_mib * 2**20), log_requests=args.log_requests)
    return 0
