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
from ..gate import HINTS, compare_logits, judge, token_mismatch
from . import llamacpp
from .imatrix import ImatrixPass

IMATRIX_FILE = "imatrix.gguf"  # the importance matrix, saved beside the files quantized with it
IMATRIX_PASS = "imatrix"  # its calibration pass (reference.SharedCalibration)
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

    def calibration_passes(self, recipe) -> dict:
        return {IMATRIX_PASS: ("importance matrix (gguf)", ImatrixPass)} if self.needs_calibration(recipe) else {}

    def export(self, ctx) -> list[ArtifactFile]:
        ckpt, recipe, ref = ctx.ckpt, ctx.recipe, ctx.reference
        name = recipe.name or ckpt.name
        outtype, base_quant = _BASE_OUTTYPE.get(ckpt.source_dtype, ("f32", "F32"))
        base = ctx.work / f"{name}-{base_quant}.gguf"
        with ctx.step("converting with llama.cpp's convert_hf_to_gguf.py"):
            llamacpp.convert_hf_to_gguf(ctx.source_dir, base, outtype)

        imatrix = None
        if self.needs_calibration(recipe):
            imatrix = ctx.shared.get(IMATRIX_PASS, ctx)
            llamacpp.write_imatrix_gguf(ctx.out / IMATRIX_FILE, imatrix, ctx.calibration.name, ctx.shared.chunks.n_ctx)
            ctx.calibration_use = {"file": IMATRIX_FILE, "imatrix_sha256": sha256_file(ctx.out / IMATRIX_FILE),
                                   **ctx.shared.use(), "tensors": len(imatrix.names())}

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

        # the user gate's yardsticks: the lossless base file (a converter fault shows there first) and, for each
        # file quantized with the importance matrix, llama.cpp's plain file of the same type
        plain_quants = [af.quant for af in files if recipe.gate == "user" and imatrix is not None
                        and FILE_TYPES[af.quant].quantized and not FILE_TYPES[af.quant].needs_imatrix]
        with ctx.task("validating against the source", len(files) + len(plain_quants) + 1) as advance:
            ref_logits = ref.logits
            measured = {}
            for af in files:  # the requested files first: a crash is reported on the file the user asked for
                measured[af.quant] = self.measure(ctx.out / af.path, ctx, ref_logits)
                advance()
            base_verdict = None
            if recipe.gate == "user" or base_quant in recipe.quants:
                base_measured = measured.get(base_quant) or self.measure(base, ctx, ref_logits)
                base_verdict = self.judge_measured(base_quant, base_measured, ctx, gate="user")
            advance()
            plain = {}
            for quant in plain_quants:
                plain_path = ctx.work / f"plain-{quant}.gguf"
                with procs.step("llama.cpp", f"quantizing the plain {quant} (no importance matrix)"):
                    llamacpp.quantize(base, plain_path, quant, imatrix=None, nthread=recipe.threads)
                plain[quant] = _plain_record(quant, self.measure(plain_path, ctx, ref_logits)["metrics"],
                                             "no importance matrix")
                plain_path.unlink()
                advance()
            for af in files:
                yardstick = plain.get(af.quant)
                if imatrix is None and FILE_TYPES[af.quant].quantized:  # this file is llama.cpp's plain one
                    yardstick = _plain_record(af.quant, measured[af.quant]["metrics"], "this file: no importance matrix")
                af.validation = self.judge_measured(af.quant, measured[af.quant], ctx, (), yardstick)
                if af.validation["passed"] and base_verdict is not None and not base_verdict["passed"]:
                    # a converter fault hides in the plain yardstick too (it is made from the same base)
                    extra = [(f"the lossless {base_quant} conversion it was quantized from differs from the source "
                              f"({'; '.join(base_verdict['failures'])})", base_verdict["hints"][0])]
                    af.validation = self.judge_measured(af.quant, measured[af.quant], ctx, extra, yardstick)
        for af in files:
            af.size = (ctx.out / af.path).stat().st_size
            af.sha256 = sha256_file(ctx.out / af.path)
        return files

    def usage(self, manifest) -> list[str]:
        first = manifest.files[0].path
        return ["```sh", f"koquant chat {first}", f"llama-cli -m {first}  # llama.cpp", "```"]

    def measure(self, path: Path, ctx, ref_logits: list[np.ndarray]) -> dict:
        """Load ``path`` with llama.cpp and compare its held-out logits and token ids with the source's."""
        ref = ctx.reference
        # llama.cpp runs in a child: a crash in its native code is reported, and nothing is published
        job = {"path": str(path), "n_ctx": ctx.recipe.eval_ctx, "threads": ctx.recipe.threads or os.cpu_count() or 1,
               "text": ref.heldout.plain_text(), "chunks": [list(map(int, c)) for c in ref.eval_chunks.ids],
               "out": str(ctx.work)}
        out = procs.run("koquant.exporters.gguf.llamacpp:heldout_logits", job, backend="llama.cpp",
                        step=f"validating {path.name}", work=ctx.work)
        got = [np.load(f) for f in out["logits"]]
        for f in out["logits"]:
            Path(f).unlink()
        return {"metrics": compare_logits(ref_logits, got), "ids": out["ids"],
                "template": llamacpp.gguf_metadata_string(path, "tokenizer.chat_template")}

    def judge_measured(self, quant: str, measured: dict, ctx, extra=(), plain: dict | None = None,
                       gate: str | None = None) -> dict:
        ref, template = ctx.reference, measured["template"]
        failures = list(extra)
        template_ok = ctx.ckpt.chat_template is None or template == ctx.ckpt.chat_template
        if not template_ok:
            failures.append(("the GGUF's chat template differs from the source's", HINTS["template"]))
        same_ids = measured["ids"] == ref.heldout_ids
        mismatch = None if same_ids else token_mismatch(ref.heldout_ids, measured["ids"], ref.tokenizer.decode)
        verdict = judge(quant, measured["metrics"], same_ids, failures, routed=ctx.ckpt.architecture.experts,
                        gate=gate or ctx.recipe.gate, plain=plain, id_mismatch=mismatch)
        verdict["heldout_tokens"] = len(ref.heldout_ids)
        verdict["chat_template_identical"] = template_ok
        return verdict

    def validate(self, path: Path, quant: str, ctx, ref_logits: list[np.ndarray]) -> dict:
        """One file's verdict on its own (no plain file to compare with)."""
        return self.judge_measured(quant, self.measure(path, ctx, ref_logits), ctx)


def _plain_record(quant: str, metrics: dict, how: str) -> dict:
    return {"quant": quant, "tool": f"llama.cpp's plain {quant} ({how})",
            **{k: metrics[k] for k in ("kl_mean", "kl_p99", "top1")}}


def _copy_tokenizer(ctx) -> None:
    """The source's tokenizer, chat template and config (no weights) in ``tokenizer/``.

    koquant's runtime renders prompts and tokenizes with these, so every backend gets the
    source's exact token ids whatever its own tokenizer does.
    """
    dest = ctx.out / "tokenizer"
    dest.mkdir()
    for p in [ctx.ckpt.path / "config.json", *ctx.ckpt.tokenizer_files]:
        shutil.copyfile(p, dest / p.name)
