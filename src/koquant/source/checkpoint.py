"""``Checkpoint``: a local Hugging Face model folder, checked before anything runs on it."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .architectures import Architecture, Dims, resolve_architecture
from .hub import HubRef, local_model
from ..errors import CheckpointError, UnsafeInputError
from .safetensors import TensorInfo, _is_int, read_safetensors_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
REQUIRED_CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
# The integer values koquant accepts in config.json: far beyond any real model, small enough that nothing
# sized by them (a tensor, a loop, a GGUF header) can exhaust memory or time.
CONFIG_BOUNDS = {
    "hidden_size": 1 << 16,
    "num_hidden_layers": 1 << 10,
    "num_attention_heads": 1 << 10,
    "vocab_size": 1 << 22,
    "num_key_value_heads": 1 << 10,
    "intermediate_size": 1 << 20,
    "head_dim": 1 << 12,
    "max_position_embeddings": 1 << 24,
    "sliding_window": 1 << 24,
}
# float settings that must be positive and finite when present
POSITIVE_FLOATS = ("rope_theta", "rms_norm_eps")
MAX_JSON_BYTES = 16 * 1024 * 1024  # config, tokenizer_config, index, generation_config, ...
MAX_TOKENIZER_JSON_BYTES = 512 * 1024 * 1024  # tokenizer.json of a 256k vocabulary is ~35 MiB


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_json(path: Path, limit: int = MAX_JSON_BYTES) -> dict:
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{path.name} is {size} bytes, more than koquant reads for such a file ({limit})",
                              hint=f"check {path}; it is not a file Hugging Face tools write")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path.name} is not valid JSON: {e}", hint=f"fix or re-download {path}") from None
    except RecursionError:
        raise CheckpointError(f"{path.name} is not valid JSON: nested too deeply", hint=f"fix or re-download {path}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is not a JSON object", hint=f"fix or re-download {path}")
    return data


def _inside(folder: Path, name: str) -> Path:
    """Resolve a file name from a tokenizer/config file, refusing paths that leave the folder."""
    p = (folder / name).resolve()
    if folder.resolve() not in p.parents:
        raise UnsafeInputError(
            f"{name!r} points outside the model folder {folder}",
            hint="model files must reference files inside their own folder; remove the path from the config",
        )
    return p


def check_config(config: dict) -> None:
    """Refuse config.json values that are missing, of the wrong type, absurd or inconsistent."""
    missing = [k for k in REQUIRED_CONFIG_KEYS if not _is_int(config.get(k)) or config.get(k) <= 0]
    if missing:
        raise CheckpointError(
            f"config.json lacks valid values for {', '.join(missing)}",
            hint="config.json must give positive integers for " + ", ".join(REQUIRED_CONFIG_KEYS),
        )
    for key, top in CONFIG_BOUNDS.items():
        value = config.get(key)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= top:
            raise CheckpointError(f"config.json: {key}={value!r} is outside the range koquant accepts (1 to {top})",
                                  hint=f"fix {key} in config.json; it must describe the weights in the folder")
    for key in POSITIVE_FLOATS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise CheckpointError(f"config.json: {key}={value!r} is not a positive number", hint=f"fix {key} in config.json")
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if heads % kv:
        raise CheckpointError(f"config.json: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}",
                              hint="fix num_key_value_heads in config.json")
    if config.get("head_dim") is None and config["hidden_size"] % heads:
        raise CheckpointError(
            f"config.json: hidden_size={config['hidden_size']} is not divisible by num_attention_heads={heads} "
            "and no head_dim is given", hint="fix hidden_size or num_attention_heads, or add head_dim")


def expected_shapes(cfg: dict, arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The safetensors shape (out, in) of every weight config.json implies, in the layout of ``arch``."""
    return arch.hf_shapes(Dims.from_config(cfg), cfg["vocab_size"], cfg["num_hidden_layers"])


def describe_config(cfg: dict) -> str:
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size")
    return ", ".join(f"{k}={cfg[k]}" for k in keys if cfg.get(k) is not None)


@dataclass
class Checkpoint:
    """A local HF folder: config, tokenizer, chat template and safetensors weights."""

    path: Path
    config: dict
    architecture: Architecture
    weight_files: list[Path]
    tensors: dict[str, TensorInfo]
    tokenizer_files: list[Path]
    chat_template: str | None
    pickle_weights: bool = False
    hub: HubRef | None = None  # the Hub repo and commit, for a Hub id or a snapshot folder of a Hub cache
    _hashes: dict[str, str] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, *, allow_pickle: bool = False) -> "Checkpoint":
        """A local HF folder, or a Hub id ``org/name[@revision]`` (:mod:`.hub`) when no such folder exists."""
        folder, hub = local_model(path, allow_pickle=allow_pickle)
        if not folder.exists():
            raise CheckpointError(f"model folder {folder} does not exist",
                                  hint="pass the path of a local Hugging Face model folder, or a Hub id org/name")
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is a file, not a model folder", hint="pass the folder that holds config.json")
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(
                f"no config.json in {folder}",
                hint="is this a Hugging Face model folder? save it with model.save_pretrained(...) first",
            )
        config = _read_json(cfg_path)
        arch = resolve_architecture(config, where=str(cfg_path))
        check_config(config)

        weight_files, pickle_weights = cls._find_weights(folder, allow_pickle)
        tensors: dict[str, TensorInfo] = {}
        if not pickle_weights:
            for wf in weight_files:
                tensors.update(read_safetensors_header(wf))

        tok_files = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
        if not any(p.name in ("tokenizer.json", "tokenizer.model") for p in tok_files):
            raise CheckpointError(
                f"no tokenizer in {folder} (neither tokenizer.json nor tokenizer.model)",
                hint="copy the tokenizer files of the base model into the folder (tokenizer.save_pretrained(folder))",
            )
        tok_cfg = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
        for key in ("vocab_file", "tokenizer_file", "merges_file"):
            if isinstance(tok_cfg.get(key), str):
                _inside(folder, tok_cfg[key])
        chat_template = cls._find_chat_template(folder, tok_cfg)
        ckpt = cls(folder, config, arch, weight_files, tensors, tok_files, chat_template, pickle_weights, hub)
        ckpt._check_weights()
        return ckpt

    @staticmethod
    def _find_weights(folder: Path, allow_pickle: bool) -> tuple[list[Path], bool]:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            wm = _read_json(index).get("weight_map")
            if not isinstance(wm, dict) or not wm:
                raise CheckpointError(f"{index.name} has no weight_map", hint="re-save the model")
            if not all(isinstance(v, str) for v in wm.values()):
                raise CheckpointError(f"{index.name} maps tensors to something other than file names", hint="re-save the model")
            files = []
            for name in sorted(set(wm.values())):
                p = _inside(folder, name)
                if not p.is_file():
                    raise CheckpointError(f"{index.name} lists {name} but it is missing", hint="download the missing shard")
                files.append(p)
            return files, False
        st = sorted(folder.glob("*.safetensors"))
        if st:
            return st, False
        pk = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if pk and not allow_pickle:
            raise UnsafeInputError(
                f"{folder} holds only pickle weights ({', '.join(p.name for p in pk)}); loading pickle can run arbitrary code",
                hint="convert them to safetensors, or pass --allow-pickle if you trust the source "
                "(they are then loaded with torch.load(weights_only=True))",
            )
        if pk:
            return pk, True
        raise CheckpointError(
            f"no weights in {folder} (no *.safetensors)",
            hint="save the model with model.save_pretrained(folder) so it writes model.safetensors",
        )

    @staticmethod
    def _find_chat_template(folder: Path, tok_cfg: dict) -> str | None:
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        cj = folder / "chat_template.json"
        if cj.is_file():
            tpl = _read_json(cj).get("chat_template")
            if isinstance(tpl, str):
                return tpl
        tpl = tok_cfg.get("chat_template")
        if isinstance(tpl, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
            tpl = named.get("default")
        return tpl if isinstance(tpl, str) else None

    def _check_weights(self) -> None:
        self._check_vocab()
        self._check_shapes()

    def _check_shapes(self) -> None:
        """config.json must describe the weights it comes with (read from the safetensors headers only)."""
        if not self.tensors:
            return
        cfg = self.config
        layers = {split[0] for n in self.tensors if (split := self.architecture.split_layer(n))}
        if layers != set(range(cfg["num_hidden_layers"])):
            held = f"layers {min(layers)}-{max(layers)}" if layers else "no decoder layers"
            raise CheckpointError(
                f"config.json says num_hidden_layers={cfg['num_hidden_layers']} but the weights hold {held}",
                hint="fix num_hidden_layers in config.json, or use the weights that belong to this config",
            )
        for name, shape in expected_shapes(cfg, self.architecture).items():
            info = self.tensors.get(name)
            if info is not None and info.shape != shape:
                raise CheckpointError(
                    f"config.json does not match the weights: {name} is {list(info.shape)}, but config.json implies "
                    f"{list(shape)} ({describe_config(cfg)})",
                    hint="fix config.json, or use the weights that belong to this config",
                )

    def _check_vocab(self) -> None:
        vocab = self.config["vocab_size"]
        embed = self.tensors.get(f"{self.architecture.embed}.weight")
        if embed is not None and embed.shape[0] != vocab:
            raise CheckpointError(
                f"vocab size mismatch: config.json says vocab_size={vocab} but the embedding has {embed.shape[0]} rows",
                hint="fix vocab_size in config.json (or resize the embeddings and re-save)",
            )
        n_tok = self.tokenizer_vocab_size()
        if n_tok is not None and n_tok > vocab:
            raise CheckpointError(
                f"vocab size mismatch: the tokenizer has {n_tok} tokens but the model only {vocab}",
                hint="use the tokenizer the model was trained with, or resize the embeddings "
                "(model.resize_token_embeddings(len(tokenizer))) and re-save",
            )

    # ------------------------------------------------------------------ facts
    @property
    def name(self) -> str:
        """The model's name: its Hub repo's (not a snapshot's commit hash), else its folder's."""
        return self.hub.name if self.hub is not None else self.path.resolve().name

    @property
    def source_dtype(self) -> str:
        """The dtype the weights are stored in: bfloat16, float16 or float32."""
        dtypes = {t.dtype for t in self.tensors.values() if t.dtype in ("BF16", "F16", "F32")}
        for st, name in (("F32", "float32"), ("BF16", "bfloat16"), ("F16", "float16")):
            if st in dtypes:
                return name
        return str(self.config.get("torch_dtype") or self.config.get("dtype") or "float32")

    def tokenizer_vocab_size(self) -> int | None:
        """Highest token id + 1 from tokenizer.json, without importing transformers."""
        tj = self.path / "tokenizer.json"
        if not tj.is_file():
            return None
        data = _read_json(tj, MAX_TOKENIZER_JSON_BYTES)
        ids: list[int] = []
        model = data.get("model")
        vocab = model.get("vocab") if isinstance(model, dict) else None
        added = data.get("added_tokens")
        if isinstance(vocab, dict):
            ids.extend(vocab.values())
        elif isinstance(vocab, list):
            ids.append(len(vocab) - 1)
        if isinstance(added, list):
            ids.extend(t["id"] for t in added if isinstance(t, dict) and "id" in t)
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise CheckpointError("tokenizer.json has a token id that is not a non-negative integer",
                                  hint="re-save the tokenizer with transformers (tokenizer.save_pretrained(folder))")
        return max(ids) + 1 if ids else None

    @cached_property
    def tokenizer_config(self) -> dict:
        p = self.path / "tokenizer_config.json"
        return _read_json(p) if p.is_file() else {}

    @cached_property
    def generation_config(self) -> dict:
        p = self.path / "generation_config.json"
        return _read_json(p) if p.is_file() else {}

    def file_hashes(self) -> dict[str, str]:
        if not self._hashes:
            files = [self.path / "config.json", *self.tokenizer_files, *self.weight_files]
            self._hashes = {p.name: sha256_file(p) for p in sorted(set(files))}
        return dict(self._hashes)

    @property
    def chat_template_sha256(self) -> str | None:
        return sha256_text(self.chat_template) if self.chat_template is not None else None

    # ------------------------------------------------------------------ staging
    def stage(self, dest: Path) -> Path:
        """A folder with only the vetted files, for tools that glob the model folder.

        Safetensors files and tokenizer files are linked; pickle weights (only with
        ``allow_pickle``) are loaded with ``weights_only=True`` and re-saved as safetensors,
        so no backend ever unpickles anything.
        """
        dest.mkdir(parents=True, exist_ok=True)
        for p in [self.path / "config.json", *self.tokenizer_files]:
            _link_or_copy(p, dest / p.name)
        if self.pickle_weights:
            self._resave_pickle(dest)
        else:
            idx = self.path / "model.safetensors.index.json"
            if idx.is_file():
                _link_or_copy(idx, dest / idx.name)
            for p in self.weight_files:
                _link_or_copy(p, dest / p.name)
        return dest

    def _resave_pickle(self, dest: Path) -> None:
        import torch
        from safetensors.torch import save_file

        state: dict = {}
        for p in self.weight_files:
            try:
                part = torch.load(p, map_location="cpu", weights_only=True, mmap=False)
            except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
                raise UnsafeInputError(
                    f"{p.name} could not be loaded with weights_only=True ({e.__class__.__name__}): "
                    "it holds more than plain tensors",
                    hint="convert it to safetensors in a trusted environment",
                ) from None
            if isinstance(part, dict) and "state_dict" in part and isinstance(part["state_dict"], dict):
                part = part["state_dict"]
            if not isinstance(part, dict):
                raise UnsafeInputError(f"{p.name} does not hold a state dict", hint="convert it to safetensors")
            state.update(part)
        tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
        # tied weights share storage; safetensors refuses shared tensors
        seen: dict[int, str] = {}
        for k in list(tensors):
            ptr = tensors[k].data_ptr()
            if ptr in seen:
                tensors[k] = tensors[k].clone()
            seen[ptr] = k
        out = dest / "model.safetensors"
        save_file(tensors, str(out), metadata={"format": "pt"})
        self.tensors = read_safetensors_header(out)
        self._check_weights()


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)
