"""OpenAI's request and response shapes, checked by hand so every refusal names its parameter.

A request is parsed into a :class:`ChatRequest` or :class:`CompletionRequest` before any model is
touched; whatever is wrong becomes an :class:`ApiError`, which the app sends as OpenAI's
``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status. Parameters OpenAI
defines that koquant does not implement are accepted only at their no-op value (``n=1``,
``presence_penalty=0``, ...), so a client never gets something other than what it asked for.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field

#: the most stop sequences a request may give (OpenAI's limit)
MAX_STOP = 4


class ApiError(Exception):
    """A request refused: HTTP ``status`` plus OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def parse_json(raw: bytes) -> dict:
    if not raw.strip():
        raise invalid("the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise invalid("the request body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as e:
        raise invalid(f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                      code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid(f"the request body must be a JSON object, not {_json_type(data)}", code="invalid_json")
    return data


def _json_type(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number")


# ---------------------------------------------------------------------------- field readers
def _number(d: dict, key: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise invalid(f"'{key}' must be a number, not {_json_type(v)}", key, "invalid_type")
    if v < lo or v > hi or (lo_open and v == lo):
        left = "(" if lo_open else "["
        raise invalid(f"'{key}' is {v}; it must lie in {left}{lo:g}, {hi:g}]", key, "invalid_value")
    return float(v)


def _integer(d: dict, key: str, lo: int, hi: int | None = None) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise invalid(f"'{key}' must be an integer, not {_json_type(v)}", key, "invalid_type")
    if v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise invalid(f"'{key}' is {v}; it must be {bound}", key, "invalid_value")
    return v


def _boolean(d: dict, key: str, default: bool = False) -> bool:
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid(f"'{key}' must be true or false, not {_json_type(v)}", key, "invalid_type")
    return v


def _stop(d: dict) -> tuple[str, ...]:
    v = d.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid("'stop' must be a string or an array of strings", "stop", "invalid_type")
    if len(items) > MAX_STOP:
        raise invalid(f"'stop' has {len(items)} sequences; at most {MAX_STOP} are allowed", "stop", "invalid_value")
    if any(not s for s in items):
        raise invalid("'stop' sequences must not be empty", "stop", "invalid_value")
    return tuple(dict.fromkeys(items))


def _no_op(d: dict, key: str, allowed) -> None:
    """A parameter OpenAI defines that koquant does not implement: accepted only at ``allowed`` (a value or a test)."""
    if key not in d or d[key] is None:
        return
    ok = allowed(d[key]) if callable(allowed) else d[key] == allowed
    if not ok:
        raise invalid(f"'{key}' = {json.dumps(d[key], ensure_ascii=False)[:80]} is not supported by koquant serve",
                      key, "unsupported_parameter")


def _string(d: dict, key: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise invalid(f"'{key}' must be a string, not {_json_type(v)}", key, "invalid_type")
    return v


# ---------------------------------------------------------------------------- requests
#: parameters every generating request shares: name -> how it is read (None: read by the request itself)
_COMMON = ("model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop", "seed", "n",
           "presence_penalty", "frequency_penalty", "logit_bias", "user", "top_k", "repetition_penalty", "ignore_eos")
_CHAT_ONLY = ("messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "tools",
              "tool_choice", "parallel_tool_calls", "functions", "function_call", "store", "metadata",
              "modalities", "service_tier", "reasoning_effort")
_COMPLETION_ONLY = ("prompt", "suffix", "echo", "best_of", "logprobs")


@dataclass
class Generation:
    """What the request asks of the model, in koquant's terms."""

    model: str | None
    stream: bool
    include_usage: bool
    sampling: dict  # Session.chat / complete keyword arguments (max_new_tokens, temperature, top_p, seed, ...)
    stop: tuple[str, ...]
    ignore_eos: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ChatRequest(Generation):
    messages: list[dict] = field(default_factory=list)


@dataclass
class CompletionRequest(Generation):
    prompt: str = ""


def _generation(d: dict, allowed: tuple[str, ...], max_tokens_keys: tuple[str, ...]) -> dict:
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise invalid(f"unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")
    model = _string(d, "model")
    stream = _boolean(d, "stream")
    opts = d.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict) or any(k != "include_usage" for k in opts):
            raise invalid("'stream_options' may only hold include_usage", "stream_options", "invalid_value")
        if not stream:
            raise invalid("'stream_options' needs 'stream': true", "stream_options", "invalid_value")
        include_usage = _boolean(opts, "include_usage")
    max_new = None
    for key in max_tokens_keys:  # max_completion_tokens wins over the older max_tokens
        v = _integer(d, key, 1)
        if v is not None:
            max_new = v
    sampling = {"max_new_tokens": max_new, "temperature": _number(d, "temperature", 0, 2),
                "top_p": _number(d, "top_p", 0, 1, lo_open=True), "top_k": _integer(d, "top_k", 0),
                "repetition_penalty": _number(d, "repetition_penalty", 0, 10, lo_open=True),
                "seed": None if d.get("seed") == -1 else _integer(d, "seed", 0, 2**64 - 1)}  # -1: random (llama.cpp's)
    _no_op(d, "n", 1)
    _no_op(d, "presence_penalty", 0)
    _no_op(d, "frequency_penalty", 0)
    _no_op(d, "logit_bias", lambda v: v == {})
    _string(d, "user")
    return {"model": model, "stream": stream, "include_usage": include_usage,
            "sampling": {k: v for k, v in sampling.items() if v is not None}, "stop": _stop(d),
            "ignore_eos": _boolean(d, "ignore_eos")}


_ROLES = ("system", "developer", "user", "assistant", "tool")


def parse_chat(d: dict) -> ChatRequest:
    common = _generation(d, _COMMON + _CHAT_ONLY, ("max_tokens", "max_completion_tokens"))
    _no_op(d, "logprobs", False)
    _no_op(d, "top_logprobs", 0)
    _no_op(d, "response_format", lambda v: isinstance(v, dict) and v.get("type") == "text")
    _no_op(d, "tools", lambda v: v == [])
    _no_op(d, "functions", lambda v: v == [])
    _no_op(d, "tool_choice", "none")
    _no_op(d, "function_call", "none")
    _no_op(d, "modalities", lambda v: v == ["text"])
    for key in ("parallel_tool_calls", "store"):
        _boolean(d, key)
    messages = d.get("messages")
    if messages is None:
        raise invalid("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid(f"'messages' must be an array, not {_json_type(messages)}", "messages", "invalid_type")
    if not messages:
        raise invalid("'messages' is empty; give at least one message", "messages", "empty_array")
    return ChatRequest(**common, messages=[_message(m, i) for i, m in enumerate(messages)])


def _message(m, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise invalid(f"{where} must be an object, not {_json_type(m)}", where, "invalid_type")
    role = m.get("role")
    if role not in _ROLES:
        raise invalid(f"{where}.role is {json.dumps(role, ensure_ascii=False)}; expected one of "
                      + ", ".join(_ROLES), f"{where}.role", "invalid_value")
    content = m.get("content")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else _json_type(part)
                raise invalid(f"{where}.content[{j}] is a {kind!s} part; koquant serve takes text parts only",
                              f"{where}.content", "unsupported_content")
            texts.append(part["text"])
        content = "".join(texts)
    if content is None and role == "assistant":
        content = ""
    if not isinstance(content, str):
        raise invalid(f"{where}.content must be a string or an array of text parts, not {_json_type(content)}",
                      f"{where}.content", "invalid_type")
    out = {"role": "system" if role == "developer" else role, "content": content}
    name = m.get("name")
    if isinstance(name, str):
        out["name"] = name
    return out


def parse_completion(d: dict) -> CompletionRequest:
    common = _generation(d, _COMMON + _COMPLETION_ONLY, ("max_tokens",))
    _no_op(d, "suffix", "")
    _no_op(d, "echo", False)
    _no_op(d, "best_of", 1)
    _no_op(d, "logprobs", 0)
    prompt = d.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise invalid("'prompt' is required", "prompt", "missing_required_parameter")
    if not isinstance(prompt, str):
        raise invalid("'prompt' must be one string (batches and token-id prompts are not supported)", "prompt",
                      "invalid_type")
    if not prompt:
        raise invalid("'prompt' is empty", "prompt", "invalid_value")
    return CompletionRequest(**common, prompt=prompt)


def parse_tokenize(d: dict) -> dict:
    unknown = [k for k in d if k not in ("model", "messages", "prompt", "add_generation_prompt", "add_special_tokens")]
    if unknown:
        raise invalid(f"unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")
    has_messages, has_prompt = d.get("messages") is not None, d.get("prompt") is not None
    if has_messages == has_prompt:
        raise invalid("give either 'messages' (rendered by the chat template) or 'prompt' (raw text)",
                      "messages", "missing_required_parameter")
    out = {"model": _string(d, "model"), "add_generation_prompt": _boolean(d, "add_generation_prompt", True),
           "add_special_tokens": _boolean(d, "add_special_tokens", True)}
    if has_messages:
        out["messages"] = parse_chat({"messages": d["messages"]}).messages
    else:
        prompt = _string(d, "prompt")
        out["prompt"] = prompt
    return out


# ---------------------------------------------------------------------------- responses
FINISH = {"stop_token": "stop", "stop_sequence": "stop", "max_new_tokens": "length", "context": "length"}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(req: ChatRequest, model: str, fingerprint: str, text: str, finish: str, use: dict) -> dict:
    return {"id": f"chatcmpl-{req.id}", "object": "chat.completion", "created": req.created, "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}], "usage": use}


def chat_chunk(req: ChatRequest, model: str, fingerprint: str, delta: dict, finish: str | None = None,
               use: dict | None = None) -> dict:
    out = {"id": f"chatcmpl-{req.id}", "object": "chat.completion.chunk", "created": req.created, "model": model,
           "system_fingerprint": fingerprint,
           "choices": [] if use is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                                   "finish_reason": finish}]}
    if use is not None:
        out["usage"] = use
    return out


def completion_response(req: CompletionRequest, model: str, fingerprint: str, text: str, finish: str | None,
                        use: dict | None, chunk: bool = False) -> dict:
    out = {"id": f"cmpl-{req.id}", "object": "text_completion", "created": req.created, "model": model,
           "system_fingerprint": fingerprint,
           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    if chunk and use is not None:
        out["choices"] = []
    if use is not None:
        out["usage"] = use
    return out


def sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
