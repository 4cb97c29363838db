"""The validation gate: an export's next-token logits against the source's.

Metrics per export, over held-out Korean chunks fed as identical token ids:
``top1`` (fraction of positions with the same argmax), ``kl_mean`` / ``kl_p99`` / ``kl_max``
(KL(source || export) in nats), ``max_abs_diff`` of the raw logits. Each quant type's thresholds
are its row in :mod:`koquant.quant_recipes` (``gguf``, ``gptq``, ``onnx``); an export outside them fails
and is not written.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from ..errors import RecipeError, ValidationError
from ..quant_recipes import gguf, gptq, onnx
from ..quant_recipes.thresholds import Thresholds

__all__ = ["Thresholds", "THRESHOLDS", "thresholds_for", "compare_logits", "judge"]

# every quant type koquant exports -> its bounds, read from the formats' tables (one row per type there)
THRESHOLDS: dict[str, Thresholds] = {
    **{name: t.thresholds for name, t in gguf.FILE_TYPES.items()},
    **{name: v.thresholds for name, v in gptq.VARIANTS.items()},
    **{name: p.thresholds for name, p in onnx.PRECISIONS.items() if p.thresholds is not None},
}


def thresholds_for(quant: str) -> Thresholds:
    """The bounds of ``quant``; a quant type without a row has none (no looser default)."""
    found = THRESHOLDS.get(quant)
    if found is None:
        raise RecipeError(f"koquant has no validation thresholds for quant type {quant!r}",
                          hint="quant types with thresholds: " + ", ".join(THRESHOLDS))
    return found


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


_ROWS = 32  # positions per block in compare_logits


def compare_logits(reference: list[np.ndarray], exported: list[np.ndarray]) -> dict:
    """Metrics of ``exported`` against ``reference`` (lists of [positions, vocab] arrays)."""
    kls, agree, max_abs, n, flip_margin, row_abs = [], 0, 0.0, 0, 0.0, []
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
            row_abs.append(np.abs(r.astype(np.float64) - g).max(axis=-1))
            max_abs = max(max_abs, float(row_abs[-1].max()))
        n += ref.shape[0]
    kl = np.concatenate(kls)
    return {
        "positions": n,
        "top1": agree / n,
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "max_abs_diff": max_abs,
        "max_abs_diff_p99": float(np.percentile(np.concatenate(row_abs), 99)),
        "top1_flip_margin": flip_margin,
    }


def judge(quant: str, metrics: dict, token_ids_identical: bool, extra_failures: list[str] | None = None,
          *, routed: bool = False) -> dict:
    """The gate's verdict, recorded in the manifest: thresholds, failures, passed.

    ``routed``: the model is a mixture of experts. A token whose router scores two experts almost
    equally may go to either under the smallest numerical difference, and its logits then differ
    visibly although nothing is wrong; the logit bound of a lossless type then applies to the 99th
    percentile of positions (``max_abs_rule`` in the verdict says which).
    """
    th = thresholds_for(quant)
    failures = list(extra_failures or [])
    if not token_ids_identical:
        failures.append("token ids of the held-out text differ from the source tokenizer")
    # For a lossless type the logits may differ by max_abs_max, so a position whose source prefers its
    # top token by less than twice that is a near-tie either way: flips there are not a defect.
    near_ties = th.max_abs_max is not None and metrics["top1_flip_margin"] <= 2 * th.max_abs_max
    if metrics["top1"] < th.top1_min and not near_ties:
        failures.append(f"top-1 agreement {metrics['top1']:.4f} < {th.top1_min}")
    if metrics["kl_mean"] > th.kl_mean_max:
        failures.append(f"mean KL {metrics['kl_mean']:.3g} > {th.kl_mean_max}")
    abs_key = "max_abs_diff_p99" if routed else "max_abs_diff"
    if th.max_abs_max is not None and metrics[abs_key] > th.max_abs_max:
        what = "99th-percentile max abs logit diff" if routed else "max abs logit diff"
        failures.append(f"{what} {metrics[abs_key]:.3g} > {th.max_abs_max}")
    return {**metrics, "token_ids_identical": token_ids_identical, "thresholds": asdict(th),
            "max_abs_rule": "p99 of positions (expert routing)" if routed else "every position",
            "failures": failures, "passed": not failures}
