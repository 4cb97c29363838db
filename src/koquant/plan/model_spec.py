"""A model's shape, read from a Hugging Face ``config.json``, with every key synonym in one place.

:func:`spec_from_config` is the only code that looks at raw config keys. Everything else in
:mod:`koquant.plan` works from the resulting :class:`ModelSpec`.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from koquant.errors import CheckpointError
from koquant.source.architectures import ARCHITECTURES, architecture_for, weights
from koquant.plan.vocab_footprint import VocabFootprint, estimated_footprint, footprint_from_dir

__all__ = ["ModelSpec", "CONFIG_KEYS", "spec_from_config", "spec_from_path", "load_config"]

# canonical name -> accepted config keys, first match wins
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "intermediate": ("intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim"),
    "n_heads": ("num_attention_heads", "n_head", "n_heads"),
    "n_kv_heads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"),
    "head_dim": ("head_dim",),
    "vocab": ("vocab_size", "n_vocab", "padded_vocab_size"),
    "max_positions": ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx", "seq_length"),
    "tied": ("tie_word_embeddings",),
    "sliding_window": ("sliding_window",),
    "rope_theta": ("rope_theta",),
    "rope": ("rope_scaling", "rope_parameters"),
    "attention_bias": ("attention_bias",),
    "mlp_bias": ("mlp_bias",),
    "dtype": ("torch_dtype", "dtype"),
    "n_experts": ("num_experts", "num_local_experts", "n_routed_experts"),
    "n_experts_used": ("num_experts_per_tok",),
    "expert_intermediate": ("moe_intermediate_size",),
}
_REQUIRED = ("n_layers", "hidden", "intermediate", "n_heads", "vocab")
_LABELS = {
    "n_layers": "layer count",
    "hidden": "hidden size",
    "intermediate": "FFN (intermediate) size",
    "n_heads": "attention head count",
    "vocab": "vocabulary size",
    "n_experts": "expert count",
    "n_experts_used": "experts-per-token count",
    "expert_intermediate": "expert FFN size",
}
_MAX_CONFIG_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """Everything the planners need to know about a model.

    ``sliding_window`` is the window the Hugging Face model attends over (None: full).
    ``lm_head_in_checkpoint`` matters only for tied models: whether the checkpoint stores a
    separate ``lm_head.weight`` anyway (None: unknown, assumed not).
    ``checkpoint_bytes`` is the real size of the safetensors files when a folder was given.
    """

    name: str
    arch: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    max_positions: int | None = None
    sliding_window: int | None = None
    rope_theta: float | None = None
    rope_type: str | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    dtype: str = "bfloat16"
    vocab_footprint: VocabFootprint | None = None
    lm_head_in_checkpoint: bool | None = None
    checkpoint_bytes: int | None = None
    source: str = ""
    #: a mixture of experts: routed experts per layer, experts per token, an expert's FFN width
    n_experts: int | None = None
    n_experts_used: int | None = None
    expert_intermediate: int | None = None
    #: each layer's attention (``sliding_attention``/``full_attention``) where the config gives ``layer_types``
    layer_types: tuple[str, ...] | None = None

    @property
    def architecture(self):
        return ARCHITECTURES[self.arch]

    @property
    def n_gqa(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def n_params(self) -> int:
        """Parameters stored once (a tied head is not counted twice)."""
        return sum(w.n_elements for w in weights(self) if w.role != "rope_freqs")

    @property
    def is_moe(self) -> bool:
        return bool(self.n_experts and self.architecture.experts)

    @property
    def expert_share(self) -> float:
        """The share of the routed expert weights one token uses (experts per token / experts); 1 for dense."""
        return self.n_experts_used / self.n_experts if self.is_moe else 1.0

    @property
    def n_active_params(self) -> int:
        """Parameters one token uses: everything ``n_params`` counts, with only ``n_experts_used`` of the
        ``n_experts`` routed experts of each layer (attention, router, norms, embedding and head in full)."""
        total = 0
        for w in weights(self):
            if w.role == "rope_freqs":
                continue
            n = w.n_elements
            total += n * self.n_experts_used // self.n_experts if self.is_moe and w.is_expert else n
        return total

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer, whether the model attends over ``sliding_window`` positions there (the Hugging Face
        model's view: ``layer_types`` where the family has them, else every layer when there is a window)."""
        if not self.sliding_window:
            return (False,) * self.n_layers
        if self.layer_types is not None:
            return tuple(t == "sliding_attention" for t in self.layer_types)
        return (True,) * self.n_layers

    @property
    def tokenizer(self) -> VocabFootprint:
        return self.vocab_footprint or estimated_footprint(self.vocab, self.architecture.tokenizer_kind)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vocab_footprint"] = self.tokenizer.to_dict()
        d["n_params"] = self.n_params
        d["n_active_params"] = self.n_active_params
        d["sliding_layers"] = sum(self.sliding_layers)
        return d

    def with_(self, **changes) -> ModelSpec:
        return replace(self, **changes)


def _lookup(config: dict, canonical: str) -> tuple[str | None, Any]:
    for key in CONFIG_KEYS[canonical]:
        if key in config and config[key] is not None:
            return key, config[key]
    return None, None


def _positive_int(config: dict, canonical: str, where: str, *, required: bool) -> int | None:
    key, value = _lookup(config, canonical)
    if key is None:
        if required:
            raise CheckpointError(
                f"{where}: config has no {_LABELS.get(canonical, canonical)} "
                f"(looked for {', '.join(CONFIG_KEYS[canonical])})",
                hint="pass the model's own config.json, or use --preset",
            )
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise CheckpointError(f"{where}: {key} must be an integer, got {value!r}", hint="fix config.json")
    if value <= 0:
        raise CheckpointError(f"{where}: {key} is {value}; it must be positive", hint="fix config.json")
    return value


def _flatten(config: dict) -> dict:
    """Multimodal and wrapper configs keep the language model under ``text_config``."""
    inner = config.get("text_config")
    if isinstance(inner, dict) and not any(k in config for k in CONFIG_KEYS["n_layers"]):
        merged = dict(config)
        merged.update(inner)
        if "architectures" in config:
            merged["architectures"] = config["architectures"]
        return merged
    return config


def spec_from_config(config: dict, *, name: str = "model", source: str = "") -> ModelSpec:
    """Build a :class:`ModelSpec` from a config dict, validating every number it uses."""
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{name}: config must be a JSON object, got {type(config).__name__}", hint="pass a config.json"
        )
    config = _flatten(config)
    arch = architecture_for(config)
    where = source or name
    vals = {c: _positive_int(config, c, where, required=True) for c in _REQUIRED}
    n_heads = vals["n_heads"]
    n_kv = _positive_int(config, "n_kv_heads", where, required=False) or n_heads
    if n_kv > n_heads or n_heads % n_kv:
        raise CheckpointError(
            f"{where}: {n_kv} key/value heads do not divide {n_heads} attention heads",
            hint="check num_key_value_heads in config.json",
        )
    head_dim = _positive_int(config, "head_dim", where, required=False)
    if head_dim is None:
        if vals["hidden"] % n_heads:
            raise CheckpointError(
                f"{where}: hidden size {vals['hidden']} is not divisible by {n_heads} heads and there is no head_dim",
                hint="add head_dim to config.json",
            )
        head_dim = vals["hidden"] // n_heads

    _, tied = _lookup(config, "tied")
    tied = arch.tied_default if tied is None else bool(tied)

    window = None
    if arch.window_default is not None:
        if arch.window_requires_flag and not config.get(arch.window_requires_flag):
            window = None
        elif "sliding_window" in config:
            window = config["sliding_window"]  # an explicit null means full attention
            if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
                raise CheckpointError(
                    f"{where}: sliding_window must be a positive integer or null, got {window!r}",
                    hint="fix config.json",
                )
        else:
            window = arch.window_default

    _, rope = _lookup(config, "rope")
    rope = rope if isinstance(rope, dict) else {}
    if isinstance(rope.get("full_attention"), dict):  # transformers 5: one set per attention type (Gemma 3, EXAONE 4)
        rope = rope["full_attention"]
    rope_type = rope.get("rope_type") or rope.get("type")
    _, theta = _lookup(config, "rope_theta")
    theta = theta if theta is not None else rope.get("rope_theta")
    rope_theta = float(theta) if isinstance(theta, (int, float)) and not isinstance(theta, bool) else None

    _, dtype = _lookup(config, "dtype")
    moe = {}
    if arch.experts:
        moe = {c: _positive_int(config, c, where, required=True)
               for c in ("n_experts", "n_experts_used", "expert_intermediate")}
    layer_types = config.get("layer_types") if arch.layer_types else None
    if layer_types is not None and (not isinstance(layer_types, list) or len(layer_types) != vals["n_layers"]
                                    or not all(t in ("sliding_attention", "full_attention") for t in layer_types)):
        raise CheckpointError(
            f"{where}: layer_types must list 'sliding_attention' or 'full_attention' for each of the "
            f"{vals['n_layers']} layers", hint="fix layer_types in config.json")
    if layer_types is None and arch.layer_types and window:
        layer_types = _default_layer_types(arch.name, vals["n_layers"], config.get("sliding_window_pattern"))
    return ModelSpec(
        name=name,
        arch=arch.name,
        n_layers=vals["n_layers"],
        hidden=vals["hidden"],
        intermediate=vals["intermediate"],
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab=vals["vocab"],
        tied=tied,
        max_positions=_positive_int(config, "max_positions", where, required=False),
        sliding_window=window,
        rope_theta=rope_theta,
        rope_type=str(rope_type) if rope_type else None,
        attention_bias=bool(_lookup(config, "attention_bias")[1]),
        mlp_bias=bool(_lookup(config, "mlp_bias")[1]),
        dtype=str(dtype or "bfloat16"),
        source=source,
        layer_types=tuple(layer_types) if layer_types else None,
        **moe,
    )


def _default_layer_types(arch: str, n_layers: int, pattern) -> list[str] | None:
    """The ``layer_types`` transformers derives when a config has none (its Gemma2Config, Gemma3TextConfig
    and Exaone4Config ``__post_init__``): Gemma 2 alternates sliding and full from layer 0; Gemma 3 and
    EXAONE 4 make every ``sliding_window_pattern``-th layer full (6 and 4 by default; EXAONE 4 also
    takes a string such as ``"LLLG"``, L for local)."""
    if isinstance(pattern, str) and pattern and set(pattern) <= {"L", "G"}:
        sliding = [pattern[i % len(pattern)] == "L" for i in range(n_layers)]
    else:
        explicit = isinstance(pattern, int) and not isinstance(pattern, bool) and arch != "gemma2"
        p = pattern if explicit else {"gemma2": 2, "gemma3": 6, "exaone4": 4}.get(arch)
        if not p or p < 1:
            return None
        sliding = [(i + 1) % p != 0 for i in range(n_layers)]
    return ["sliding_attention" if s else "full_attention" for s in sliding]


def load_config(path: str | os.PathLike) -> dict:
    """Read a config.json (or the one inside a model folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise CheckpointError(f"no config.json at {p}", hint="pass a model folder with config.json, or --preset NAME")
    if p.stat().st_size > _MAX_CONFIG_BYTES:
        raise CheckpointError(f"{p} is too large to be a config.json", hint="pass the model's config.json")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p} is not valid JSON: {e}", hint="fix or re-save config.json") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{p} must hold a JSON object", hint="pass the model's config.json")
    return data


def _safetensors_tensors(model_dir: Path) -> tuple[int | None, set[str]]:
    """Total size of the safetensors files and the tensor names their headers list."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None, set()
    total, names = 0, set()
    for f in files:
        size = f.stat().st_size
        total += size
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > min(size - 8, 100 * 1024 * 1024):
                    continue
                header = json.loads(fh.read(n))
            names.update(k for k in header if k != "__metadata__")
        except (OSError, ValueError, struct.error):
            continue
    return total, names


def spec_from_path(path: str | os.PathLike) -> ModelSpec:
    """A spec from a config.json file or a model folder (then tokenizer and weights are read too)."""
    p = Path(path)
    config = load_config(p)
    model_dir = p if p.is_dir() else p.parent
    name = model_dir.name if p.is_dir() or p.name == "config.json" else p.stem
    spec = spec_from_config(config, name=name or "model", source=str(p))
    footprint = footprint_from_dir(model_dir, spec.vocab, prefer=spec.architecture.tokenizer_kind)
    ckpt_bytes, names = _safetensors_tensors(model_dir)
    head = None
    if names:
        head = any(n.endswith("lm_head.weight") for n in names)
    return spec.with_(vocab_footprint=footprint, checkpoint_bytes=ckpt_bytes, lm_head_in_checkpoint=head)
