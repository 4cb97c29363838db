"""``koquant.load(path)``: a :class:`Session` on the right backend for any export.

The format comes from the artifact's ``koquant.json`` when koquant made it, otherwise from
its files, as each entry of the format registry (:mod:`koquant.exporters`) recognises them:
``*.gguf`` (llama.cpp), ``genai_config.json`` (onnxruntime-genai), a ``config.json`` with a GPTQ
``quantization_config`` or a ``quantize_config.json`` (GPTQ), a plain ``config.json``
(transformers). The registry names each format's backend (``runtime/backends/``), imported only
when a model of that format is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..artifact import BUNDLE, MANIFEST, ArtifactFile, Manifest
from ..errors import KoquantError
from ..exporters import Format, file_format, formats

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class LoadError(KoquantError):
    """The path is not something koquant can run, or the choice inside it is ambiguous."""


def available_backends() -> list[str]:
    """The formats koquant has a runtime for, sorted."""
    return sorted(f.name for f in formats())


@dataclass
class Target:
    """What to open: resolved from a path before any backend is imported."""

    format: str
    model: Path  # the folder (hf, onnx, gptq) or the .gguf file
    tokenizer_dir: Path | None  # where the source tokenizer files are; None: the backend's own only
    artifact: Path | None = None  # the koquant artifact folder, when koquant made it
    manifest: Manifest | None = None
    quant: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def chat_template(self) -> str | None:
        tpl = ((self.manifest.chat_template if self.manifest is not None else None) or {}).get("template")
        return tpl if isinstance(tpl, str) else None

    @property
    def generation_config(self) -> dict | None:
        if self.manifest is not None and isinstance(self.manifest.generation_config, dict):
            return self.manifest.generation_config
        for folder in (self.tokenizer_dir, self.model if self.model.is_dir() else None):
            if folder is not None and (folder / "generation_config.json").is_file():
                return _read_json(folder / "generation_config.json")
        return None


def load(path: str | os.PathLike, *, quant: str | None = None, chat_template: str | None = None, **options):
    """A :class:`~koquant.runtime.session.Session` for ``path``.

    ``path``: a koquant artifact folder, one file in it (``.gguf``), or a model koquant did not
    make (an HF folder, a ``.gguf``, an onnxruntime-genai folder). ``quant`` picks one file of an
    artifact holding several (``quant="Q4_K_M"``). ``chat_template`` replaces the model's own.
    ``options``: ``threads``, ``n_ctx`` (all backends), ``dtype`` (transformers: ``float32`` or
    ``bfloat16``), ``device`` (transformers: ``cpu``, ``cuda`` or ``auto``), ``n_batch`` (llama.cpp).
    """
    from .session import Session
    from .tokenizer import HFTokenizer

    target = resolve(path, quant)
    cls = backend_class(target.format, target.model)
    unknown = sorted(k for k in options if k not in cls.options)
    if unknown:
        raise LoadError(f"option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not supported by the "
                        f"{cls.name} backend", hint="it accepts " + ", ".join(cls.options))
    backend = cls(target, **{k: v for k, v in options.items() if v is not None})
    try:
        notes = list(target.notes)
        if target.tokenizer_dir is not None:
            tokenizer = HFTokenizer(target.tokenizer_dir)
        else:
            tokenizer = backend.text_tokenizer()
            notes.append(f"no source tokenizer files next to {target.model.name}: prompts are tokenized by "
                         f"{tokenizer.source}, and parity with the source model is not guaranteed")
        template = chat_template or target.chat_template or tokenizer.chat_template or backend.embedded_chat_template()
        if chat_template is not None:
            notes.append("chat template given by the caller")
        return Session(backend, tokenizer, path=target.model, chat_template=template,
                       generation_config=target.generation_config, quant=target.quant,
                       manifest=target.manifest.to_dict() if target.manifest is not None else None,
                       notes=notes)
    except BaseException:
        backend.close()
        raise


def backend_class(fmt: str, where: Path | None = None) -> type:
    """The runtime backend class of format ``fmt`` (its module imported now)."""
    entry = next((f for f in formats() if f.name == fmt), None)
    if entry is None:
        what = f"{where} is a {fmt} model, but" if where else f"format {fmt!r}:"
        raise LoadError(f"{what} this koquant has no runtime for it",
                        hint="runtimes available: " + ", ".join(f.title for f in formats()))
    return entry.backend_class()


@dataclass(frozen=True)
class Variant:
    """One model a folder offers: ``load(path, quant=quant)`` opens it; ``label`` names it (``Q4_K_M``,
    ``onnx-int4``, ``gptq-w4g128``, ``hf``) and ``name`` is ``model:label``, as ``koquant serve`` lists it."""

    model: str
    label: str
    format: str
    path: Path
    quant: str | None = None

    @property
    def name(self) -> str:
        return f"{self.model}:{self.label}"


def variants(path: str | os.PathLike) -> list[Variant]:
    """Every model ``path`` offers, in the order ``koquant.load`` would list them (nothing is loaded):
    each file of a GGUF artifact, each precision of an ONNX or GPTQ one, each artifact of a folder of them."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LoadError(f"{p} does not exist", hint="pass an export folder, a .gguf file or a Hugging Face model folder")
    if p.is_file():
        t = resolve(p)
        return [_variant(t, p, None)]
    manifest = _manifest(p)
    if manifest is not None and manifest.format == BUNDLE:
        return [v for sub in (manifest.parts or {}) for v in variants(p / sub)]
    if manifest is not None:
        fmt = _format(str(manifest.format), p / MANIFEST)
        files = [f for f in manifest.files if isinstance(f.path, str)]
        if len(files) <= 1 and not fmt.file_suffix:
            return [_variant(resolve(p), p, None)]
        return [_variant(resolve(p, str(f.quant)), p, str(f.quant)) for f in files]
    fmt = next((f for f in formats() if f.detect(p)), None)
    if fmt is not None and fmt.file_suffix:
        return [_variant(resolve(f), f, None) for f in fmt.model_files(p)]
    if fmt is not None:
        return [_variant(resolve(p), p, None)]
    out: list[Variant] = []
    for d in sorted(d for d in p.iterdir() if d.is_dir()):
        if (d / MANIFEST).is_file() or any(f.detect(d) for f in formats() if f.exporter):
            out += variants(d)
    if not out:
        raise LoadError(f"{p} holds no model koquant can run",
                        hint="expected koquant.json, a .gguf file, genai_config.json or a Hugging Face config.json")
    return out


def _variant(target: Target, path: Path, quant: str | None) -> Variant:
    fmt = _format(target.format, path)
    if target.manifest is not None and target.manifest.name:
        model = str(target.manifest.name)
    else:
        where = target.artifact or target.model
        model = where.name
        if fmt.file_suffix and where.is_file():
            model = where.name[: -len(where.suffix)]
            q = target.quant
            if q and fmt.quant_name(model).endswith(fmt.quant_name(q)):
                model = model[: len(model) - len(q)].rstrip("-_.") or model
    q = target.quant
    if fmt.file_suffix:
        label = fmt.quant_name(q) if q else fmt.name
    else:
        label = f"{fmt.name}-{fmt.quant_name(q)}" if q else fmt.name
    return Variant(model, label, fmt.name, path, quant)


# ---------------------------------------------------------------------------- resolving a path
def resolve(path: str | os.PathLike, quant: str | None = None) -> Target:
    p = Path(path).expanduser()
    if not p.exists():
        raise LoadError(f"{p} does not exist", hint="pass an export folder, a .gguf file or a Hugging Face model folder")
    if p.is_file():
        fmt = file_format(p)
        if fmt is not None:
            return _model_file(fmt, p, quant)
        raise LoadError(f"{p} is not a model koquant can run (expected a .gguf file or a folder)",
                        hint="pass an export folder, a .gguf file or a Hugging Face model folder")
    manifest = _manifest(p)
    if manifest is not None and manifest.format == BUNDLE:
        return _bundle(p, manifest, quant)
    if manifest is not None:
        return _artifact(p, manifest, quant)
    return _plain_folder(p, quant)


def _bundle(folder: Path, manifest: Manifest, quant: str | None) -> Target:
    """A multi-format export: the part that holds ``quant`` (``Q4_K_M``, ``int4``, ``onnx-int4``, ``gptq``)."""
    parts = {sub: _format(str(fmt), folder / MANIFEST) for sub, fmt in (manifest.parts or {}).items()}
    offered = [(sub, fmt, str(f.quant)) for sub, fmt in parts.items() for f in manifest.files
               if f.path.startswith(sub + "/")]
    names = [f"{fmt.name}-{q}" for _, fmt, q in offered]
    if quant is None:
        if len(offered) == 1:
            return resolve(folder / offered[0][0])
        raise LoadError(f"{folder} holds {len(offered)} exports ({', '.join(names)}); choose one",
                        hint=f"koquant.load(path, quant={offered[0][2]!r}) / --quant {names[-1]}")
    want = quant.strip()
    fmt_name, _, q = want.partition("-")
    picked = [(sub, fmt, qq) for sub, fmt, qq in offered
              if fmt.quant_name(qq) == fmt.quant_name(want) or (q and fmt.name == fmt_name.lower()
                                                               and fmt.quant_name(qq) == fmt.quant_name(q))]
    if not picked and want.lower() in parts:  # the format alone, when it holds one variant
        picked = [o for o in offered if o[0] == want.lower()]
    if len(picked) != 1:
        raise LoadError(f"{folder} has {'no' if not picked else 'more than one'} {quant}",
                        hint="it holds " + ", ".join(names) + " (name one as format-quant, e.g. onnx-int4)")
    sub, _, q = picked[0]
    return resolve(folder / sub, q)


def _model_file(fmt: Format, p: Path, quant: str | None) -> Target:
    """One model file (a .gguf): of the artifact beside it when that lists it, else on its own."""
    manifest = _manifest(p.parent)
    entry = None
    if manifest is not None and manifest.format == fmt.name:
        entry = manifest.file(p.name)
    if entry is None:  # a file koquant did not make (or moved out of its artifact)
        if quant is not None and fmt.quant_name(quant) not in fmt.quant_name(p.name):
            raise LoadError(f"quant={quant!r} was asked for, but {p.name} is the file given", hint="drop quant=")
        return Target(fmt.name, p, None, quant=fmt.quant_in_name(p.name))
    if quant is not None and fmt.quant_name(quant) != fmt.quant_name(str(entry.quant or "")):
        raise LoadError(f"quant={quant!r} was asked for, but {p.name} is {entry.quant}", hint="drop quant=")
    return _file_target(fmt, p.parent, manifest, entry)


def _file_target(fmt: Format, folder: Path, manifest: Manifest, entry: ArtifactFile) -> Target:
    path = folder / entry.path
    if not path.is_file():
        raise LoadError(f"{path.name} is listed in {folder / MANIFEST} but missing", hint="re-run the export")
    notes = []
    if entry.size and path.stat().st_size != entry.size:
        notes.append(f"{path.name} is {path.stat().st_size} bytes but the manifest recorded {entry.size}: "
                     "the file was changed after export")
    return Target(fmt.name, path, _tokenizer_dir(folder, manifest), folder, manifest, entry.quant, notes)


def _artifact(folder: Path, manifest: Manifest, quant: str | None) -> Target:
    fmt = _format(str(manifest.format), folder / MANIFEST)
    files = [f for f in manifest.files if isinstance(f.path, str)]
    if fmt.file_suffix:
        return _file_target(fmt, folder, manifest, _choose(folder, files, quant, f"{fmt.title} files"))
    if quant is not None or len(files) > 1:
        entry = _choose(folder, files, quant, "variants")
        sub = folder / entry.path
        if sub.is_file():  # e.g. "int4/model.onnx": the variant is the folder that holds it
            sub = sub.parent
        if sub.is_dir() and sub.resolve() != folder.resolve():
            inner = resolve(sub)
            inner.quant = inner.quant or entry.quant
            return inner
    model = folder
    if not fmt.detect(folder):  # e.g. an ONNX artifact whose one variant sits in its own folder
        subs = sorted(d for d in folder.iterdir() if d.is_dir() and fmt.detect(d))
        if len(subs) == 1:
            model = subs[0]
    quant_name = files[0].quant if len(files) == 1 else None
    return Target(fmt.name, model, _tokenizer_dir(folder, manifest) or _tokenizer_dir(model, None), folder, manifest,
                  quant_name)


def _plain_folder(p: Path, quant: str | None) -> Target:
    """A folder koquant did not make: the first format (in registry order) that recognises it."""
    fmt = next((f for f in formats() if f.detect(p)), None)
    if fmt is not None and fmt.file_suffix:
        entries = [ArtifactFile(f.name, fmt.quant_in_name(f.name) or f.stem) for f in fmt.model_files(p)]
        entry = _choose(p, entries, quant, f"{fmt.title} files")
        return Target(fmt.name, p / entry.path, None, quant=entry.quant)
    if fmt is not None:
        return Target(fmt.name, p, _tokenizer_dir(p, None), quant=quant if fmt.quants else None)
    subs = sorted(d for d in p.iterdir() if d.is_dir() and ((d / MANIFEST).is_file() or any(f.detect(d) for f in formats()
                                                                                            if f.exporter)))
    if subs:
        entries = [ArtifactFile(d.name, d.name) for d in subs]
        return resolve(p / _choose(p, entries, quant, "variants").path)
    raise LoadError(f"{p} holds no model koquant can run",
                    hint="expected koquant.json, a .gguf file, genai_config.json or a Hugging Face config.json")


def _format(name: str, where: Path) -> Format:
    fmt = next((f for f in formats() if f.name == name), None)
    if fmt is None:
        raise LoadError(f"{where} says format {name!r}, which this koquant has no runtime for",
                        hint="runtimes available: " + ", ".join(f.title for f in formats()))
    return fmt


def _choose(folder: Path, entries: list[ArtifactFile], quant: str | None, what: str) -> ArtifactFile:
    names = [str(e.quant) for e in entries]
    if not entries:
        raise LoadError(f"{folder} lists no {what}", hint="re-run the export")
    if quant is None:
        if len(entries) == 1:
            return entries[0]
        raise LoadError(f"{folder} holds {len(entries)} {what} ({', '.join(names)}); choose one",
                        hint=f"koquant.load(path, quant={names[-1]!r}) / koquant chat PATH --quant {names[-1]}, "
                        "or pass that file or folder itself")
    for e in entries:
        if str(e.quant).upper() == quant.upper():
            return e
    raise LoadError(f"{folder} has no {quant}", hint="it holds " + ", ".join(names))


def _tokenizer_dir(folder: Path, manifest: Manifest | None) -> Path | None:
    sub = ((manifest.tokenizer if manifest is not None else None) or {}).get("folder")
    if isinstance(sub, str):
        d = (folder / sub).resolve()
        if folder.resolve() not in (d, *d.parents):
            raise LoadError(f"{folder / MANIFEST} points its tokenizer outside the artifact ({sub!r})",
                            hint="re-run the export")
        if any((d / n).is_file() for n in _TOKENIZER_FILES):
            return d
    if any((folder / n).is_file() for n in _TOKENIZER_FILES):
        return folder
    return None


def _manifest(folder: Path) -> Manifest | None:
    m = folder / MANIFEST
    if not m.is_file():
        return None
    from ..artifact import Artifact

    return Artifact.open(folder).record


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{path} is not valid JSON: {e}", hint="fix or re-download the file") from None
    return data if isinstance(data, dict) else {}
