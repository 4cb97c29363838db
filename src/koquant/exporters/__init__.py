"""How each format is made, and THE format registry: one :class:`Format` per format.

A :class:`Format` says everything the stages need to find a format's parts: its name and title, the
pip extra and modules its backend needs, its quant table (from ``quant_recipes/``), its exporter, its
runtime backend, its ``koquant plan`` sizer, and how to recognise a model of it on disk. The
pipeline, the loader, the bench, the model card, the CLI and plan iterate :func:`formats` instead of
keeping tables of their own.

Each format package declares its own entry (``FORMAT`` in ``exporters/<name>/__init__.py``, a module
that imports nothing heavy); the source format ``hf`` (a Hugging Face folder: loadable and benchable,
not exported) is declared here. Parts that live on higher floors (the runtime backend, the plan
sizer) and the heavy exporter modules are named as ``"module:attribute"`` entry points, imported only
when used, so reading the registry costs nothing and imports no floor above this one. Adding a format
is its package (with its runtime backend and sizer) plus one name in ``_PACKAGES``.

The stages around the exporters live here too: ``pipeline.py`` (``koquant.export``), ``reference.py``
and ``layerwise.py`` (the source), ``gate.py`` (the thresholds).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RecipeError

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import ArtifactFile, Manifest
    from ..quant_recipes.recipe import Recipe

__all__ = ["Format", "Exporter", "formats", "format_of", "export_formats", "available_formats", "get_exporter",
           "load_entry_point", "option_names", "recipe_options", "file_format"]

#: the format packages under ``exporters/``, in the order formats are tried on a folder
_PACKAGES = ("gguf", "gptq", "onnx")


def load_entry_point(ref: str):
    """``"package.module:Name"`` -> the object (the module is imported now)."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Format:
    """One format koquant runs, and (with ``exporter``) makes.

    ``name``: ``--fmt``, the manifest's format, the bench's and plan's ``<name>:<quant>`` prefix.
    ``title``: how messages name it. ``runtime``: what runs it (crash reports, bench tables).
    ``backend``: the runtime backend class (``module:Class``, a ``runtime.session.Backend``).
    ``detect(folder)``: the folder holds a model of this format that koquant did not make; formats are
    tried in registry order, the first that says yes wins. ``extra``: the pip extra that installs its backend; ``packages``:
    the modules its runtime imports, checked before a bench starts. ``library``: the model card's
    ``library_name``. ``exporter``: its :class:`Exporter` (``module:Class``); None for a format koquant
    only runs. ``quants``: its quant table (name -> row, from ``quant_recipes/``), what ``--quant``
    may name; ``default_quants``: what export makes without ``--quant``; ``upper_case``: its quant
    names are upper-case (``Q4_K_M``) rather than lower-case (``int4``). ``sizer``: ``koquant plan``'s
    ``module:function(spec, quant, *, imatrix) -> Export``; ``planned``: the quants plan sizes by default.
    """

    name: str
    title: str
    runtime: str
    backend: str
    detect: Callable[[Path], bool]
    extra: str | None = None
    packages: tuple[str, ...] = ()
    library: str | None = None
    exporter: str | None = None
    quants: Mapping[str, object] = field(default_factory=dict)
    default_quants: tuple[str, ...] = ()
    upper_case: bool = False
    sizer: str | None = None
    planned: tuple[str, ...] = ()
    file_suffix: str | None = None
    model_files: Callable[[Path], list[Path]] | None = None

    def __post_init__(self):
        if self.exporter is not None and not (self.quants and set(self.default_quants) <= set(self.quants)):
            raise ValueError(f"format {self.name}: an exported format needs its quant table and defaults from it")
        if (self.file_suffix is None) != (self.model_files is None):
            raise ValueError(f"format {self.name}: a single-file format needs both file_suffix and model_files")
        unknown = set(self.planned) - set(self.quants)
        if unknown:
            raise ValueError(f"format {self.name}: plan would size {sorted(unknown)}, which export cannot make")

    def quant_name(self, quant: str) -> str:
        """``q4_k_m`` -> ``Q4_K_M`` for GGUF, ``INT4`` -> ``int4`` for ONNX: the table's spelling."""
        q = quant.strip()
        return q.upper() if self.upper_case else q.lower()

    def quant_in_name(self, filename: str) -> str | None:
        """The quant a file name ends with (``model-Q4_K_M.gguf`` -> ``Q4_K_M``), longest match first."""
        stem = filename.rsplit(".", 1)[0] if self.file_suffix else filename
        stem = self.quant_name(stem)
        return next((q for q in sorted(self.quants, key=len, reverse=True) if stem.endswith(self.quant_name(q))), None)

    def backend_class(self) -> type:
        return load_entry_point(self.backend)

    def exporter_class(self) -> type[Exporter]:
        if self.exporter is None:
            raise RecipeError(f"koquant runs {self.title} models but does not make them",
                              hint="export formats: " + ", ".join(f.name for f in export_formats()))
        return load_entry_point(self.exporter)

    def sizer_function(self) -> Callable:
        return load_entry_point(self.sizer)


class Exporter:
    """What every format's exporter implements; :func:`koquant.export` calls exactly these.

    ``tool_packages``: the distributions whose versions the manifest records. ``options``: the
    format-specific recipe options (``Recipe.params`` keys) it accepts.
    """

    format: Format
    tool_packages: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def check_recipe(self, recipe: Recipe) -> None:
        """Refuse a recipe this exporter cannot make (or whose backend is missing), before any work."""
        raise NotImplementedError

    def check_source(self, ckpt) -> None:
        """Refuse a checkpoint the format's pinned backend would run wrongly, before any work (default: none)."""

    def needs_calibration(self, recipe: Recipe) -> bool:
        raise NotImplementedError

    def calibration_passes(self, recipe: Recipe) -> dict:
        """The layer passes over the calibration chunks this export needs (key -> (label, factory of a
        ``layerwise.LayerPass``)); the pipeline runs those of every format of one export in one walk over
        the source (``reference.SharedCalibration``), and ``export`` takes the results with
        ``ctx.shared.get(key, ctx)``. Default: none (a format whose backend calibrates by itself)."""
        return {}

    def export(self, ctx) -> list[ArtifactFile]:
        """Write the files into ``ctx.out``, each validated (its ``validation`` record filled)."""
        raise NotImplementedError

    def finalize(self, ctx, manifest: Manifest) -> None:
        """Per-format files once every file passed (the ONNX exporter gives each quant folder its own manifest)."""

    def usage(self, manifest: Manifest) -> list[str]:
        """The model card's "Use" section: how to run the artifact (Markdown lines)."""
        return [f"```sh\nkoquant chat {manifest.files[0].path}\n```"] if manifest.files else []


# ---------------------------------------------------------------------------- the source format
def _has_config(folder: Path) -> bool:
    """A Hugging Face model folder (tried last: GPTQ and onnxruntime-genai folders have a config.json too)."""
    return (folder / "config.json").is_file()


HF = Format("hf", "Hugging Face folder", "torch", "koquant.runtime.backends.hf:HFBackend", _has_config,
            packages=("torch", "transformers"), library="transformers")


# ---------------------------------------------------------------------------- the registry
@cache
def _registry() -> dict[str, Format]:
    out = {}
    for pkg in _PACKAGES:
        fmt = importlib.import_module(f"{__name__}.{pkg}").FORMAT
        if fmt.name != pkg:
            raise ValueError(f"exporters/{pkg} declares format {fmt.name!r}")
        out[pkg] = fmt
    out[HF.name] = HF
    return out


def formats() -> list[Format]:
    """Every format, in the order they are tried on a folder (the source format last)."""
    return list(_registry().values())


def export_formats() -> list[Format]:
    """The formats koquant makes."""
    return [f for f in formats() if f.exporter is not None]


def available_formats() -> list[str]:
    """The names ``--fmt`` accepts, sorted."""
    return sorted(f.name for f in export_formats())


def file_format(path: Path) -> Format | None:
    """The format whose models are single files with ``path``'s suffix, if any."""
    return next((f for f in formats() if f.file_suffix and path.suffix.lower() == f.file_suffix), None)


def format_of(name: str, *, exported: bool = False) -> Format:
    """The entry for ``name``, or a clear error listing the formats (``exported``: only those koquant makes)."""
    fmt = _registry().get(name)
    if fmt is None or (exported and fmt.exporter is None):
        choices = available_formats() if exported else [f.name for f in formats()]
        raise RecipeError(f"unknown format {name!r}", hint="choose one of: " + ", ".join(choices))
    return fmt


def get_exporter(name: str) -> Exporter:
    """An instance of the exporter for ``name``, or a clear error listing the formats."""
    fmt = format_of(name, exported=True)
    exporter = fmt.exporter_class()()
    exporter.format = fmt
    return exporter


def option_names(options_class) -> tuple[str, ...]:
    """The recipe options of an exporter: its options dataclass's fields."""
    return tuple(f.name for f in fields(options_class))


def recipe_options(recipe: Recipe, options_class, title: str) -> dict:
    """A copy of ``recipe.params``, refused when it names an option ``options_class`` does not have."""
    params = dict(recipe.params or {})
    unknown = sorted(set(params) - set(option_names(options_class)))
    if unknown:
        raise RecipeError(f"unknown {title} option(s): {', '.join(unknown)}",
                          hint=f"{title} options are " + ", ".join(option_names(options_class)))
    return params
