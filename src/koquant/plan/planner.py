"""``plan()``: every export's file size and its memory at each context length, per device.

One flow: a source (model folder, config.json, config dict, :class:`ModelSpec` or preset id)
becomes a :class:`ModelSpec`; each export planner turns it into an :class:`Export`; each
export at each context length becomes a :class:`RuntimeEstimate` with a :class:`DeviceFit`
per device. :meth:`Plan.to_dict` is what ``koquant plan --json`` prints.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from koquant.errors import CheckpointError, RecipeError
from koquant.plan import kv as kvmod
from koquant.plan.devices import DEVICES, Device, DeviceFit, custom_device, fit
from koquant.plan.devices import device as device_preset
from koquant.plan.model_spec import ModelSpec, spec_from_config, spec_from_path
from koquant.plan.exports import Export
from koquant.plan.other_formats import plan_source
from koquant.plan.presets import PRESETS, preset_spec
from koquant.exporters import export_formats
from koquant.quant_recipes import gptq as gptq_variants
from koquant.quant_recipes import onnx as onnx_precisions
from koquant.quant_recipes.gguf import file_type

__all__ = ["Export", "RuntimeEstimate", "Plan", "plan", "resolve_source", "DEFAULT_CTX", "GPTQ_VARIANTS", "SCHEMA"]

SCHEMA = "koquant.plan/1"
DEFAULT_CTX = (2048, 4096, 8192)
# planned by default: (bits, group size) of GPTQ variants, ONNX precisions; all of them ones export makes
GPTQ_VARIANTS: tuple[tuple[int, int], ...] = tuple(
    (gptq_variants.VARIANTS[n].bits, gptq_variants.VARIANTS[n].group_size) for n in gptq_variants.PLANNED
)
ONNX_VARIANTS = onnx_precisions.EXPORTABLE
_MAX_CTX = 1 << 24

ASSUMPTIONS = (
    "GGUF: convert_hf_to_gguf.py then llama-quantize with default options, per-tensor types as in the pinned "
    "llama.cpp (src/llama-quant.cpp); sizes include header, tokenizer metadata and 32-byte alignment",
    "GGUF: i-quants that need an importance matrix are planned with one; others without (--imatrix changes "
    "IQ4_XS/IQ4_NL/Q4_0/Q5_0 slightly)",
    "GPTQ: GPTQModel v1 safetensors layout (int32 qweight/qzeros, fp16 scales, int32 g_idx), each expert of a "
    "mixture of experts quantized on its own; embeddings, lm_head, norms and the experts' router 16-bit; not yet "
    "calibrated against koquant's exporter",
    "ONNX: onnxruntime-genai builder for CPU; int4 = MatMulNBits block 32 symmetric with fp32 scales, "
    "embedding kept float; int8 likewise with 8-bit blocks; tied embeddings stored once in fp32; not yet calibrated",
    "RAM = weights + KV cache + compute estimate (4 B x 512 x (vocab + hidden + intermediate) + 128 MiB); "
    "weights are all resident, every expert of a mixture of experts included; "
    "llama.cpp cache type from --kv-type, the whole context on every layer (koquant's runtime keeps llama.cpp's "
    "default swa_full, so sliding-window layers are not shrunk; Mistral has no window in llama.cpp at all); "
    "transformers bf16 cache, sliding-window layers holding at most the window; onnxruntime-genai cache in the "
    "model's I/O type over the full context",
    "devices: usable memory = RAM minus a stated reserve for the OS and other apps; --ram reserves nothing",
)


@dataclass(frozen=True)
class RuntimeEstimate:
    """Memory one export needs at one context length, and whether each device has it."""

    export: str
    ctx: int
    weight_bytes: int
    kv_bytes: int
    kv_type: str
    kv_window: int | None
    compute_bytes: int
    fits: tuple[DeviceFit, ...]
    #: layers whose cache ``kv_window`` caps (0 without a window)
    kv_sliding_layers: int = 0
    #: llama.cpp rows of a model llama.cpp runs with sliding windows: the cache with swa_full off
    #: (llama-server / llama-cli default), not counted in ``total_bytes``; None elsewhere
    kv_bytes_swa_off: int | None = None

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.compute_bytes

    def fit_on(self, device: str) -> DeviceFit:
        for f in self.fits:
            if f.device == device:
                return f
        raise RecipeError(f"device {device!r} is not in this plan", hint="plan with --device NAME or without it")

    def to_dict(self) -> dict:
        return {
            "export": self.export,
            "ctx": self.ctx,
            "weight_bytes": self.weight_bytes,
            "kv_bytes": self.kv_bytes,
            "kv_type": self.kv_type,
            "kv_window": self.kv_window,
            "kv_sliding_layers": self.kv_sliding_layers,
            "kv_bytes_swa_off": self.kv_bytes_swa_off,
            "compute_bytes": self.compute_bytes,
            "total_bytes": self.total_bytes,
            "fits": {f.device: {"fits": f.fits, "headroom_bytes": f.headroom_bytes} for f in self.fits},
        }


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    ctx: tuple[int, ...]
    kv_type: str
    devices: tuple[Device, ...]
    exports: tuple[Export, ...]
    runtime: tuple[RuntimeEstimate, ...]
    warnings: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ASSUMPTIONS

    def export(self, key: str) -> Export:
        """An export by key (``"gguf:Q4_K_M"``) or by GGUF type alone (``"Q4_K_M"``)."""
        k = key if ":" in key else f"gguf:{file_type(key).name}"
        for e in self.exports:
            if e.key.lower() == k.lower():
                return e
        raise RecipeError(f"no export {key!r} in this plan", hint="exports: " + ", ".join(e.key for e in self.exports))

    def ram(self, key: str, ctx: int) -> RuntimeEstimate:
        k = self.export(key).key
        for r in self.runtime:
            if r.export == k and r.ctx == ctx:
                return r
        raise RecipeError(f"context {ctx} was not planned", hint=f"planned contexts: {', '.join(map(str, self.ctx))}")

    def all_assumptions(self) -> list[str]:
        """The planner's assumptions, what they mean for this model (experts, sliding layers) and the notes
        of its architecture."""
        m = self.model
        out = list(self.assumptions)
        if m.is_moe:
            out.append(
                f"mixture of experts: {m.n_experts_used} of {m.n_experts} experts per token; file and RAM hold all "
                f"{m.n_params / 1e9:.2f} B parameters, one token reads {m.n_active_params / 1e9:.2f} B "
                "(active_weight_bytes: what a memory-bandwidth bound of decode speed should use)")
        n_sliding = sum(m.sliding_layers)
        if n_sliding:
            out.append(
                f"KV cache: {n_sliding} of {m.n_layers} layers attend over a {m.sliding_window}-token window; "
                "transformers caps their cache there, llama.cpp (swa_full, as koquant runs it) and "
                "onnxruntime-genai do not" + (
                    "; kv_bytes_swa_off is llama.cpp's cache with --swa-full off (llama-server, llama-cli)"
                    if kvmod.llama_cpp_sliding_layers(m) else "; llama.cpp runs this model without the window"))
        return out + [f"{m.arch}: {n}" for n in m.architecture.notes]

    def to_dict(self, *, tensors: bool = False) -> dict:
        return {
            "schema": SCHEMA,
            "model": self.model.to_dict(),
            "ctx": list(self.ctx),
            "kv_type": self.kv_type,
            "devices": [d.to_dict() for d in self.devices],
            "exports": [e.to_dict(tensors=tensors) for e in self.exports],
            "runtime": [r.to_dict() for r in self.runtime],
            "warnings": list(self.warnings),
            "assumptions": self.all_assumptions(),
        }


def resolve_source(source) -> ModelSpec:
    """A :class:`ModelSpec` from a folder, a config.json path, a config dict, a spec or a preset id."""
    if isinstance(source, ModelSpec):
        return source
    if isinstance(source, dict):
        return spec_from_config(source, name=str(source.get("_name_or_path") or "model"), source="config dict")
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.exists():
            return spec_from_path(p)
        if isinstance(source, str) and source.lower() in PRESETS:
            return preset_spec(source)
        raise CheckpointError(
            f"{source} is neither a model folder, a config.json nor a preset",
            hint="presets: " + ", ".join(PRESETS),
        )
    raise CheckpointError(
        f"cannot plan from a {type(source).__name__}", hint="pass a model folder, config.json or preset id"
    )


def _check_ctx(ctx: Iterable[int] | int) -> tuple[int, ...]:
    values = (ctx,) if isinstance(ctx, int) else tuple(ctx)
    if not values:
        raise RecipeError("no context length given", hint="e.g. --ctx 2048,4096,8192")
    for c in values:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 < c <= _MAX_CTX:
            raise RecipeError(
                f"context length must be an integer from 1 to {_MAX_CTX}, got {c!r}", hint="e.g. --ctx 4096"
            )
    return tuple(sorted(set(values)))


def _devices(device: str | Sequence[str] | None, ram) -> tuple[Device, ...]:
    chosen: list[Device] = []
    if device:
        names = [device] if isinstance(device, str) else list(device)
        chosen += [device_preset(n) for n in names]
    if ram is not None:
        chosen.append(custom_device(ram))
    return tuple(chosen) if chosen else tuple(DEVICES.values())


def _exports(spec: ModelSpec, quants: dict[str, Sequence[str]], imatrix: bool) -> list[Export]:
    """Every format's sizer over the quants asked of it (``quants``; default: the format's ``planned``),
    then the source checkpoint."""
    out = []
    for fmt in export_formats():
        sizer = fmt.sizer_function()
        out += [sizer(spec, q, imatrix=imatrix) for q in quants.get(fmt.name, fmt.planned)]
    out.append(plan_source(spec).export("transformers", spec.expert_share))
    return out


def _mark_unavailable(spec: ModelSpec, exports: list[Export]) -> list[Export]:
    """Exports of a format whose exporter does not support the architecture, marked with the reason."""
    exported = {f.name for f in export_formats()}
    out = []
    for e in exports:
        why = spec.architecture.refusal(e.format) if e.format in exported else None
        out.append(e if why is None else replace(e, available=False, notes=(*e.notes, why)))
    return out


def plan(
    source,
    *,
    ctx: Iterable[int] | int = DEFAULT_CTX,
    kv_type: str = "f16",
    device: str | Sequence[str] | None = None,
    ram: str | int | None = None,
    gguf_types: Sequence[str] | None = None,
    gptq: Sequence[tuple[int, int]] = GPTQ_VARIANTS,
    onnx: Sequence[str] = ONNX_VARIANTS,
    imatrix: bool = False,
) -> Plan:
    """Plan every export of ``source`` (folder, config.json, config dict, ModelSpec or preset id).

    ``ctx``: context lengths for the RAM estimates. ``kv_type``: llama.cpp cache type (f16,
    q8_0, ...). ``device``: preset name(s) to check (default: all presets). ``ram``: a custom
    memory budget ("8GB", or an int of bytes). ``gguf_types``: llama.cpp file types (default:
    all). ``imatrix``: plan GGUF mixes as made with an importance matrix.
    """
    spec = resolve_source(source)
    ctxs = _check_ctx(ctx)
    kv_type = kvmod.check_kv_type(kv_type)
    devices = _devices(device, ram)
    quants = {"gptq": [gptq_variants.quant_name(b, g) for b, g in gptq], "onnx": list(onnx)}
    if gguf_types is not None:
        quants["gguf"] = [file_type(t).name for t in gguf_types]
    exports = _mark_unavailable(spec, _exports(spec, quants, imatrix))
    compute = kvmod.compute_buffer_bytes(spec)
    runtime = []
    for e in exports:
        rt = kvmod.RUNTIMES[e.runtime]
        for c in ctxs:
            kv_bytes, kv_t, window = kvmod.runtime_kv_bytes(spec, c, rt, kv_type)
            total = e.weight_bytes + kv_bytes + compute
            fits = tuple(fit(d, total) for d in devices)
            swa_off = kvmod.llama_cpp_swa_kv_bytes(spec, c, kv_t) if rt.name == "llama.cpp" else None
            runtime.append(RuntimeEstimate(e.key, c, e.weight_bytes, kv_bytes, kv_t, window, compute, fits,
                                           sum(spec.sliding_layers) if window else 0, swa_off))
    warnings = []
    if spec.max_positions and ctxs[-1] > spec.max_positions:
        over = ", ".join(str(c) for c in ctxs if c > spec.max_positions)
        warnings.append(f"context {over} is longer than the {spec.max_positions} positions the model was trained for")
    if spec.vocab_footprint is None:
        warnings.append(f"no tokenizer files read: GGUF metadata estimated from the vocabulary size ({spec.vocab})")
    return Plan(spec, ctxs, kv_type, devices, tuple(exports), tuple(runtime), tuple(warnings))
