"""Sampling parameters and the one sampler every backend shares.

Backends only produce next-token logits; choosing the token happens here, in numpy, so
``temperature=0.7, top_p=0.9, seed=1`` means exactly the same thing on transformers,
llama.cpp and onnxruntime-genai. The processing order and the meaning of each parameter
follow transformers' ``generate``: repetition penalty on the raw logits (over the prompt and
everything generated), then temperature, top-k (ties at the k-th value kept), top-p (the
smallest set of tokens whose probability reaches ``top_p``, at least one kept).

Greedy decoding is ``temperature=0`` or ``do_sample=False``. A token is drawn by inverting
the cumulative distribution of the kept tokens (in token-id order) at one uniform number
from ``numpy.random.Generator(PCG64(seed))``, so equal logits and an equal seed give equal
tokens on every backend.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from ..errors import KoquantError


class SamplingError(KoquantError):
    """Unknown or invalid sampling parameters."""


#: when neither the caller nor generation_config.json says otherwise (transformers' defaults,
#: except max_new_tokens, whose transformers default of max_length=20 suits no chat)
_FALLBACK = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
             "max_new_tokens": 512}


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    @classmethod
    def supported(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_generation_config(cls, gen: dict | None) -> "SamplingParams":
        """Defaults from a model's generation_config.json (keys it lacks: transformers' defaults)."""
        gen = gen or {}
        values = {}
        for key, fallback in _FALLBACK.items():
            v = gen.get(key)
            values[key] = fallback if v is None else v
        if gen.get("max_new_tokens") is None and isinstance(gen.get("max_length"), int) and gen["max_length"] > 20:
            values["max_new_tokens"] = gen["max_length"]
        return cls()._checked(values)

    def with_overrides(self, **overrides) -> "SamplingParams":
        """A copy with the caller's parameters; unknown names or bad values are a :class:`SamplingError`.

        An explicit ``temperature > 0`` turns sampling on unless ``do_sample=False`` is also given;
        ``temperature=0`` means greedy.
        """
        unknown = sorted(k for k in overrides if k not in self.supported())
        if unknown:
            raise SamplingError(
                f"unsupported sampling parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
                hint="koquant supports " + ", ".join(self.supported()) + " (the same on every backend)",
            )
        given = {k: v for k, v in overrides.items() if v is not None or k == "seed"}
        if "temperature" in given and "do_sample" not in given:
            given["do_sample"] = given["temperature"] is not None and given["temperature"] > 0
        return self._checked(given)

    def _checked(self, values: dict) -> "SamplingParams":
        out = {}
        for key, v in values.items():
            if key == "max_new_tokens":
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
                need = "an integer >= 0"
            elif key == "do_sample":
                ok, need = isinstance(v, bool), "true or false"
            elif key == "temperature":
                ok = _real(v) and v >= 0
                need = "a number >= 0 (0 = greedy)"
            elif key == "top_k":
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
                need = "an integer >= 0 (0 = off)"
            elif key == "top_p":
                ok = _real(v) and 0 < v <= 1
                need = "a number in (0, 1]"
            elif key == "repetition_penalty":
                ok = _real(v) and v > 0
                need = "a number > 0 (1 = off)"
            else:  # seed
                ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                need = "a non-negative integer"
            if not ok:
                raise SamplingError(f"{key}={v!r} is invalid: it must be {need}")
            out[key] = float(v) if key in ("temperature", "top_p", "repetition_penalty") else v
        return replace(self, **out)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Sampler:
    """Chooses each next token from a backend's logits; holds the random state and the penalty set.

    Written for a per-token cost far below a decode step on a 256k vocabulary: full-vocabulary
    work is a few linear passes in float32 (penalty on the seen ids only, a partition for top-k,
    one exponential pass for top-p without top-k); sorting and float64 happen on candidates only.
    """

    def __init__(self, params: SamplingParams, history: list[int] | None = None):
        self.params = params
        self.rng = np.random.Generator(np.random.PCG64(params.seed))
        self._seen: set[int] = set()
        self._seen_ids = np.empty(0, dtype=np.int64)
        if history:
            self.observe(history)

    def observe(self, ids) -> None:
        """Tokens the repetition penalty applies to (the prompt, then each generated token)."""
        if self.params.repetition_penalty == 1.0:
            return
        new = [int(t) for t in ids if int(t) not in self._seen]
        if new:
            self._seen.update(new)
            self._seen_ids = np.fromiter(sorted(self._seen), dtype=np.int64, count=len(self._seen))

    def penalized(self, logits: np.ndarray) -> np.ndarray:
        """The logits after the repetition penalty (transformers' rule: divide positive, multiply negative)."""
        x = np.asarray(logits)
        rp = self.params.repetition_penalty
        if rp == 1.0 or not self._seen_ids.size:
            return x
        ids = self._seen_ids[self._seen_ids < x.shape[-1]]
        x = x.copy()
        v = x[ids]
        x[ids] = np.where(v < 0, v * rp, v / rp)
        return x

    def select(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The token ids kept by top-k and top-p (ascending) and their logits after penalty and temperature
        (float64): the distribution a token is drawn from."""
        p = self.params
        x = self.penalized(logits)
        n = x.shape[-1]
        if 0 < p.top_k < n:
            cand = _at_least(x, p.top_k)
            sub = x[cand]
            kth = np.partition(sub, sub.size - p.top_k)[sub.size - p.top_k]
            ids = cand[sub >= kth]  # ties with the k-th value stay, as in transformers
            vals = x[ids].astype(np.float64) / p.temperature
            keep = vals > -np.inf
            ids, vals = ids[keep], vals[keep]
            if p.top_p < 1.0 and ids.size > 1:
                order = np.argsort(vals, kind="stable")
                drop = np.cumsum(_softmax(vals[order])) <= 1.0 - p.top_p
                drop[-1] = False
                kept = np.sort(order[~drop])
                ids, vals = ids[kept], vals[kept]
            return ids, vals
        if p.top_p < 1.0:
            return self._top_p_full(x)
        ids = np.flatnonzero(x > -np.inf)
        return ids, x[ids].astype(np.float64) / p.temperature

    def _top_p_full(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """top-p over the whole vocabulary, sorting only the highest logits. Exact: a token below a
        threshold whose tokens already hold ``top_p`` of the mass is dropped by transformers' rule too."""
        p = self.params
        top = float(x.max())
        scale = 1.0 / p.temperature
        total = float(np.exp((x - top) * scale).sum(dtype=np.float64))
        width = 4.0 * p.temperature
        while True:
            cand = np.flatnonzero(x >= top - width)
            vals = x[cand].astype(np.float64) * scale
            probs = np.exp(vals - top * scale) / total
            mass = float(probs.sum())
            if mass >= p.top_p or cand.size == x.shape[-1] or not np.isfinite(width):
                break
            width *= 2.0
        order = np.argsort(vals, kind="stable")
        # transformers: ascending cumulative probability over the whole vocabulary, drop while <= 1 - top_p
        cum = (1.0 - mass) + np.cumsum(probs[order])
        drop = cum <= 1.0 - p.top_p
        drop[-1] = False
        kept = np.sort(order[~drop])  # cand is ascending, so this keeps the ids ascending
        return cand[kept], vals[kept]

    def __call__(self, logits: np.ndarray) -> int:
        if self.params.greedy:
            return int(np.argmax(self.penalized(logits)))
        ids, vals = self.select(logits)
        cdf = np.cumsum(_softmax(vals))
        u = self.rng.random() * cdf[-1]
        return int(ids[min(int(np.searchsorted(cdf, u, side="right")), ids.size - 1)])


def _at_least(x: np.ndarray, k: int) -> np.ndarray:
    """Ascending ids of a set of the highest logits holding at least ``k`` of them (cheap linear passes:
    a full partition of a large vocabulary costs more than a decode step of a small model)."""
    top = float(x.max())
    width = 4.0
    while True:
        cand = np.flatnonzero(x >= top - width)
        if cand.size >= k or cand.size == x.shape[-1]:
            return cand
        if cand.size == 0 or width > 1e30:
            return np.arange(x.shape[-1])
        width *= 2.0


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()
