"""A release matrix as data: ``SPEC.toml`` -> models x recipes -> cells.

    bench = true                 # run koquant bench on every cell's artifact (default false)
    threads = 2                  # CPU threads per cell (a Ray task's num_cpus)

    [[model]]
    source = "./ocelot-10.8b"    # a folder or a Hub id org/name[@revision]
    name = "ocelot"              # optional: default the folder's or repo's name

    [[recipe]]
    name = "ladder"              # optional: default the formats joined by '+'
    formats = ["gguf"]           # or "gguf,gptq,onnx": one multi-format export
    quants = { gguf = ["Q8_0", "Q4_K_M"] }            # default: each format's defaults
    calib = "default"            # calib_chat, calib_ctx, calib_chunks, eval_ctx, eval_chunks, imatrix, gate
    options = { onnx = { int4_algo = "rtn" } }        # format-specific options

Every (model, recipe) pair is a :class:`Cell`: an independent export (plus bench) into
``OUT/<model>/<recipe>/``, identified by a hash of everything that decides its output.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import RecipeError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_TOP_KEYS = {"bench", "threads", "model", "recipe", "retries"}
_MODEL_KEYS = {"source", "name"}
_RECIPE_KEYS = {"name", "formats", "quants", "options", "calib", "calib_chat", "calib_ctx", "calib_chunks", "eval_ctx",
                "eval_chunks", "imatrix", "gate"}


class SpecError(RecipeError):
    """The matrix spec is not valid."""


@dataclass(frozen=True)
class Cell:
    """One (model, recipe) export of the matrix."""

    model: str
    source: str
    recipe: str
    recipes: tuple[dict, ...]  # Recipe.to_dict() of each format
    bench: bool = False
    threads: int = 2

    @property
    def id(self) -> str:
        return f"{self.model}/{self.recipe}"

    def folder(self, out: Path) -> Path:
        return Path(out) / self.model / self.recipe

    @property
    def key(self) -> str:
        """What decides the cell's output: a rerun with the same key and a verified artifact is skipped."""
        data = {"source": self.source, "recipes": list(self.recipes), "bench": self.bench, "koquant": __version__}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {"model": self.model, "source": self.source, "recipe": self.recipe, "recipes": list(self.recipes),
                "bench": self.bench, "threads": self.threads, "key": self.key}

    @classmethod
    def from_dict(cls, d: dict) -> "Cell":
        return cls(d["model"], d["source"], d["recipe"], tuple(d["recipes"]), bool(d.get("bench")), int(d["threads"]))


@dataclass
class Spec:
    cells: list[Cell]
    retries: int = 1
    path: Path | None = None
    models: list[str] = field(default_factory=list)


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{p} does not exist", hint="write a SPEC.toml (see koquant matrix --help)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{p} is not valid TOML: {e}", hint="fix the file") from None
    return parse_spec(data, base=p.parent, path=p)


def parse_spec(data: dict, *, base: Path = Path("."), path: Path | None = None) -> Spec:
    from ..quant_recipes.recipe import Recipe

    where = str(path or "the spec")
    _unknown(data, _TOP_KEYS, where)
    models, recipes = data.get("model"), data.get("recipe")
    if not isinstance(models, list) or not models:
        raise SpecError(f"{where} lists no [[model]]", hint='add [[model]] with source = "./folder" or "org/name"')
    if not isinstance(recipes, list) or not recipes:
        raise SpecError(f"{where} lists no [[recipe]]", hint='add [[recipe]] with formats = ["gguf"]')
    bench = data.get("bench", False)
    threads = data.get("threads", 2)
    retries = data.get("retries", 1)
    if not isinstance(bench, bool):
        raise SpecError(f"{where}: bench must be true or false")
    for key, value in (("threads", threads), ("retries", retries)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "threads" else 0):
            raise SpecError(f"{where}: {key} must be an integer >= {1 if key == 'threads' else 0}")

    named_models = []
    for i, m in enumerate(models):
        w = f"{where}: model {i + 1}"
        if not isinstance(m, dict):
            raise SpecError(f"{w} is not a table")
        _unknown(m, _MODEL_KEYS, w)
        source = m.get("source")
        if not isinstance(source, str) or not source:
            raise SpecError(f"{w} has no source", hint='source = "./my-model" or "org/name"')
        local = (base / source) if not Path(source).is_absolute() else Path(source)
        if local.exists():
            source = str(local.resolve())
        from ..source.hub import model_name, parse_hub_id

        if not Path(source).exists() and parse_hub_id(source) is None:
            raise SpecError(f"{w}: {source} is neither a folder nor a Hub id org/name")
        named_models.append((_name(m.get("name") or model_name(source), w), source))
    _unique([n for n, _ in named_models], "model", where)

    named_recipes = []
    for i, r in enumerate(recipes):
        w = f"{where}: recipe {i + 1}"
        if not isinstance(r, dict):
            raise SpecError(f"{w} is not a table")
        _unknown(r, _RECIPE_KEYS, w)
        fmts = r.get("formats", "gguf")
        fmts = [f.strip() for f in fmts.split(",")] if isinstance(fmts, str) else fmts
        if not isinstance(fmts, list) or not fmts or not all(isinstance(f, str) for f in fmts):
            raise SpecError(f"{w}: formats must be a list of format names")
        quants, options = r.get("quants", {}), r.get("options", {})
        for key, value in (("quants", quants), ("options", options)):
            if not isinstance(value, dict) or set(value) - set(fmts):
                raise SpecError(f"{w}: {key} must be a table keyed by the recipe's formats ({', '.join(fmts)})")
        shared = {k: r[k] for k in ("calib", "calib_chat", "calib_ctx", "calib_chunks", "eval_ctx", "eval_chunks",
                                    "imatrix", "gate") if k in r}
        if shared.get("calib") in ("none", False):
            shared["calib"] = None
        built = []
        for f in fmts:
            from ..exporters import format_of

            entry = format_of(f, exported=True)
            q = quants.get(f)
            q = tuple(entry.quant_name(x) for x in ([q] if isinstance(q, str) else q)) if q else entry.default_quants
            try:
                built.append(Recipe(fmt=entry.name, quants=tuple(q), params=dict(options.get(f, {})), threads=threads,
                                    **shared).to_dict())
            except (TypeError, ValueError) as e:
                raise SpecError(f"{w}: {e}") from None
        named_recipes.append((_name(r.get("name") or "+".join(fmts), w), tuple(built)))
    _unique([n for n, _ in named_recipes], "recipe", where)
    cells = [Cell(mn, src, rn, rs, bench, threads) for mn, src in named_models for rn, rs in named_recipes]
    return Spec(cells, retries, path, [n for n, _ in named_models])


def _unknown(d: dict, known: set[str], where: str) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise SpecError(f"{where}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(extra)}",
                        hint="known: " + ", ".join(sorted(known)))


def _name(value, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise SpecError(f"{where}: name {value!r} is not a folder name (letters, digits, _ . + -)")
    return value


def _unique(names: list[str], what: str, where: str) -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpecError(f"{where}: two {what}s are named {', '.join(twice)}", hint=f"give each {what} its own name")
