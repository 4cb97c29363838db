"""GGUF through llama.cpp: one conversion, one Korean calibration, many quant types.

1. ``convert_hf_to_gguf.py`` (vendored with the pinned binding) writes a lossless base GGUF
   in the source's dtype.
2. The Korean calibration chunks run through the source model once, giving the importance
   matrix (``koquant.exporters.gguf.imatrix``), saved as ``imatrix.gguf`` for reuse with llama-quantize.
3. ``llama_model_quantize`` writes each requested type from the base file, imatrix applied.
4. Each file is loaded with llama-cpp-python and gated against the source's logits.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ... import procs
from ...artifact import ArtifactFile
from ...errors import RecipeError
from ...quant_recipes.gguf import FILE_TYPES
from ...source.checkpoint import sha256_file
from .. import Exporter
from ..gate import compare_logits, judge
from . import llamacpp
from .imatrix import compute_imatrix

IMATRIX_FILE = "imatrix.gguf"  # the importance matrix, saved beside the files quantized with it
_BASE_OUTTYPE = {"float32": ("f32", "F32"), "bfloat16": ("bf16", "BF16"), "float16": ("f16", "F16")}


class GGUFExporter(Exporter):

    def check_recipe(self, recipe) -> None:
        llamacpp.import_llama_cpp()  # a missing backend fails before any work, naming the extra
        unknown = [q for q in recipe.quants if q not in FILE_TYPES]
        if unknown:
            raise RecipeError(f"unknown GGUF quant type(s): {', '.join(unknown)}",
                              hint="choose from " + ", ".join(FILE_TYPES))
        need = [q for q in recipe.quants if FILE_TYPES[q].needs_imatrix]
        if need and (not recipe.imatrix or recipe.calib is None):
            raise RecipeError(f"{', '.join(need)} require an importance matrix, but calibration is off",
                              hint="drop --no-imatrix / --no-calib (the built-in Korean set is used by default)")

    def check_source(self, ckpt) -> None:
        """The pinned llama.cpp picks its sliding-window layers from a fixed pattern (the registry's
        ``llama_cpp_sliding``: Gemma 2 alternates, Gemma 3 has five local layers to one global, EXAONE 4
        reads the config's layer_types in its 64-layer 32B only and runs full attention at any other
        depth). A checkpoint whose layer_types say otherwise would run with the wrong masks."""
        cfg, arch = ckpt.config, ckpt.architecture
        types = cfg.get("layer_types")
        if not arch.layer_types or not types or cfg.get("sliding_window") is None:
            return
        want = tuple(t == "sliding_attention" for t in types)
        got = arch.llama_cpp_sliding(len(types), types) or (False,) * len(types)
        if want != got:
            raise RecipeError(
                f"llama.cpp {llamacpp.LLAMA_CPP_PYTHON_VERSION} would run this {arch.hf_class} with the wrong "
                f"attention masks: its layer_types put the sliding window on layers "
                f"{[i for i, s in enumerate(want) if s]}, llama.cpp on layers {[i for i, s in enumerate(got) if s]}",
                hint="export it with --fmt " + " or ".join(b for b in arch.backends if b != "gguf")
                + ", or set every layer to full_attention if that is how the model was trained")

    def needs_calibration(self, recipe) -> bool:
        return recipe.imatrix and recipe.calib is not None and any(FILE_TYPES[q].quantized for q in recipe.quants)

    def export(self, ctx) -> list[ArtifactFile]:
        ckpt, recipe, ref = ctx.ckpt, ctx.recipe, ctx.reference
        name = recipe.name or ckpt.name
        outtype, base_quant = _BASE_OUTTYPE.get(ckpt.source_dtype, ("f32", "F32"))
        base = ctx.work / f"{name}-{base_quant}.gguf"
        with ctx.step("converting with llama.cpp's convert_hf_to_gguf.py"):
            llamacpp.convert_hf_to_gguf(ctx.source_dir, base, outtype)

        imatrix = None
        if self.needs_calibration(recipe):
            chunks = ref.calibration_chunks(ctx.calibration)
            layers = ref.layerwise.n_layers
            with ctx.task(f"calibrating on Korean text ({len(chunks.ids)}×{chunks.n_ctx} tokens)", layers) as advance:
                imatrix = compute_imatrix(ref.layerwise, ckpt.architecture, chunks, on_layer=advance)
            llamacpp.write_imatrix_gguf(ctx.out / IMATRIX_FILE, imatrix, ctx.calibration.name, chunks.n_ctx)
            ctx.calibration_use = {"file": IMATRIX_FILE, "imatrix_sha256": sha256_file(ctx.out / IMATRIX_FILE),
                                   "chunks": len(chunks.ids), "chunk_size": chunks.n_ctx,
                                   "tokens": chunks.n_tokens, "tensors": len(imatrix.names())}

        _copy_tokenizer(ctx)
        files = []
        with ctx.task("quantizing", len(recipe.quants)) as advance:
            for quant in recipe.quants:
                dst = ctx.out / f"{name}-{quant}.gguf"
                af = ArtifactFile(dst.name, quant)
                if quant == base_quant:
                    shutil.copyfile(base, dst)
                else:
                    use = imatrix if FILE_TYPES[quant].quantized else None
                    with procs.step("llama.cpp", f"quantizing to {quant}"):
                        res = llamacpp.quantize(base, dst, quant, imatrix=use, nthread=recipe.threads,
                                                imatrix_file=IMATRIX_FILE,
                                                dataset=ctx.calibration.name if use is not None else None)
                    af.fallbacks = res.fallbacks
                    af.notes.append("Korean importance matrix applied" if use is not None else "no importance matrix")
                af.tensor_types = llamacpp.gguf_tensor_types(dst)
                files.append(af)
                advance()

        with ctx.task("validating against the source", len(files)) as advance:
            ref_logits = ref.logits
            for af in files:
                af.validation = self.validate(ctx.out / af.path, af.quant, ctx, ref_logits)
                advance()
        for af in files:
            af.size = (ctx.out / af.path).stat().st_size
            af.sha256 = sha256_file(ctx.out / af.path)
        return files

    def usage(self, manifest) -> list[str]:
        first = manifest.files[0].path
        return ["```sh", f"koquant chat {first}", f"llama-cli -m {first}  # llama.cpp", "```"]

    def validate(self, path: Path, quant: str, ctx, ref_logits: list[np.ndarray]) -> dict:
        ref = ctx.reference
        failures = []
        template = llamacpp.gguf_metadata_string(path, "tokenizer.chat_template")
        if ctx.ckpt.chat_template is not None and template != ctx.ckpt.chat_template:
            failures.append("the GGUF's chat template differs from the source's")
        # llama.cpp runs in a child: a crash in its native code is reported, and nothing is published
        job = {"path": str(path), "n_ctx": ctx.recipe.eval_ctx, "threads": ctx.recipe.threads or os.cpu_count() or 1,
               "text": ref.heldout.plain_text(), "chunks": [list(map(int, c)) for c in ref.eval_chunks.ids],
               "out": str(ctx.work)}
        out = procs.run("koquant.exporters.gguf.llamacpp:heldout_logits", job, backend="llama.cpp",
                        step=f"validating {path.name}", work=ctx.work)
        same_ids = out["ids"] == ref.heldout_ids
        got = [np.load(f) for f in out["logits"]]
        for f in out["logits"]:
            Path(f).unlink()
        metrics = compare_logits(ref_logits, got)
        verdict = judge(quant, metrics, same_ids, failures, routed=ctx.ckpt.architecture.experts)
        verdict["heldout_tokens"] = len(ref.heldout_ids)
        verdict["chat_template_identical"] = ctx.ckpt.chat_template is None or template == ctx.ckpt.chat_template
        return verdict


def _copy_tokenizer(ctx) -> None:
    """The source's tokenizer, chat template and config (no weights) in ``tokenizer/``.

    koquant's runtime renders prompts and tokenizes with these, so every backend gets the
    source's exact token ids whatever its own tokenizer does.
    """
    dest = ctx.out / "tokenizer"
    dest.mkdir()
    for p in [ctx.ckpt.path / "config.json", *ctx.ckpt.tokenizer_files]:
        shutil.copyfile(p, dest / p.name)
