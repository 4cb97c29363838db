"""``koquant.export(model_dir, recipe, out)``: checkpoint in, validated artifact out."""

from __future__ import annotations

import platform
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import __version__
from ..artifact import (BUNDLE, MANIFEST_SCHEMA, Artifact, ArtifactFile, Manifest, check_output_location,
                        inventory, staged_output, write_manifest)
from ..quant_recipes.calibration import TextSet, check_disjoint, korean_constitution, load_text_set
from ..source.checkpoint import Checkpoint
from ..errors import RecipeError, ValidationError
from . import get_exporter
from ..artifact.modelcard import write_bundle_card, write_model_card
from ..quant_recipes.recipe import Recipe
from .reference import Reference, SharedCalibration


@dataclass
class ExportContext:
    """What an exporter gets: the checkpoint, the recipe, the reference, folders and progress."""

    ckpt: Checkpoint
    recipe: Recipe
    reference: Reference
    source_dir: Path  # staged copy of the checkpoint with vetted files only
    out: Path  # the (temporary) artifact folder
    work: Path  # scratch space, removed before the artifact is published
    calibration: TextSet | None
    progress: object = None
    shared: SharedCalibration | None = None  # the calibration passes of every format of this export, run once
    # what the exporter records for the manifest (set by export(), read by build_manifest):
    calibration_use: dict = field(default_factory=dict)  # how it used the calibration text (GGUF: its imatrix)
    record: dict | None = None  # the format's own record: the manifest's section named after the format

    @contextmanager
    def task(self, description: str, total: int):
        """A progress bar; yields a function that advances it by one."""
        if self.progress is None:
            yield lambda: None
            return
        tid = self.progress.add_task(description, total=total)
        try:
            yield lambda: self.progress.advance(tid)
        finally:
            self.progress.update(tid, completed=total)

    def step(self, description: str):
        """A single step without a count (shown as a spinner)."""
        return self.task(description, 1) if self.progress is not None else nullcontext()


def tool_versions(extra: tuple[str, ...] = ()) -> dict:
    """Versions of koquant's own stack plus ``extra`` (an exporter's backend packages) where installed."""
    import importlib.metadata as md

    out = {"koquant": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "sentencepiece", "llama-cpp-python", *extra):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


#: recipe fields every format of one multi-format export shares (one calibration pass, one held-out reference)
SHARED_FIELDS = ("calib", "calib_chat", "calib_ctx", "calib_chunks", "eval_ctx", "eval_chunks", "threads", "name", "gate")


def export(model_dir, recipe: Recipe | list[Recipe], out, *, allow_pickle: bool = False, force: bool = False,
           progress=None, base_model: str | None = None) -> Artifact:
    """Export ``model_dir`` as ``recipe`` says into the folder ``out``; validated or nothing.

    ``recipe`` may be a list of recipes of different formats: one checkpoint check, one staged source,
    one calibration text and held-out reference for all, one artifact folder with a subfolder per format
    (each a complete artifact of its own) and one manifest and model card covering all (a bundle).
    """
    out = Path(out)
    recipes = [recipe] if isinstance(recipe, Recipe) else list(recipe)
    _check_recipes(recipes)
    ckpt = Checkpoint.open(model_dir, allow_pickle=allow_pickle)
    exporters = []
    for r in recipes:
        exporter = get_exporter(r.fmt)
        refusal = ckpt.architecture.refusal(r.fmt)
        if refusal:
            raise RecipeError(refusal, hint="choose --fmt " + " or ".join(ckpt.architecture.backends))
        exporter.check_recipe(r)
        exporter.check_source(ckpt)
        exporters.append(exporter)
    heldout = korean_constitution()
    calibration = None
    if any(e.needs_calibration(r) for e, r in zip(exporters, recipes)):
        calibration = load_text_set(recipes[0].calib)
        check_disjoint(calibration, heldout)
        if recipes[0].calib_chat:
            check_calibration_template(ckpt, calibration)
    check_output_location(out, force)

    with staged_output(out, force) as tmp:
        work = tmp / ".work"
        source_dir = ckpt.stage(work / "source")
        reference = Reference(ckpt, source_dir, recipes[0], heldout)  # its logits are computed once, for every gate
        passes = {k: v for e, r in zip(exporters, recipes) for k, v in e.calibration_passes(r).items()}
        shared = SharedCalibration(reference, calibration, passes) if passes else None
        parts = []
        for r, exporter in zip(recipes, exporters):
            folder = tmp if len(recipes) == 1 else tmp / r.fmt
            folder.mkdir(exist_ok=True)
            part_work = work if len(recipes) == 1 else work / r.fmt
            ctx = ExportContext(ckpt, r, reference, source_dir, folder, part_work, calibration, progress, shared)
            parts.append(_export_part(ctx, exporter, base_model))
        shutil.rmtree(work)
        if len(parts) == 1:
            return Artifact(out, parts[0])
        manifest = bundle_manifest(parts, [r.fmt for r in recipes])
        write_bundle_card(tmp, parts, [r.fmt for r in recipes])
        manifest.inventory = inventory(tmp, {})
        write_manifest(tmp, manifest)
    return Artifact(out, manifest)


def _check_recipes(recipes: list[Recipe]) -> None:
    if not recipes:
        raise RecipeError("no format to export", hint="give --fmt gguf, onnx or gptq (or several: --fmt gguf,onnx)")
    fmts = [r.fmt for r in recipes]
    twice = sorted({f for f in fmts if fmts.count(f) > 1})
    if twice:
        raise RecipeError(f"{', '.join(twice)} is asked for more than once",
                          hint="give each format once, with all its quants: --quant gguf=Q4_K_M,Q8_0")
    for key in SHARED_FIELDS:
        values = {repr(getattr(r, key)) for r in recipes}
        if len(values) > 1:
            raise RecipeError(f"the formats of one export share {key}, but the recipes give {', '.join(sorted(values))}",
                              hint="export them separately, or give the same value")


def _export_part(ctx: ExportContext, exporter, base_model: str | None) -> Manifest:
    """One format into ``ctx.out``: files, gate, manifest, card, inventory."""
    ctx.work.mkdir(parents=True, exist_ok=True)
    files = exporter.export(ctx)
    manifest = build_manifest(ctx, files, base_model, exporter.tool_packages)
    failed = [f for f in files if not f.validation.get("passed")]
    if failed:
        raise validation_failure(failed)
    exporter.finalize(ctx, manifest)
    write_model_card(ctx.out, manifest, library=exporter.format.library, usage=exporter.usage(manifest))
    # every other file's size and sha256, for `koquant verify`
    scratch = (ctx.work.relative_to(ctx.out).parts[0],) if ctx.out in ctx.work.parents else ()
    manifest.inventory = inventory(ctx.out, {f.path: f.sha256 for f in files if f.sha256}, skip=scratch)
    write_manifest(ctx.out, manifest)
    return manifest


def bundle_manifest(parts: list[Manifest], folders: list[str]) -> Manifest:
    """The top manifest of a multi-format export: every part's files under its folder, its sections by format."""
    first = parts[0]
    files = []
    for folder, m in zip(folders, parts):
        files += [replace(f, path=f"{folder}/{f.path}", extra={"format": m.format, **f.extra}, _keys=None)
                  for f in m.files]
    calibration = None
    used = [(folder, m.calibration) for folder, m in zip(folders, parts) if m.calibration]
    if used:  # one text for all; how each format used it (the GGUF's imatrix file, ...) under its folder
        shared = {k: v for k, v in used[0][1].items() if k in ("name", "sha256", "documents", "chat_rendered",
                                                                "chunks", "chunk_size", "tokens", "chunks_sha256",
                                                                "one_pass")
                  and all(cal.get(k) == v for _, cal in used)}
        calibration = {**shared, "parts": {folder: {k: v for k, v in cal.items() if k not in shared}
                                           for folder, cal in used}}
    return Manifest(
        schema=MANIFEST_SCHEMA, format=BUNDLE, name=first.name, source=first.source,
        recipe={"formats": {folder: m.recipe for folder, m in zip(folders, parts)}},
        calibration=calibration, evaluation=first.evaluation, chat_template=first.chat_template,
        tokenizer={**(first.tokenizer or {}), "folder": None}, generation_config=first.generation_config,
        tools={k: v for m in parts for k, v in (m.tools or {}).items()}, files=files,
        notes=sorted({n for m in parts for n in m.notes}),
        parts={folder: m.format for folder, m in zip(folders, parts)},
    )


def validation_failure(failed: list[ArtifactFile]) -> ValidationError:
    """One error for every refused file: each failure on its own line with its own hint."""
    lines, hints = ["validation failed; nothing was written:"], []
    for f in failed:
        v = f.validation
        for msg, hint in zip(v["failures"], v.get("hints") or [None] * len(v["failures"])):
            lines.append(f"  {f.path}: {msg}")
            if hint and hint not in hints:
                hints.append(hint)
    return ValidationError("\n".join(lines), hint="\n  hint: ".join(hints) or None)


def check_calibration_template(ckpt: Checkpoint, calibration: TextSet) -> None:
    """Render the first calibration conversation before any work: a template that is broken or
    hostile stops the export now, with the sandbox's message, instead of after the conversion."""
    from ..errors import CalibrationError

    if not ckpt.chat_template:
        raise CalibrationError("--calib-chat needs a chat template, and the model has none",
                               hint="drop --calib-chat or add chat_template.jinja to the model folder")
    tok_cfg = ckpt.tokenizer_config
    first = TextSet(calibration.name, calibration.documents[:1])
    first.chat_text(ckpt.chat_template, _token_text(tok_cfg.get("bos_token")), _token_text(tok_cfg.get("eos_token")))


def _token_text(token) -> str | None:
    if isinstance(token, dict):  # {"content": "<s>", ...} in older tokenizer configs
        token = token.get("content")
    return token if isinstance(token, str) else None


def build_manifest(ctx: ExportContext, files: list[ArtifactFile], base_model: str | None,
                   tool_packages: tuple[str, ...] = ()) -> Manifest:
    ckpt, ref = ctx.ckpt, ctx.reference
    tok = ref.tokenizer
    calib = None
    if ctx.calibration is not None:
        calib = {"name": ctx.calibration.name, "sha256": ctx.calibration.sha256,
                 "documents": len(ctx.calibration.documents), "chat_rendered": ctx.recipe.calib_chat,
                 **ctx.calibration_use}
    return Manifest(
        schema=MANIFEST_SCHEMA,
        format=ctx.recipe.fmt,
        name=ctx.recipe.name or ckpt.name,
        source={
            "name": ckpt.name,
            "base_model": base_model or (ckpt.hub.repo_id if ckpt.hub else None) or ckpt.config.get("_name_or_path")
            or ckpt.name,
            **({"hub": ckpt.hub.to_dict()} if ckpt.hub is not None else {}),
            "architecture": ckpt.architecture.hf_class,
            "dtype": ckpt.source_dtype,
            "files": ckpt.file_hashes(),
        },
        recipe=ctx.recipe.to_dict(),
        calibration=calib,
        evaluation={"text": ref.heldout.name, "sha256": ref.heldout.sha256, "chunks": len(ref.eval_chunks.ids),
                       "chunk_size": ref.eval_chunks.n_ctx, "heldout_tokens": len(ref.heldout_ids)},
        chat_template={"sha256": ckpt.chat_template_sha256, "template": ckpt.chat_template},
        tokenizer={"bos_token": tok.bos_token, "eos_token": tok.eos_token, "adds_bos": ref.bos_id is not None,
                      "folder": "tokenizer" if (ctx.out / "tokenizer").is_dir() else None},
        generation_config=ckpt.generation_config,
        tools=tool_versions(tool_packages),
        files=list(files),
        notes=[ckpt.architecture.manifest_note] if ckpt.architecture.manifest_note else [],
        **({ctx.recipe.fmt: ctx.record} if ctx.record is not None else {}),
    )
