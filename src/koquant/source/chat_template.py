"""Render a model's own chat template, safely.

Templates come from model folders downloaded from strangers, so they run in jinja2's
``ImmutableSandboxedEnvironment`` (no attribute walks to ``__globals__``, no mutation),
with the same extras transformers provides: ``raise_exception``, ``strftime_now``, a
``tojson`` that keeps non-ASCII (Korean) text as is, the ``{% generation %}`` block tag, a
``dict`` that is only a constructor and a ``namespace`` that refuses underscore names. What
the template sees (messages, tools, special tokens) is rebuilt from plain JSON types first,
so no caller object with methods ever reaches it. On top of that, koquant bounds the size
of strings and lists a template can build and of what it renders, so a template cannot
exhaust memory either; every failure is a :class:`TemplateError`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache

from ..errors import KoquantError

#: the most characters (or list items) one template expression may build, and a prompt may have
MAX_VALUE_SIZE = 16 * 1024 * 1024
MAX_OUTPUT_CHARS = 64 * 1024 * 1024
_MAX_POW_BITS = 4096


class TemplateError(KoquantError):
    """A chat template failed to render (syntax error, raise_exception, or a sandbox violation)."""


def _raise_exception(message: str):
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _DictConstructor:
    """``dict`` in templates: builds dicts, exposes nothing of the ``dict`` type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _plain(value):
    """``value`` rebuilt from exact JSON types; anything else becomes an inert ``<TypeName>``."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return _plain(item())
    return f"<{type(value).__name__}>"


def _sized(value) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


@lru_cache(maxsize=1)
def _environment_class():
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class GenerationBlock(Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask marker) renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """``namespace()`` that refuses underscore-prefixed names (no ``ns.__class__ = ...``)."""

        def __init__(*args, **kwargs):  # noqa: N805 - same calling convention as jinja2's Namespace
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"a chat template may not store the underscore name {name!r} in a namespace")

    class ChatSandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox, plus bounds on what ``*``, ``**`` and ``+`` may build."""

        intercepted_binops = frozenset(("*", "**", "+"))

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(left, int) and isinstance(right, int):
                if abs(left) > 1 and right > 0 and right * max(abs(left).bit_length(), 1) > _MAX_POW_BITS:
                    raise SecurityError("a chat template tried to compute an oversized power")
            elif operator == "*":
                for seq, n in ((left, right), (right, left)):
                    size = _sized(seq)
                    if size is not None and isinstance(n, int) and size * n > MAX_VALUE_SIZE:
                        raise SecurityError("a chat template tried to build an oversized string or list")
            elif operator == "+":
                a, b = _sized(left), _sized(right)
                if a is not None and b is not None and a + b > MAX_VALUE_SIZE:
                    raise SecurityError("a chat template tried to build an oversized string or list")
            return super().call_binop(context, operator, left, right)

    return ChatSandbox, GenerationBlock, Namespace


@lru_cache(maxsize=32)
def _compile(template: str):
    import jinja2
    from jinja2.ext import loopcontrols

    sandbox, generation_block, namespace = _environment_class()
    env = sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[generation_block, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictConstructor()
    env.globals["namespace"] = namespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"the chat template has a syntax error at line {e.lineno}: {e.message}") from None


def check_template(template: str) -> None:
    """Compile ``template`` (nothing is rendered); a syntax error is a :class:`TemplateError`."""
    _compile(template)


def render_chat(
    template: str,
    messages: list[dict],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_generation_prompt: bool = True,
    tools: list | None = None,
    documents: list | None = None,
    **extra,
) -> str:
    """The prompt text the template produces for ``messages`` (what transformers'
    ``apply_chat_template(..., tokenize=False)`` returns for the same inputs)."""
    import jinja2
    from jinja2.sandbox import SecurityError

    tpl = _compile(template)
    messages = _plain(messages)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TemplateError("messages must be a list of {'role': ..., 'content': ...} dicts")
    context = {
        **_plain(extra),
        "messages": messages,
        "tools": _plain(tools),
        "documents": _plain(documents),
        "bos_token": bos_token or "",
        "eos_token": eos_token or "",
        "add_generation_prompt": bool(add_generation_prompt),
    }
    parts: list[str] = []
    size = 0
    try:
        for piece in tpl.generate(**context):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"the rendered prompt exceeds {MAX_OUTPUT_CHARS} characters")
            parts.append(piece)
    except TemplateError:
        raise
    except SecurityError as e:
        raise TemplateError(f"the chat template tried an unsafe operation and was stopped: {e}",
                            hint="this template is not safe to use; take the template from a trusted copy of the "
                            "model") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"the chat template failed to render: {e}") from None
    except Exception as e:  # noqa: BLE001 - anything a template can raise is the template's fault
        raise TemplateError(f"the chat template failed to render ({type(e).__name__}: {e})",
                            hint="check the conversation's roles and contents against what the template expects") from None
    return "".join(parts)
