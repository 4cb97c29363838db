"""The validation gate: an export's next-token logits against the source's.

Metrics per export, over held-out Korean chunks fed as identical token ids:
``top1`` (fraction of positions with the same argmax), ``kl_mean`` / ``kl_p99`` / ``kl_max``
(KL(source || export) in nats), ``max_abs_diff`` of the raw logits. Each quant type has
thresholds; an export outside them fails and is not written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ValidationError


@dataclass(frozen=True)
class Thresholds:
    top1_min: float
    kl_mean_max: float
    max_abs_max: float | None = None


# Bounds that healthy exports meet with room to spare and broken ones (wrong tokenizer, rope,
# norm or garbage weights: KL >> 1) never do. For scale, llama.cpp's own Llama-3-8B numbers
# (mean KL vs F16): Q8_0 0.0014, Q6_K 0.0055, Q5_K_M 0.011, Q4_K_M 0.028, IQ4_XS 0.036,
# Q3_K_M 0.084; the bounds are about three times those.
THRESHOLDS: dict[str, Thresholds] = {
    "F32": Thresholds(1.0, 1e-6, 1e-3),
    "F16": Thresholds(0.999, 1e-4, 1e-2),
    "BF16": Thresholds(0.98, 1e-3, 1e-1),
    "Q8_0": Thresholds(0.95, 1e-2),
    "Q6_K": Thresholds(0.93, 3e-2),
    # ONNX precisions (lower-case): fp32 as strict as F32; int8 and int4 are MatMulNBits block quants,
    # bounded like Q8_0 and Q4_*
    "fp32": Thresholds(1.0, 1e-6, 1e-3),
    "int8": Thresholds(0.95, 1e-2),
    "int4": Thresholds(0.85, 1e-1),
}
_BY_BITS = [
    # GPTQ (w<bits>g<group>): 8-bit bounded like Q8_0, 4-bit like Q4_*
    (("w8",), Thresholds(0.95, 1e-2)),
    (("w4",), Thresholds(0.85, 1e-1)),
    (("Q5_",), Thresholds(0.90, 5e-2)),
    (("Q4_", "IQ4_"), Thresholds(0.85, 1e-1)),
    (("Q3_", "IQ3_"), Thresholds(0.75, 3e-1)),
    (("Q2_", "IQ2_"), Thresholds(0.60, 1.0)),
    (("IQ1_", "TQ"), Thresholds(0.40, 2.0)),
]


def thresholds_for(quant: str) -> Thresholds:
    if quant in THRESHOLDS:
        return THRESHOLDS[quant]
    for prefixes, th in _BY_BITS:
        if quant.startswith(prefixes):
            return th
    return Thresholds(0.5, 0.5)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


_ROWS = 32  # positions per block in compare_logits


def compare_logits(reference: list[np.ndarray], exported: list[np.ndarray]) -> dict:
    """Metrics of ``exported`` against ``reference`` (lists of [positions, vocab] arrays)."""
    kls, agree, max_abs, n, flip_margin = [], 0, 0.0, 0, 0.0
    for ref, got in zip(reference, exported, strict=True):
        if ref.shape != got.shape:
            raise ValidationError(f"logit shapes differ: source {ref.shape}, export {got.shape}")
        # in blocks of rows: the float64 temporaries stay small even for a 256k vocabulary
        for i in range(0, ref.shape[0], _ROWS):
            r, g = ref[i:i + _ROWS], got[i:i + _ROWS]
            lp, lq = _log_softmax(r), _log_softmax(g)
            kls.append((np.exp(lp) * (lp - lq)).sum(axis=-1))
            top_r, top_g = r.argmax(-1), g.argmax(-1)
            agree += int((top_r == top_g).sum())
            flips = np.nonzero(top_r != top_g)[0]
            if len(flips):  # how much the source prefers its own token where the export picked another
                rows = r[flips].astype(np.float64)
                margins = rows[np.arange(len(flips)), top_r[flips]] - rows[np.arange(len(flips)), top_g[flips]]
                flip_margin = max(flip_margin, float(margins.max()))
            max_abs = max(max_abs, float(np.abs(r.astype(np.float64) - g).max()))
        n += ref.shape[0]
    kl = np.concatenate(kls)
    return {
        "positions": n,
        "top1": agree / n,
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "max_abs_diff": max_abs,
        "top1_flip_margin": flip_margin,
    }


def judge(quant: str, metrics: dict, token_ids_identical: bool, extra_failures: list[str] | None = None) -> dict:
    """The gate's verdict, recorded in the manifest: thresholds, failures, passed."""
    th = thresholds_for(quant)
    failures = list(extra_failures or [])
    if not token_ids_identical:
        failures.append("token ids of the held-out text differ from the source tokenizer")
    if metrics["top1"] < th.top1_min:
        failures.append(f"top-1 agreement {metrics['top1']:.4f} < {th.top1_min}")
    if metrics["kl_mean"] > th.kl_mean_max:
        failures.append(f"mean KL {metrics['kl_mean']:.3g} > {th.kl_mean_max}")
    if th.max_abs_max is not None and metrics["max_abs_diff"] > th.max_abs_max:
        failures.append(f"max abs logit diff {metrics['max_abs_diff']:.3g} > {th.max_abs_max}")
    return {**metrics, "token_ids_identical": token_ids_identical, "thresholds": asdict(th),
            "failures": failures, "passed": not failures}
