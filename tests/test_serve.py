"""``koquant serve``: a real server subprocess, the official ``openai`` client and raw HTTP.

One server holds a folder of the default miniature's exports (GGUF F16/Q8_0/Q4_K_M, ONNX fp32/int4,
GPTQ) and a second the miniature's HF folder; small servers test the API key, the queue, the context
limit and disconnects. Every answer is compared with ``koquant.load(...).chat(...)`` in this process.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from koquant.testing.miniatures import DEFAULT_MODEL

from .runtime_backends import gptq_available, onnx_available
from .serving import Server, free_port

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("openai", reason="the test extra (openai) is not installed")

MESSAGES = [{"role": "user", "content": "대한민국의 수도는 어디인가요? 짧게 설명해 주세요."}]
SAMPLING = {"temperature": 0.8, "top_p": 0.9, "seed": 7}
N = 24


def _variants() -> list[str]:
    out = ["F16", "Q8_0", "Q4_K_M"]  # in the order of the folders holding them: gguf/, gptq/, onnx/
    if gptq_available():
        out.append("gptq-w4g128")
    if onnx_available():
        out += ["onnx-fp32", "onnx-int4"]
    return out


VARIANTS = _variants()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, gguf_exports, request):
    """A folder of exports, as a user keeps them: gguf/, onnx/, gptq/ (links to the session's artifacts)."""
    root = tmp_path_factory.mktemp("serve") / "exports"
    root.mkdir()
    (root / "gguf").symlink_to(gguf_exports(DEFAULT_MODEL).path, target_is_directory=True)
    if onnx_available():
        (root / "onnx").symlink_to(request.getfixturevalue("onnx_exports")(DEFAULT_MODEL).path)
    if gptq_available():
        (root / "gptq").symlink_to(request.getfixturevalue("gptq_exports")(DEFAULT_MODEL).path)
    return root


@pytest.fixture(scope="module")
def server(bundle):
    with Server(bundle, "--parallel", "2", "--threads", "1", "--max-models", "2") as s:
        yield s


@pytest.fixture(scope="module")
def hf_server(default_model):
    with Server(default_model, "--threads", "1") as s:
        yield s


@pytest.fixture(scope="module")
def library(bundle, default_model):
    """koquant.load of each variant, as a library user would open it (same threads as the servers)."""
    import torch

    import koquant

    threads = torch.get_num_threads()
    made = {}

    def get(label: str):
        if label not in made:
            if label == "hf":
                made[label] = koquant.load(default_model, threads=1)
            elif label.startswith("onnx-"):
                made[label] = koquant.load(bundle / "onnx", quant=label[5:], threads=1)
            elif label.startswith("gptq-"):
                made[label] = koquant.load(bundle / "gptq", threads=1)
            else:
                made[label] = koquant.load(bundle / "gguf", quant=label, threads=1)
        return made[label]

    yield get
    for s in made.values():
        s.close()
    torch.set_num_threads(threads)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in r.text
    return body["error"]


# ---------------------------------------------------------------------------- models and parity
def test_models_lists_every_variant(server):
    ids = [m.id for m in server.openai().models.list().data]
    assert ids == [f"{DEFAULT_MODEL}:{v}" for v in VARIANTS]
    assert server.get(f"/v1/models/{DEFAULT_MODEL}:Q4_K_M").json()["id"] == f"{DEFAULT_MODEL}:Q4_K_M"
    _error(server.get("/v1/models/nope:Q9"), 404)


@pytest.mark.parametrize("label", VARIANTS)
def test_chat_equals_the_library_streamed_or_not(server, library, label):
    client = server.openai()
    model = f"{DEFAULT_MODEL}:{label}"
    want = library(label).chat(MESSAGES, max_new_tokens=N, **SAMPLING)
    ids = library(label).encode_chat(MESSAGES)
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N, **SAMPLING)
    assert r.choices[0].message.content == want
    assert r.choices[0].message.role == "assistant"
    assert r.model == model and r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].finish_reason in ("stop", "length")
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == N

    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=N,
                                                 stream=True, stream_options={"include_usage": True}, **SAMPLING))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    # never half a Korean syllable: a split would put replacement characters into the pieces that the
    # whole text does not have (a miniature may itself emit a stray byte, decoded alike both ways)
    assert "".join(pieces) == want
    assert sum(p.count("\ufffd") for p in pieces) == want.count("\ufffd")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.prompt_tokens == len(ids) and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_hf_folder_is_served_like_the_library(hf_server, library, default_model):
    client = hf_server.openai()
    (model,) = [m.id for m in client.models.list().data]
    assert model == f"{default_model.name}:hf"  # a folder koquant did not make is named after itself
    want = library("hf").chat(MESSAGES, max_new_tokens=N, **SAMPLING)
    assert client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N, **SAMPLING
                                          ).choices[0].message.content == want
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=N, stream=True, **SAMPLING) if c.choices)
    assert text == want


def test_completion_equals_the_library(server, library):
    client = server.openai()
    prompt = "대한민국 헌법 제1조"
    want = library("Q4_K_M").complete(prompt, max_new_tokens=N, **SAMPLING)
    r = client.completions.create(model=f"{DEFAULT_MODEL}:Q4_K_M", prompt=prompt, max_tokens=N, **SAMPLING)
    assert r.choices[0].text == want
    assert r.usage.prompt_tokens == len(library("Q4_K_M").tokenize(prompt))
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=f"{DEFAULT_MODEL}:Q4_K_M", prompt=prompt, max_tokens=N, stream=True, **SAMPLING) if c.choices)
    assert streamed == want


def test_tokenize_is_encode_chat(server, library):
    for label in ("Q4_K_M", *VARIANTS[3:]):
        r = server.post("/tokenize", {"model": f"{DEFAULT_MODEL}:{label}", "messages": MESSAGES}).json()
        assert r["tokens"] == library(label).encode_chat(MESSAGES)
        assert r["prompt"] == library(label).render(MESSAGES)
    raw = server.post("/tokenize", {"model": f"{DEFAULT_MODEL}:Q8_0", "prompt": "안녕하세요"}).json()
    assert raw["tokens"] == library("Q8_0").tokenize("안녕하세요")


def test_stop_sequences_cut_the_text(server, library):
    want = library("Q8_0").chat(MESSAGES, max_new_tokens=N, temperature=0)
    cut = want[len(want) // 3: len(want) // 3 + 2]
    assert cut.strip(), want
    r = server.openai().chat.completions.create(model=f"{DEFAULT_MODEL}:Q8_0", messages=MESSAGES, max_tokens=N,
                                                temperature=0, stop=[cut, "\u0000never"])
    assert r.choices[0].message.content == want[: want.index(cut)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in server.openai().chat.completions.create(
        model=f"{DEFAULT_MODEL}:Q8_0", messages=MESSAGES, max_tokens=N, temperature=0, stop=cut, stream=True)
        if c.choices)
    assert streamed == want[: want.index(cut)]


# ---------------------------------------------------------------------------- bad input
def _bad_requests(model: str):
    long = "대한민국 " * 6000
    chat = {"model": model, "messages": MESSAGES}
    return [
        # (what, path, body or raw bytes, status, param or code that must be named)
        ("malformed JSON", "/v1/chat/completions", b'{"model": "x", "messages": [', 400, "invalid_json"),
        ("not an object", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
        ("empty body", "/v1/chat/completions", b"", 400, "invalid_json"),
        ("unknown model", "/v1/chat/completions", {**chat, "model": "nope:Q9"}, 404, "model"),
        ("unknown parameter", "/v1/chat/completions", {**chat, "temprature": 0.5}, 400, "temprature"),
        ("temperature out of range", "/v1/chat/completions", {**chat, "temperature": 5}, 400, "temperature"),
        ("top_p out of range", "/v1/chat/completions", {**chat, "top_p": 0}, 400, "top_p"),
        ("max_tokens not an integer", "/v1/chat/completions", {**chat, "max_tokens": "many"}, 400, "max_tokens"),
        ("max_tokens zero", "/v1/chat/completions", {**chat, "max_tokens": 0}, 400, "max_tokens"),
        ("n > 1", "/v1/chat/completions", {**chat, "n": 2}, 400, "n"),
        ("five stops", "/v1/chat/completions", {**chat, "stop": list("abcde")}, 400, "stop"),
        ("tools", "/v1/chat/completions", {**chat, "tools": [{"type": "function"}]}, 400, "tools"),
        ("no messages", "/v1/chat/completions", {"model": model}, 400, "messages"),
        ("empty messages", "/v1/chat/completions", {"model": model, "messages": []}, 400, "messages"),
        ("bad role", "/v1/chat/completions", {"model": model, "messages": [{"role": "robot", "content": "x"}]}, 400,
         "messages[0].role"),
        ("image part", "/v1/chat/completions", {"model": model, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
         "messages[0].content"),
        ("template refuses", "/v1/chat/completions", {"model": model, "messages": MESSAGES * 2}, 400, "template_error"),
        ("prompt longer than the context", "/v1/chat/completions",
         {"model": model, "messages": [{"role": "user", "content": long}]}, 400, "context_length_exceeded"),
        ("completion without prompt", "/v1/completions", {"model": model}, 400, "prompt"),
        ("completion echo", "/v1/completions", {"model": model, "prompt": "가", "echo": True}, 400, "echo"),
        ("tokenize both", "/tokenize", {"model": model, "prompt": "가", "messages": MESSAGES}, 400, "messages"),
    ]


def test_bad_input_gets_openai_errors(server):
    model = f"{DEFAULT_MODEL}:Q4_K_M"
    for what, path, body, status, named in _bad_requests(model):
        r = server.post(path, raw=body) if isinstance(body, bytes) else server.post(path, body)
        err = _error(r, status)
        assert named in (err["param"], err["code"]), (what, err)
        assert err["message"], what
    err = _error(server.post("/v1/chat/completions", {"model": model, "messages": [
        {"role": "user", "content": "대한민국 " * 6000}]}), 400)
    assert "context window is" in err["message"] and "tokens" in err["message"]  # the numbers
    _error(server.post("/v1/chat/completions", raw=b"x" * (5 * 2**20)), 413)
    _error(server.get("/v1/nothing"), 404)
    _error(server.get("/v1/chat/completions"), 405)
    assert server.openai().chat.completions.create(model=model, messages=MESSAGES, max_tokens=2).choices


# ---------------------------------------------------------------------------- keys, hosts, the queue
def test_api_key_is_required_on_every_request(gguf_exports):
    path = gguf_exports(DEFAULT_MODEL).path
    with Server(path, "--quant", "Q4_K_M", key="s3cret", env={"KOQUANT_API_KEY": "s3cret"}) as s:
        # `koquant serve OUT --quant Q4_K_M` answers the official client, streamed and not, on the source's ids
        whole = s.openai().chat.completions.create(model=f"{DEFAULT_MODEL}:Q4_K_M", messages=MESSAGES,
                                                   max_tokens=6, seed=3, temperature=0.7)
        streamed = "".join(c.choices[0].delta.content or "" for c in s.openai().chat.completions.create(
            model=f"{DEFAULT_MODEL}:Q4_K_M", messages=MESSAGES, max_tokens=6, seed=3, temperature=0.7, stream=True)
            if c.choices)
        assert streamed == whole.choices[0].message.content
        import koquant

        with koquant.load(path, quant="Q4_K_M") as lib:
            ids = lib.encode_chat(MESSAGES)
        assert s.post("/tokenize", {"messages": MESSAGES}).json()["tokens"] == ids
        assert whole.usage.prompt_tokens == len(ids)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(s.url + "/v1/models", headers=headers)
            assert _error(r, 401)["code"] == "invalid_api_key"
            assert _error(httpx.post(s.url + "/v1/chat/completions", json={"messages": MESSAGES}, headers=headers),
                          401)
        import openai

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_other_hosts_need_a_key(gguf_exports, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "koquant", "serve", str(gguf_exports(DEFAULT_MODEL).path), "--quant",
                        "Q4_K_M", "--host", "0.0.0.0", "--port", str(free_port())], capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in __import__("os").environ.items() if k != "KOQUANT_API_KEY"})
    assert r.returncode != 0
    assert "--api-key" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "koquant", "serve", str(gguf_exports(DEFAULT_MODEL).path), "--quant",
                        "Q9_9"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "has no Q9_9" in r.stderr and "Q4_K_M" in r.stderr


def test_disconnect_frees_the_session_and_the_queue_is_bounded(gguf_exports):
    path = gguf_exports(DEFAULT_MODEL).path
    model = f"{DEFAULT_MODEL}:Q4_K_M"
    with Server(path, "--quant", "Q4_K_M", "--parallel", "1", "--queue", "1", "--ctx", "4096") as s:
        long = {"model": model, "prompt": "대한민국", "max_tokens": 4000, "ignore_eos": True, "stream": True,
                "temperature": 0}
        with httpx.Client(timeout=60) as c, c.stream("POST", s.url + "/v1/completions", json=long) as r:
            assert r.status_code == 200
            for i, _ in enumerate(r.iter_lines()):
                if i > 6:
                    break
        # the client is gone: its session is free within a token or two, not after 4000 tokens
        deadline = time.monotonic() + 20
        while s.get("/health").json()["models"][model]["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.get("/health").json()["models"][model]["busy"] == 0
        assert s.metric("koquant_client_disconnects_total", model=model) == 1
        assert s.metric("koquant_completion_tokens_total", model=model) < 1000

        # one running, one waiting, the rest refused with Retry-After
        results, errors = [], []

        def call():
            try:
                results.append(httpx.post(s.url + "/v1/completions", timeout=120, json={
                    **long, "stream": False, "max_tokens": 300}))
            except httpx.HTTPError as e:  # pragma: no cover - reported by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=call) for _ in range(5)]
        for t in threads:
            t.start()
            time.sleep(0.1)
        for t in threads:
            t.join()
        assert not errors
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) >= 2 and 429 in codes, codes
        refused = [r for r in results if r.status_code == 429]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert _error(refused[0], 429)["code"] == "queue_full"
        # SIGTERM reaches the server through the supervisor: it shuts down and exits as terminated (143)
        assert s.stop() in (0, 143)
        assert "Traceback" not in s.output() and "error" not in s.output().lower(), s.output()


def test_load_many_clients_every_request_answered(server):
    model = f"{DEFAULT_MODEL}:Q4_K_M"
    client = server.openai()
    for _ in range(4):  # warm both sessions
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8)
    before = server.rss()
    answers, errors = [], []

    def one_client(i: int):
        c = server.openai()
        for j in range(4):
            try:
                msgs = [{"role": "user", "content": f"{i}번 손님의 {j}번째 질문: 김치는 어떻게 만드나요?"}]
                if j % 2:
                    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                        model=model, messages=msgs, max_tokens=8, stream=True, seed=i) if ch.choices)
                else:
                    text = c.chat.completions.create(model=model, messages=msgs, max_tokens=8,
                                                     seed=i).choices[0].message.content
                answers.append(text)
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                errors.append(repr(e))

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:3]
    assert len(answers) == 64
    after = server.rss()
    assert after <= before * 1.15 + 48 * 2**20, (before, after)  # nothing held past the two sessions
    health = server.get("/health").json()["models"][model]
    assert health["sessions"] == 2 and health["busy"] == 0 and health["waiting"] == 0
    text = server.get("/metrics").text
    assert f'koquant_requests_total{{endpoint="/v1/chat/completions",status="200"}}' in text
    assert server.metric("koquant_time_to_first_token_seconds_count", model=model) >= 68
    assert server.metric("koquant_queue_depth", model=model) == 0
    assert server.metric("koquant_decode_tokens_per_second", model=model) > 0


def test_serve_help_lists_the_flags():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "koquant", "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for flag in ("--quant", "--host", "--port", "--api-key", "--parallel", "--ctx", "--threads"):
        assert flag in r.stdout
