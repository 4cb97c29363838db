"""The validation gate: an export's next-token logits against the source's.

Metrics per export, over held-out Korean chunks fed as identical token ids:
``top1`` (fraction of positions with the same argmax), ``kl_mean`` / ``kl_p99`` / ``kl_max``
(KL(source || export) in nats), ``max_abs_diff`` of the raw logits. An export that fails :func:`judge` is not written.

The default gate judges like a user: a file is refused when it is broken (token ids or template differ,
NaN/inf logits) or worse than what the plain tool makes of the same type; otherwise it is published with
its numbers and its ratio to the plain file. ``--gate strict`` applies each quant type's fixed bounds, its
row in :mod:`koquant.quant_recipes` (``gguf``, ``gptq``, ``onnx``).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from ..errors import RecipeError, ValidationError
from ..quant_recipes import gguf, gptq, onnx
from ..quant_recipes.thresholds import FLOAT16, Thresholds

__all__ = ["Thresholds", "THRESHOLDS", "thresholds_for", "compare_logits", "judge", "token_mismatch", "HINTS",
           "PLAIN_TOLERANCE"]

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
    kls, agree, max_abs, n, flip_margin, row_abs, nonfinite = [], 0, 0.0, 0, 0.0, [], 0
    for ref, got in zip(reference, exported, strict=True):
        if ref.shape != got.shape:
            raise ValidationError(f"logit shapes differ: source {ref.shape}, export {got.shape}")
        # in blocks of rows: the float64 temporaries stay small even for a 256k vocabulary
        for i in range(0, ref.shape[0], _ROWS):
            r, g = ref[i:i + _ROWS], got[i:i + _ROWS]
            nonfinite += int((~np.isfinite(g)).any(axis=-1).sum())
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
        "kl_se": float(kl.std() / np.sqrt(len(kl))),  # standard error of kl_mean over the positions
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "max_abs_diff": max_abs,
        "max_abs_diff_p99": float(np.percentile(np.concatenate(row_abs), 99)),
        "top1_flip_margin": flip_margin,
        "nonfinite_positions": nonfinite,
    }


#: The user gate refuses a quantized file whose mean KL exceeds the plain tool's file of the same type
#: (llama.cpp without an importance matrix; RTN on the same grid for GPTQ and ONNX int4) by more than this.
PLAIN_TOLERANCE = 0.10
#: KL differences below this (nats), or below two standard errors of the export's mean KL over the
#: positions measured, are measurement noise, never a verdict.
KL_FLOOR = 1e-4

HINTS = {
    "ids": "the export tokenizes the text differently from the source: check the model folder's tokenizer files "
           "(tokenizer.json / tokenizer.model) and that the format supports this vocabulary",
    "template": "the export carries another chat template than the source: keep the template in the model "
                "folder's tokenizer_config.json or chat_template.jinja and re-export",
    "nonfinite": "the export's logits hold NaN or inf: a tensor is corrupted or overflows this type; re-export, "
                 "or choose another quant type",
    "lossless": "a lossless type should reproduce the source: check that the source loads and generates "
                "sensibly in transformers, and report it if it does",
    "plain": "koquant's calibration made this type worse than the plain tool's: try another calibration text "
             "(--calib), --no-calib, or report it with the model",
    "strict": "try a higher-precision quant type, or --gate user to judge it against the plain tool's file",
}


def token_mismatch(source_ids: list[int], export_ids: list[int], decode) -> str:
    """Where the export's token ids of the held-out text first differ from the source's, with the text there."""
    n = min(len(source_ids), len(export_ids))
    i = next((k for k in range(n) if source_ids[k] != export_ids[k]), n)
    if i == n:
        return (f"token ids of the held-out text differ from the source tokenizer: {len(export_ids)} ids "
                f"instead of {len(source_ids)} (identical for the first {n})")
    def show(ids):
        return repr(decode(ids)) if ids else "(end)"
    return (f"token ids of the held-out text differ from the source tokenizer at position {i}: source "
            f"{source_ids[i]} {show(source_ids[i:i + 1])}, export {export_ids[i]} {show(export_ids[i:i + 1])}, "
            f"in {show(source_ids[max(0, i - 4):i + 4])}")


def judge(quant: str, metrics: dict, token_ids_identical: bool, extra_failures=None, *, routed: bool = False,
          gate: str = "user", plain: dict | None = None, id_mismatch: str | None = None) -> dict:
    """The gate's verdict, recorded in the manifest: what it compared with, failures with hints, passed.

    Always refused: token ids or chat template that differ, NaN/inf logits (``extra_failures`` are the
    format's own (message, hint) pairs). Then, with ``gate="user"``, a quantized file is refused only when
    its mean KL exceeds ``plain``'s (the plain tool's file of the same type, measured on the same
    positions) by more than PLAIN_TOLERANCE (and measurement noise), and a lossless one (F32/F16/BF16) when its KL exceeds its
    tier's bound; a type no plain tool can make (it needs an importance matrix) keeps the fixed bounds.
    ``gate="strict"`` applies the fixed bounds of every type (quant_recipes.thresholds).

    ``routed``: the model is a mixture of experts. A token whose router scores two experts almost
    equally may go to either under the smallest numerical difference, and its logits then differ
    visibly although nothing is wrong; the logit bound of a lossless type then applies to the 99th
    percentile of positions (``max_abs_rule`` in the verdict says which).
    """
    th = thresholds_for(quant)
    failed: list[tuple[str, str]] = [f if isinstance(f, tuple) else (f, HINTS["strict"]) for f in extra_failures or ()]
    if not token_ids_identical:
        failed.append((id_mismatch or "token ids of the held-out text differ from the source tokenizer", HINTS["ids"]))
    if metrics.get("nonfinite_positions"):
        failed.append((f"the logits are NaN or inf at {metrics['nonfinite_positions']} of {metrics['positions']} "
                       "positions", HINTS["nonfinite"]))
    lossless = th.max_abs_max is not None
    ratio = None
    if plain is not None and plain.get("kl_mean") is not None:
        ratio = metrics["kl_mean"] / max(plain["kl_mean"], 1e-12)
    broken = bool(failed)
    if broken:
        pass  # a broken file's distances mean nothing
    elif gate == "user" and lossless:
        # a float32 file still runs with its runtime's float16 KV cache (llama.cpp's default), and a mixture of
        # experts may route a near-tie token elsewhere: lossless files share at least FLOAT16's bound
        bound = max(th.kl_mean_max, FLOAT16.kl_mean_max)
        if not metrics["kl_mean"] <= bound:
            failed.append((f"mean KL {metrics['kl_mean']:.3g} > {bound}, the bound of a lossless {quant}",
                           HINTS["lossless"]))
    elif gate == "user" and plain is not None:
        bound = plain["kl_mean"] * (1 + PLAIN_TOLERANCE) + max(KL_FLOOR, 2 * metrics.get("kl_se", 0.0))
        if not metrics["kl_mean"] <= bound:
            failed.append((f"mean KL {metrics['kl_mean']:.3g} is {ratio:.2f}× that of {plain['tool']} "
                           f"({plain['kl_mean']:.3g}), beyond the {PLAIN_TOLERANCE:.0%} tolerance", HINTS["plain"]))
    else:
        # For a lossless type the logits may differ by max_abs_max, so a position whose source prefers its
        # top token by less than twice that is a near-tie either way: flips there are not a defect.
        near_ties = lossless and metrics["top1_flip_margin"] <= 2 * th.max_abs_max
        if metrics["top1"] < th.top1_min and not near_ties:
            failed.append((f"top-1 agreement {metrics['top1']:.4f} < {th.top1_min}", HINTS["strict"]))
        if not metrics["kl_mean"] <= th.kl_mean_max:
            failed.append((f"mean KL {metrics['kl_mean']:.3g} > {th.kl_mean_max}", HINTS["strict"]))
        abs_key = "max_abs_diff_p99" if routed else "max_abs_diff"
        if lossless and metrics[abs_key] > th.max_abs_max:
            what = "99th-percentile max abs logit diff" if routed else "max abs logit diff"
            failed.append((f"{what} {metrics[abs_key]:.3g} > {th.max_abs_max}", HINTS["strict"]))
    rule = ("broken" if broken else "lossless bound" if gate == "user" and lossless
            else f"plain tool + {PLAIN_TOLERANCE:.0%}" if gate == "user" and plain is not None else "fixed bounds")
    return {**metrics, "token_ids_identical": token_ids_identical, "thresholds": asdict(th), "gate": gate,
            "rule": rule, "plain": plain, "kl_vs_plain": ratio,
            "max_abs_rule": "p99 of positions (expert routing)" if routed else "every position",
            "failures": [m for m, _ in failed], "hints": [h for _, h in failed], "passed": not failed}
