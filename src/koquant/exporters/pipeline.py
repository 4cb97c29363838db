"""``koquant.export(model_dir, recipe, out)``: checkpoint in, validated artifact out."""

from __future__ import annotations

import platform
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..artifact import (MANIFEST_SCHEMA, Artifact, ArtifactFile, Manifest, check_output_location, inventory,
                       staged_output, write_manifest)
from ..quant_recipes.calibration import TextSet, check_disjoint, korean_constitution, load_text_set
from ..source.checkpoint import Checkpoint
from ..errors import RecipeError, ValidationError
from . import get_exporter
from ..artifact.modelcard import write_model_card
from ..quant_recipes.recipe import Recipe
from .reference import Reference


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


def export(model_dir, recipe: Recipe, out, *, allow_pickle: bool = False, force: bool = False,
           progress=None, base_model: str | None = None) -> Artifact:
    """Export ``model_dir`` as ``recipe`` says into the folder ``out``; validated or nothing."""
    out = Path(out)
    ckpt = Checkpoint.open(model_dir, allow_pickle=allow_pickle)
    exporter = get_exporter(recipe.fmt)
    refusal = ckpt.architecture.refusal(recipe.fmt)
    if refusal:
        raise RecipeError(refusal, hint="choose --fmt " + " or ".join(ckpt.architecture.backends))
    exporter.check_recipe(recipe)
    exporter.check_source(ckpt)
    heldout = korean_constitution()
    calibration = None
    if exporter.needs_calibration(recipe):
        calibration = load_text_set(recipe.calib)
        check_disjoint(calibration, heldout)
        if recipe.calib_chat:
            check_calibration_template(ckpt, calibration)
    check_output_location(out, force)

    with staged_output(out, force) as tmp:
        work = tmp / ".work"
        source_dir = ckpt.stage(work / "source")
        ctx = ExportContext(ckpt, recipe, Reference(ckpt, source_dir, recipe, heldout), source_dir, tmp, work,
                            calibration, progress)
        files = exporter.export(ctx)
        shutil.rmtree(work)
        manifest = build_manifest(ctx, files, base_model, exporter.tool_packages)
        failed = [f for f in files if not f.validation.get("passed")]
        if failed:
            raise validation_failure(failed)
        exporter.finalize(ctx, manifest)
        write_model_card(tmp, manifest, library=exporter.format.library, usage=exporter.usage(manifest))
        manifest.inventory = inventory(tmp, {f.path: f.sha256 for f in files if f.sha256})  # every other file's size and sha256, for `koquant verify`
        write_manifest(tmp, manifest)
    return Artifact(out, manifest)


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
