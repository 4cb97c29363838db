"""Render a model's own chat template, safely.

Templates come from model folders downloaded from strangers, so they run in jinja2's
``ImmutableSandboxedEnvironment`` (no attribute walks to ``__globals__``, no mutation),
with the same extras transformers provides: ``raise_exception``, ``strftime_now`` and a
``tojson`` that keeps non-ASCII (Korean) text as is.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from .errors import KoquantError


class TemplateError(KoquantError):
    """A chat template failed to render (syntax error, raise_exception, or a sandbox violation)."""


def _raise_exception(message: str):
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(template: str):
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"the chat template has a syntax error at line {e.lineno}: {e.message}") from None


def render_chat(
    template: str,
    messages: list[dict],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_generation_prompt: bool = True,
    **extra,
) -> str:
    """The prompt text the template produces for ``messages``."""
    import jinja2
    from jinja2.sandbox import SecurityError

    tpl = _compile(template)
    try:
        return tpl.render(
            messages=messages,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            add_generation_prompt=add_generation_prompt,
            **extra,
        )
    except SecurityError as e:
        raise TemplateError(f"the chat template tried an unsafe operation and was stopped: {e}") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"the chat template failed to render: {e}") from None
