"""What a bench run measures, stated once: text, chunking, prompts, repeats, threads.

Every number in the report is defined here, so the report can print its own settings:

- **perplexity** is llama.cpp's ``llama-perplexity`` recipe: the text is tokenized once (BOS
  first when the source tokenizer adds one), cut into ``ctx``-token chunks whose first token
  becomes BOS, each chunk is evaluated from an empty cache, and only its second half is scored
  (the ``ctx/2 - 1`` tokens after position ``ctx/2``, so every scored token has at least
  ``ctx/2`` tokens of context);
- **KL divergence** (KL(baseline || export), nats) and **top-1 agreement** are taken at those
  same scored positions, on identical token ids;
- **latency** uses the first ``prefill`` tokens of the same text as prompts for every runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import KoquantError

BASELINE_DTYPES = ("float32", "bfloat16", "float16")


class BenchError(KoquantError):
    """The bench cannot run on what it was given, or a runtime failed while it ran."""


@dataclass(frozen=True)
class BenchSettings:
    ctx: int = 512  # tokens per perplexity chunk
    chunks: int | None = None  # chunks evaluated (None: every full chunk of the text, like llama-perplexity)
    threads: int | None = None  # CPU threads for every runtime (None: all logical cores)
    baseline_dtype: str | None = None  # None: the dtype the source weights are stored in
    prefill: tuple[int, ...] = (128, 512)  # prompt lengths for prefill tok/s; the first is also the TTFT prompt
    decode_tokens: int = 128  # decode steps timed after the TTFT prompt
    warmup: int = 1  # unrecorded runs of each latency measurement
    repeats: int = 3  # recorded runs (median and spread reported)
    latency: bool = True  # False: quality only
    quality: bool = True  # False: latency only

    def check(self) -> "BenchSettings":
        def positive(name: str, value, minimum: int = 1) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise BenchError(f"{name} must be an integer >= {minimum} (got {value!r})")

        positive("--ctx", self.ctx, 4)
        if self.chunks is not None:
            positive("--chunks", self.chunks)
        if self.threads is not None:
            positive("--threads", self.threads)
        if self.baseline_dtype is not None and self.baseline_dtype not in BASELINE_DTYPES:
            raise BenchError(f"--baseline-dtype {self.baseline_dtype!r} is not supported",
                             hint="choose one of " + ", ".join(BASELINE_DTYPES))
        if not self.prefill:
            raise BenchError("at least one prefill length is needed")
        for n in self.prefill:
            positive("a prefill length", n)
        positive("--decode-tokens", self.decode_tokens)
        positive("--warmup", self.warmup, 0)
        positive("--repeats", self.repeats)
        if not (self.latency or self.quality):
            raise BenchError("nothing to measure: both latency and quality are off")
        return self

    @property
    def first_scored(self) -> int:
        """Index of the first chunk position whose logits are scored (llama-perplexity's ``first``)."""
        return self.ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        return self.ctx - self.first_scored - 1

    @property
    def n_ctx(self) -> int:
        """The context every runtime is loaded with: a quality chunk, or the longest prompt plus the decode."""
        need = max(self.prefill[0] + self.decode_tokens + 2, *self.prefill) if self.latency else 0
        return max(self.ctx if self.quality else 0, need)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefill"] = list(self.prefill)
        d.update(first_scored=self.first_scored, scored_per_chunk=self.scored_per_chunk, n_ctx=self.n_ctx)
        return d
