"""koquant's runtime: one Session API over every export format.

    import koquant
    with koquant.load("out/", quant="Q4_K_M") as s:
        print(s.chat([{"role": "user", "content": "안녕하세요"}]))

See :mod:`koquant.runtime.session` for what every backend shares and
:mod:`koquant.runtime.loader` for how a path becomes a backend.
"""

from __future__ import annotations

from .loader import LoadError, available_backends, load
from .sampling import SamplingError, SamplingParams
from .session import Backend, ContextLengthError, GenerationStats, Session, TokenizerCheck

__all__ = ["Backend", "ContextLengthError", "GenerationStats", "LoadError", "SamplingError", "SamplingParams",
           "Session", "TokenizerCheck", "available_backends", "load"]
