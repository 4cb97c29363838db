"""Sessions, the wait queue and the work of one request, for ``koquant serve``.

Each servable variant of the artifact (``name:Q4_K_M``, ``name:onnx-int4``, ...) gets a
:class:`SessionPool` of ``parallel`` sessions (one KV cache each; llama.cpp maps a GGUF's weights once
for all of them, the other backends hold a copy per session). A request takes a free session or waits
in a first-come, first-served queue of bounded length; past that it is refused with 429 and a
``Retry-After``. The generation itself runs in a thread (the backends release the GIL in their native
code) and hands text pieces to the event loop; a client that goes away sets a flag the thread checks
after every piece, so its session is free again at the next token.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import KoquantError
from ..runtime.loader import Variant
from .schema import ApiError


@dataclass
class Settings:
    """How the server runs its models (``koquant serve``'s flags)."""

    parallel: int = 1  # sessions per model
    queue: int = 64  # requests that may wait for a session, per model
    max_models: int = 2  # variants loaded at once; the least recently used idle one is closed first
    threads: int | None = None  # CPU threads per session
    n_ctx: int | None = None


class Metrics:
    """Counters and sums for ``GET /metrics`` (Prometheus text format, version 0.0.4)."""

    TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # (endpoint, status) -> n
        self.prompt_tokens: collections.Counter = collections.Counter()  # model -> n
        self.completion_tokens: collections.Counter = collections.Counter()
        self.ttft_buckets: dict[str, list[int]] = {}
        self.ttft_sum: collections.Counter = collections.Counter()
        self.ttft_count: collections.Counter = collections.Counter()
        self.decode_tokens: collections.Counter = collections.Counter()
        self.decode_seconds: collections.Counter = collections.Counter()
        self.disconnects: collections.Counter = collections.Counter()

    def request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, str(status))] += 1

    def generation(self, model: str, prompt_tokens: int, new_tokens: int, ttft: float | None,
                   decode_tokens: int, decode_s: float, disconnected: bool) -> None:
        with self.lock:
            self.prompt_tokens[model] += prompt_tokens
            self.completion_tokens[model] += new_tokens
            if ttft is not None:
                b = self.ttft_buckets.setdefault(model, [0] * len(self.TTFT_BUCKETS))
                for i, le in enumerate(self.TTFT_BUCKETS):
                    if ttft <= le:
                        b[i] += 1
                self.ttft_sum[model] += ttft
                self.ttft_count[model] += 1
            self.decode_tokens[model] += decode_tokens
            self.decode_seconds[model] += decode_s
            if disconnected:
                self.disconnects[model] += 1

    def render(self, pools: dict[str, "SessionPool"]) -> str:
        def esc(v: str) -> str:
            return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        out: list[str] = []

        def family(name: str, kind: str, help_text: str, rows: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in rows:
                out.append(f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}")

        with self.lock:
            family("koquant_requests_total", "counter", "HTTP requests answered, by endpoint and status",
                   [(f'{{endpoint="{esc(e)}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())])
            for name, counter, text in (
                    ("koquant_prompt_tokens_total", self.prompt_tokens, "prompt tokens fed to the model"),
                    ("koquant_completion_tokens_total", self.completion_tokens, "tokens generated"),
                    ("koquant_decode_tokens_total", self.decode_tokens, "tokens made by decode steps (after the first)"),
                    ("koquant_decode_seconds_total", self.decode_seconds, "seconds spent in decode steps"),
                    ("koquant_client_disconnects_total", self.disconnects, "generations stopped by a client leaving")):
                family(name, "counter", text, [(f'{{model="{esc(m)}"}}', counter[m]) for m in sorted(pools)])
            rate = []
            for m in sorted(pools):
                s = self.decode_seconds[m]
                rate.append((f'{{model="{esc(m)}"}}', float(self.decode_tokens[m] / s) if s > 0 else 0.0))
            family("koquant_decode_tokens_per_second", "gauge", "decode speed over every request so far", rate)
            name = "koquant_time_to_first_token_seconds"
            out.append(f"# HELP {name} seconds from a request's arrival to its first token (queue wait included)")
            out.append(f"# TYPE {name} histogram")
            for m in sorted(pools):
                b = self.ttft_buckets.get(m, [0] * len(self.TTFT_BUCKETS))
                lab = esc(m)
                for le, n in zip(self.TTFT_BUCKETS, b):
                    out.append(f'{name}_bucket{{model="{lab}",le="{le:g}"}} {n}')
                out.append(f'{name}_bucket{{model="{lab}",le="+Inf"}} {self.ttft_count[m]}')
                out.append(f'{name}_sum{{model="{lab}"}} {self.ttft_sum[m]:g}')
                out.append(f'{name}_count{{model="{lab}"}} {self.ttft_count[m]}')
        family("koquant_queue_depth", "gauge", "requests waiting for a session",
               [(f'{{model="{esc(m)}"}}', p.waiting) for m, p in sorted(pools.items())])
        family("koquant_sessions_busy", "gauge", "sessions generating now",
               [(f'{{model="{esc(m)}"}}', p.busy) for m, p in sorted(pools.items())])
        family("koquant_sessions_loaded", "gauge", "sessions held in memory",
               [(f'{{model="{esc(m)}"}}', len(p.sessions)) for m, p in sorted(pools.items())])
        return "\n".join(out) + "\n"


class SessionPool:
    """``parallel`` sessions of one variant and the FIFO queue in front of them. Used from the event loop only."""

    def __init__(self, variant: Variant, settings: Settings):
        self.variant = variant
        self.settings = settings
        self.sessions: list = []
        self._free: list = []
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.busy = 0
        self.last_used = time.monotonic()
        self._loading: asyncio.Task | None = None
        self._durations: collections.deque[float] = collections.deque(maxlen=32)

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    @property
    def loaded(self) -> bool:
        return bool(self.sessions)

    @property
    def idle(self) -> bool:
        return self.busy == 0 and self.waiting == 0 and self._loading is None

    async def ensure_loaded(self) -> None:
        if self.sessions:
            return
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(self._load_all))
        task = self._loading
        try:
            sessions = await asyncio.shield(task)
        except BaseException:
            if task.done():
                self._loading = None
            raise
        if not self.sessions:
            self._adopt(sessions)
        self._loading = None

    def load_now(self) -> None:
        """Load the sessions in this thread (before the server starts)."""
        self._adopt(self._load_all())

    def _adopt(self, sessions: list) -> None:
        self.sessions = list(sessions)
        self._free = list(sessions)

    def _load_all(self) -> list:
        from ..runtime import load

        opts = {k: v for k, v in (("threads", self.threads_per_session()), ("n_ctx", self.settings.n_ctx)) if v}
        made = []
        try:
            for _ in range(self.settings.parallel):
                made.append(load(self.variant.path, quant=self.variant.quant, **opts))
        except BaseException:
            for s in made:
                s.close()
            raise
        return made

    def threads_per_session(self) -> int | None:
        if self.settings.threads:
            return self.settings.threads
        if self.variant.format == "hf":  # torch's thread pool is one per process
            return None
        import os

        return max((os.cpu_count() or 2) // 2 // max(self.settings.parallel, 1), 1)

    async def acquire(self):
        """A free session, after the requests that came first; 429 when the queue is full."""
        await self.ensure_loaded()
        self.last_used = time.monotonic()
        if self._free and not self.waiting:
            self.busy += 1
            return self._free.pop()
        if self.waiting >= self.settings.queue:
            raise ApiError(429, f"{self.variant.name} is busy: {self.busy} requests running and {self.waiting} "
                           f"waiting (the queue holds {self.settings.queue}); retry later",
                           type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(self.retry_after())})
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            session = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a session just as the client left: pass it on
                self.release(fut.result(), busy=False)
            raise
        finally:
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass
        return session

    def release(self, session, duration: float | None = None, busy: bool = True) -> None:
        if duration is not None:
            self._durations.append(duration)
        self.last_used = time.monotonic()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(session)  # stays busy: handed straight to the next request
                return
        if busy:
            self.busy -= 1
        self._free.append(session)

    def retry_after(self) -> int:
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 1.0
        return max(1, math.ceil(typical * (self.waiting + 1) / max(self.settings.parallel, 1)))

    def close(self) -> None:
        for s in self.sessions:
            s.close()
        self.sessions, self._free = [], []


class Models:
    """The variants the server offers, and which of them are loaded."""

    def __init__(self, variants: list[Variant], settings: Settings):
        self.settings = settings
        self.pools: dict[str, SessionPool] = {v.name: SessionPool(v, settings) for v in variants}
        self.default = variants[0].name
        self._lock = asyncio.Lock()

    def names(self) -> list[str]:
        return list(self.pools)

    def find(self, model: str | None) -> SessionPool:
        if not model:
            if len(self.pools) == 1:
                return self.pools[self.default]
            raise ApiError(400, "'model' is required: this server offers " + ", ".join(self.pools), param="model",
                           code="missing_required_parameter")
        if model in self.pools:
            return self.pools[model]
        by_label = [p for p in self.pools.values() if p.variant.label.lower() == model.lower()
                    or p.variant.model == model and len(self.pools) == 1]
        if len(by_label) == 1:
            return by_label[0]
        raise ApiError(404, f"the model '{model}' does not exist; this server offers " + ", ".join(self.pools),
                       param="model", code="model_not_found")

    async def open(self, pool: SessionPool) -> SessionPool:
        """Load ``pool`` if needed, closing the least recently used idle pool past ``max_models``."""
        if pool.loaded:
            return pool
        async with self._lock:
            loaded = [p for p in self.pools.values() if p.loaded and p is not pool]
            while self.settings.max_models and len(loaded) >= self.settings.max_models:
                idle = sorted((p for p in loaded if p.idle), key=lambda p: p.last_used)
                if not idle:
                    raise ApiError(503, f"{len(loaded)} models are loaded and busy (--max-models "
                                   f"{self.settings.max_models}); {pool.variant.name} cannot be loaded now",
                                   type="server_error", code="models_busy", headers={"Retry-After": "5"})
                idle[0].close()
                loaded.remove(idle[0])
            try:
                await pool.ensure_loaded()
            except KoquantError as e:
                raise ApiError(500, f"{pool.variant.name} could not be loaded: {e.message}", type="server_error",
                               code="model_load_failed") from None
        return pool

    def close(self) -> None:
        for p in self.pools.values():
            p.close()


# ---------------------------------------------------------------------------- one generation
class StopMatcher:
    """Cuts the text at the first stop sequence; holds back a tail that could be the start of one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.keep = max((len(s) for s in stops), default=1) - 1
        self.buf = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.buf += piece
        cut = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.buf = self.buf[:cut], ""
            return out
        hold = 0
        for s in self.stops:  # the longest tail of buf that begins some stop sequence
            for n in range(min(len(s) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(self.buf) - hold:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


@dataclass
class Outcome:
    prompt_tokens: int = 0
    new_tokens: int = 0
    finish: str = "stop"
    ttft: float | None = None
    decode_tokens: int = 0
    decode_s: float = 0.0
    error: BaseException | None = None
    disconnected: bool = False


@dataclass
class Job:
    """One generation on a session, run by :meth:`start` in its own thread.

    ``events`` receives ``("text", piece)`` for every piece, then ``("done", Outcome)``; an error before
    the first token arrives as ``("error", exc)``.
    """

    session: object
    start_call: Callable  # session -> iterator of text pieces (Session.chat / complete with stream=True)
    stops: tuple[str, ...]
    arrived: float
    loop: asyncio.AbstractEventLoop
    on_finish: Callable  # Outcome -> None, called on the event loop once the session is free again
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome = field(default_factory=Outcome)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name="koquant-serve-generation", daemon=True)
        t.start()
        return t

    def _send(self, kind: str, value) -> None:
        self._call(self.events.put_nowait, (kind, value))

    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop has closed: the server is shutting down
            pass

    def _run(self) -> None:
        out = self.outcome
        stop = StopMatcher(self.stops)
        pieces = None
        before = getattr(self.session, "last", None)  # the previous generation's stats, until this one starts
        try:
            try:
                pieces = self.start_call(self.session)
            except BaseException as e:  # noqa: BLE001 - reported to the request, which turns it into an answer
                out.error = e
                self._send("error", e)
                return
            self._send("started", None)
            for piece in pieces:
                if out.ttft is None:
                    out.ttft = time.perf_counter() - self.arrived
                if self.cancelled.is_set():
                    out.disconnected = True
                    break
                text = stop.push(piece)
                if text:
                    self._send("text", text)
                if stop.stopped:
                    break
            if not stop.stopped and not out.disconnected:
                rest = stop.flush()
                if rest:
                    self._send("text", rest)
        except BaseException as e:  # noqa: BLE001 - a failure mid-generation ends the stream with an error event
            out.error = e
        finally:
            if pieces is not None and hasattr(pieces, "close"):
                pieces.close()  # ends the session's token loop (its finally records the timing)
            st = getattr(self.session, "last", None)
            if st is not None and st is not before and pieces is not None:
                out.prompt_tokens = st.prompt_tokens
                out.new_tokens = st.new_tokens
                out.decode_tokens = max(st.new_tokens - 1, 0)
                out.decode_s = st.decode_s
                out.finish = "stop" if stop.stopped else {"max_new_tokens": "length", "context": "length"}.get(
                    st.stop_reason, "stop")
            if pieces is not None:
                self._send("done", out)
            self._call(self.on_finish, out)
