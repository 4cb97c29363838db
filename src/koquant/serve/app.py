"""The HTTP side of ``koquant serve``: OpenAI's routes on FastAPI, every answer in OpenAI's shapes.

A generating request is parsed and checked in its route, then answered by :class:`GenerationResponse`,
which waits for a session, runs the generation, and watches the connection the whole time: a client
that leaves while queued never takes a session, one that leaves mid-answer stops its generation at the
next token. Nothing a client sends becomes a traceback: refusals are :class:`~.schema.ApiError`,
anything unforeseen a 500 with one line.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .. import __version__
from ..errors import KoquantError
from . import schema
from .pool import Job, Metrics, Models, Outcome, SessionPool
from .schema import ApiError

log = logging.getLogger("koquant.serve")

#: the routes /metrics counts by name (anything else is counted as "other")
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/health", "/metrics")


class State:
    def __init__(self, models: Models, api_key: str | None, max_body: int):
        self.models = models
        self.metrics = Metrics()
        self.key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self.max_body = max_body
        self.started = int(time.time())


def _error_bytes(err: ApiError) -> bytes:
    return json.dumps(err.body(), ensure_ascii=False).encode()


async def _send_json(send, status: int, body: dict | bytes, headers: dict[str, str] | None = None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    """ASGI middleware: the API key on every request, the body-size limit, and the request counter."""

    def __init__(self, app, state: State):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ROUTES else ("/v1/models" if scope["path"].startswith(
            "/v1/models/") else "other")
        status = {"code": 500}

        async def counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            err = self._refuse(headers)
            if err is not None:
                await _send_json(counted, err.status, _error_bytes(err), err.headers)
                return
            await self.app(scope, receive, counted)
        finally:
            self.state.metrics.request(endpoint, status["code"])

    def _refuse(self, headers: dict[str, str]) -> ApiError | None:
        if self.state.key_digest is not None:
            given = headers.get("authorization", "")
            token = given[7:].strip() if given[:7].lower() == "bearer " else headers.get("x-api-key", "")
            # constant time: both sides hashed to the same length, compared with compare_digest
            if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self.state.key_digest):
                what = "no API key was given" if not token else "the API key is not valid"
                return ApiError(401, f"{what}; send it as 'Authorization: Bearer KEY'", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return ApiError(400, "the Content-Length header is not a number", code="invalid_request")
            if int(length) > self.state.max_body:
                return _too_large(self.state.max_body)
        return None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than the server's limit of {limit} bytes",
                    code="request_too_large", param=None)


async def read_body(request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _as_api_error(e: BaseException, pool: SessionPool) -> ApiError:
    from ..runtime.session import ContextLengthError
    from ..source.chat_template import TemplateError

    if isinstance(e, ApiError):
        return e
    if isinstance(e, ContextLengthError):
        return ApiError(400, e.message + (f" ({e.hint})" if e.hint else ""), code="context_length_exceeded",
                        param="messages")
    if isinstance(e, TemplateError):
        return ApiError(400, f"the model's chat template refused this conversation: {e.message}", param="messages",
                        code="template_error")
    if isinstance(e, KoquantError):
        msg = e.message + (f" ({e.hint})" if e.hint else "")
        code = "invalid_value" if type(e).__name__ == "SamplingError" else "invalid_request"
        return ApiError(400, msg, code=code)
    log.error("%s failed", pool.variant.name, exc_info=(type(e), e, e.__traceback__))
    return ApiError(500, f"{pool.variant.name} failed: {type(e).__name__}: {e}", type="server_error",
                    code="internal_error")


class GenerationResponse(Response):
    """An ASGI response that queues for a session, generates, and answers (streamed or as one JSON)."""

    def __init__(self, state: State, pool: SessionPool, req, start_call, arrived: float, kind: str):  # noqa: D107
        self.state, self.pool, self.req, self.start_call = state, pool, req, start_call
        self.arrived = arrived
        self.kind = kind  # "chat" | "completion"
        self.name = pool.variant.name
        self.fingerprint = f"koquant-{__version__}"
        self.background = None

    async def __call__(self, scope, receive, send):
        gone = asyncio.Event()

        async def watch():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.ensure_future(watch())
        job: Job | None = None
        try:
            session = await self._until_gone(self.pool.acquire(), gone)
            if session is None:
                return
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()

            def finished(out: Outcome, session=session):
                self.pool.release(session, time.perf_counter() - t0)
                if out.error is None or out.prompt_tokens:
                    self.state.metrics.generation(self.name, out.prompt_tokens, out.new_tokens, out.ttft,
                                                  out.decode_tokens, out.decode_s, out.disconnected)

            job = Job(session, self.start_call, self.req.stop, self.arrived, loop, finished)
            job.start()
            kind, value = await self._until_gone(job.events.get(), gone) or ("gone", None)
            if kind == "gone":
                return
            if kind == "error":
                err = _as_api_error(value, self.pool)
                await _send_json(send, err.status, _error_bytes(err), err.headers)
                return
            if self.req.stream:
                await self._stream(send, job, gone)
            else:
                await self._whole(send, job, gone)
        except ApiError as err:
            await _send_json(send, err.status, _error_bytes(err), err.headers)
        finally:
            if job is not None:
                job.cancelled.set()  # a no-op when the generation has finished
            watcher.cancel()

    @staticmethod
    async def _until_gone(awaitable, gone: asyncio.Event):
        """``awaitable``'s result, or None when the client disconnects first (the awaitable is cancelled)."""
        task = asyncio.ensure_future(awaitable)
        waiter = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return None

    def _usage(self, out: Outcome) -> dict:
        return schema.usage(out.prompt_tokens, out.new_tokens)

    async def _whole(self, send, job: Job, gone: asyncio.Event) -> None:
        texts = []
        while True:
            got = await self._until_gone(job.events.get(), gone)
            if got is None:
                return
            kind, value = got
            if kind == "text":
                texts.append(value)
                continue
            out: Outcome = value
            if out.error is not None:
                err = _as_api_error(out.error, self.pool)
                await _send_json(send, err.status, _error_bytes(err), err.headers)
                return
            text = "".join(texts)
            if self.kind == "chat":
                body = schema.chat_response(self.req, self.name, self.fingerprint, text, out.finish, self._usage(out))
            else:
                body = schema.completion_response(self.req, self.name, self.fingerprint, text, out.finish,
                                                  self._usage(out))
            await _send_json(send, 200, body)
            return

    async def _stream(self, send, job: Job, gone: asyncio.Event) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                                (b"x-accel-buffering", b"no")]})

        async def emit(data) -> bool:
            if gone.is_set():
                return False
            try:
                await send({"type": "http.response.body", "body": schema.sse(data), "more_body": True})
            except OSError:  # the client went away between two chunks
                gone.set()
                return False
            return True

        chat = self.kind == "chat"
        if chat and not await emit(schema.chat_chunk(self.req, self.name, self.fingerprint,
                                                     {"role": "assistant", "content": ""})):
            return
        while True:
            got = await self._until_gone(job.events.get(), gone)
            if got is None:
                return
            kind, value = got
            if kind == "text":
                chunk = (schema.chat_chunk(self.req, self.name, self.fingerprint, {"content": value}) if chat else
                         schema.completion_response(self.req, self.name, self.fingerprint, value, None, None))
                if not await emit(chunk):
                    return
                continue
            out: Outcome = value
            if out.error is not None:
                await emit(_as_api_error(out.error, self.pool).body())
            elif chat:
                await emit(schema.chat_chunk(self.req, self.name, self.fingerprint, {}, out.finish))
                if self.req.include_usage:
                    await emit(schema.chat_chunk(self.req, self.name, self.fingerprint, {}, use=self._usage(out)))
            else:
                await emit(schema.completion_response(self.req, self.name, self.fingerprint, "", out.finish, None))
                if self.req.include_usage:
                    await emit(schema.completion_response(self.req, self.name, self.fingerprint, "", None,
                                                          self._usage(out), chunk=True))
            if await emit("[DONE]"):
                try:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:
                    pass
            return


def create_app(models: Models, *, api_key: str | None = None, max_body: int = 4 * 2**20, on_ready=None):
    """The FastAPI application serving ``models``; ``on_ready()`` runs once it accepts requests."""
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if on_ready is not None:
            on_ready()
        yield

    state = State(models, api_key, max_body)
    app = FastAPI(title="koquant serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.koquant = state

    @app.exception_handler(ApiError)
    async def _api_error(request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            err = ApiError(404, f"no route {request.method} {request.url.path}; koquant serve offers "
                           + ", ".join(ROUTES), code="unknown_url")
        elif exc.status_code == 405:
            err = ApiError(405, f"{request.url.path} does not take {request.method}", code="method_not_allowed")
        else:
            err = ApiError(exc.status_code, str(exc.detail), code=None)
        return JSONResponse(err.body(), status_code=err.status, headers=dict(exc.headers or {}) | err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.error("unexpected error on %s", request.url.path, exc_info=(type(exc), exc, exc.__traceback__))
        err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error", code="internal_error")
        return JSONResponse(err.body(), status_code=500)

    async def body_of(request: Request) -> dict:
        # read as JSON whatever the Content-Type says (curl -d sends form-urlencoded), as OpenAI's API does
        return schema.parse_json(await read_body(request, state.max_body))

    async def opened(model: str | None, sampling: dict) -> SessionPool:
        pool = await models.open(models.find(model))
        try:
            pool.sessions[0].defaults.with_overrides(**sampling)  # a bad value is refused before queueing
        except KoquantError as e:
            raise _as_api_error(e, pool) from None
        return pool

    def model_entry(name: str) -> dict:
        return {"id": name, "object": "model", "created": state.started, "owned_by": "koquant"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_entry(n) for n in models.names()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        return model_entry(models.find(model_id).variant.name)

    async def generation(request: Request, kind: str) -> GenerationResponse:
        arrived = time.perf_counter()
        data = await body_of(request)
        req = schema.parse_chat(data) if kind == "chat" else schema.parse_completion(data)
        pool = await opened(req.model, req.sampling)

        def start(session):
            run = session.chat if kind == "chat" else session.complete
            return run(req.messages if kind == "chat" else req.prompt, stream=True, ignore_eos=req.ignore_eos,
                       **req.sampling)

        return GenerationResponse(state, pool, req, start, arrived, kind)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generation(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generation(request, "completion")

    @app.post("/tokenize")
    async def tokenize(request: Request):
        d = schema.parse_tokenize(await body_of(request))
        pool = await models.open(models.find(d["model"]))
        session = pool.sessions[0]  # the tokenizer and template only: no session is taken from the queue
        try:
            if "messages" in d:
                text = session.render(d["messages"], d["add_generation_prompt"])
                ids = session.encode_chat(d["messages"], d["add_generation_prompt"])
            else:
                text = d["prompt"]
                ids = session.tokenize(text, add_special_tokens=d["add_special_tokens"])
        except KoquantError as e:
            raise _as_api_error(e, pool) from None
        n_ctx = session.n_ctx
        return {"model": pool.variant.name, "tokens": ids, "count": len(ids), "prompt": text, "n_ctx": n_ctx}

    @app.get("/health")
    async def health():
        return {"status": "ok", "version": __version__,
                "models": {n: {"loaded": p.loaded, "sessions": len(p.sessions), "busy": p.busy, "waiting": p.waiting}
                           for n, p in models.pools.items()}}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(models.pools), media_type="text/plain; version=0.0.4")

    app.add_middleware(Guard, state=state)
    return app
