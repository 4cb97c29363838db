"""ONNX through onnxruntime-genai's model builder: one folder per quant, each runnable by onnxruntime-genai.

1. The builder (``koquant.exporters.onnx.builder``, pinned onnxruntime-genai) turns the HF folder into
   ``<quant>/model.onnx`` + ``genai_config.json`` + tokenizer files, for fp32, int8 or int4
   (the precisions of :mod:`koquant.quant_recipes.onnx`).
2. int4 ``gptq`` (the default): the Korean calibration chunks run through the source model
   layer by layer and GPTQ rounds every decoder weight (``koquant.exporters.onnx.int4_gptq``, one pass of the
   export's shared calibration walk); the builder gets the codes as a GPTQ checkpoint
   (``koquant.exporters.onnx.quantized_input``) and makes its MatMulNBits nodes from them, so it never holds
   the model in float32. The gate's yardstick is round-to-nearest on the same grid, built the same way
   (bit-identical to the builder's own int4). ``rtn`` and ``k_quant`` are the builder's own uncalibrated
   quantizers, run on the float checkpoint.
3. Each folder is loaded with onnxruntime-genai and gated against the source: logits on held-out
   Korean chunks (the source tokenizer's ids fed to the runtime), the source tokenizer loaded from
   the folder, the chat template, and a 32-token greedy continuation (identical for fp32).
   How onnxruntime-genai's own tokenizer and template engine differ is recorded, not gated.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ... import procs
from ...artifact import ArtifactFile, Manifest, write_manifest
from ...artifact.modelcard import write_model_card
from ...errors import RecipeError
from ...source.architectures import Architecture
from ...quant_recipes.onnx import PRECISIONS
from ...source.checkpoint import sha256_file
from .. import Exporter, option_names, recipe_options
from ..gate import HINTS, compare_logits, judge, token_mismatch
from . import builder, genai
from . import quantized_input
from .matmulnbits import DATA_FILE, MODEL_FILE, tensor_types
from .parity import greedy_agreement

INT4_ALGOS = ("gptq", "rtn", "k_quant")
DEFAULT_INT4_ALGO = "gptq"  # benchmarks/onnx_int4.md: lower KL than rtn and k_quant on the trained miniature
GREEDY_TOKENS = 32
GREEDY_PROMPT = 64  # held-out tokens the greedy continuation starts from


@dataclass(frozen=True)
class OnnxOptions:
    int4_algo: str = DEFAULT_INT4_ALGO
    block_size: int = 32
    accuracy_level: int = 4
    lm_head: str = "int8"

    @classmethod
    def from_recipe(cls, recipe) -> "OnnxOptions":
        params = recipe_options(recipe, cls, "ONNX")
        algo = params.get("int4_algo")
        if algo is None:  # no calibration asked for: the builder's plain round-to-nearest
            algo = DEFAULT_INT4_ALGO if recipe.calib is not None else "rtn"
        if algo not in INT4_ALGOS:
            raise RecipeError(f"unknown int4 algorithm {algo!r}", hint="choose one of " + ", ".join(INT4_ALGOS))
        if algo == "gptq" and recipe.calib is None and "int4" in recipe.quants:
            raise RecipeError("--int4-algo gptq needs Korean calibration text, but calibration is off",
                              hint="drop --no-calib, or choose --int4-algo rtn")
        block = params.get("block_size", 32)
        if block not in builder.BLOCK_SIZES:
            raise RecipeError(f"block size {block} is not supported by MatMulNBits",
                              hint="choose one of " + ", ".join(map(str, builder.BLOCK_SIZES)))
        level = params.get("accuracy_level", 4)
        if level not in builder.ACCURACY_LEVELS:
            raise RecipeError(f"accuracy level {level} is not available on the CPU execution provider",
                              hint="; ".join(f"{k}: {v}" for k, v in builder.ACCURACY_LEVELS.items()))
        lm_head = params.get("lm_head", "int8")
        if lm_head not in builder.LM_HEAD_OPTIONS:
            raise RecipeError(f"unknown lm_head precision {lm_head!r}",
                              hint="choose one of " + ", ".join(builder.LM_HEAD_OPTIONS))
        return cls(algo, block, level, lm_head)


class _SourceWeights(Mapping):
    """``<layer>.<stem>`` (the builder's name of a layer MatMulNBits) -> the source's float weight of that
    fused stem, concatenated only when asked for (one layer's copy at a time, not a second copy of every
    linear weight of the model)."""

    def __init__(self, layerwise, arch: Architecture):
        self.layerwise = layerwise  # read from the checkpoint's safetensors, one fused stem at a time
        self.linears = arch.onnx.linears
        self.where = {f"{arch.onnx.layer(i)}.{stem}": (arch.layer(i), stem)
                      for i in range(layerwise.n_layers) for stem in self.linears}

    def __getitem__(self, key: str):
        import torch

        prefix, stem = self.where[key]
        return torch.cat([self.layerwise._tensor(f"{prefix}.{n}.weight") for n in self.linears[stem]])

    def __iter__(self):
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)


def _gptq_pass(block: int) -> str:
    """The key of int4 GPTQ's calibration pass (reference.SharedCalibration)."""
    return f"onnx-int4-gptq-b{block}"


class _PlainInt4(Mapping):
    """``<layer>.<stem>`` -> round-to-nearest int4 of the source weight, computed when asked for (the last
    one kept: the GPTQ writer asks once per Linear of a fused stem), not every layer's codes at once."""

    def __init__(self, source: _SourceWeights, block: int):
        self.source, self.block, self._last = source, block, (None, None)

    def __getitem__(self, key: str):
        from .int4_gptq import rtn

        if self._last[0] != key:
            self._last = (key, rtn(self.source[key], self.block))
        return self._last[1]

    def __iter__(self):
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)


class ONNXExporter(Exporter):
    options = option_names(OnnxOptions)
    tool_packages = ("onnxruntime", "onnxruntime-genai", "onnx", "onnx-ir")

    def check_recipe(self, recipe) -> None:
        unknown = [q for q in recipe.quants if q not in PRECISIONS]
        if unknown:
            raise RecipeError(f"unknown ONNX quant type(s): {', '.join(unknown)}",
                              hint="choose from " + ", ".join(PRECISIONS))
        for quant in recipe.quants:
            if not PRECISIONS[quant].exportable:
                raise RecipeError(f"{quant} ONNX export is not supported on CPU: {PRECISIONS[quant].not_on_cpu}",
                                  hint="use fp32 for full precision, or int8/int4 for CPU")
        OnnxOptions.from_recipe(recipe)
        genai.check_install()

    def needs_calibration(self, recipe) -> bool:
        return "int4" in recipe.quants and OnnxOptions.from_recipe(recipe).int4_algo == "gptq"

    def calibration_passes(self, recipe) -> dict:
        if not self.needs_calibration(recipe):
            return {}
        from .int4_gptq import GPTQPass

        block = OnnxOptions.from_recipe(recipe).block_size
        return {_gptq_pass(block): (f"int4 GPTQ, block {block} (onnx)", lambda: GPTQPass(block))}

    # ------------------------------------------------------------------ export
    def export(self, ctx) -> list[ArtifactFile]:
        ckpt, recipe = ctx.ckpt, ctx.recipe
        opts = OnnxOptions.from_recipe(recipe)
        builder.check_architecture(ckpt.architecture.hf_class)
        gptq = "int4" in recipe.quants and opts.int4_algo == "gptq"
        if gptq:
            _check_divisible(ckpt.config, opts.block_size)
            why = quantized_input.unsupported(ckpt.architecture)
            if why:
                raise RecipeError(f"int4 GPTQ cannot be given to the model builder for this model: {why}",
                                  hint="choose --int4-algo rtn")
        source, adapted = builder.stage_input(ctx.source_dir, ctx.work)
        files = []
        with ctx.task("building with onnxruntime-genai's model builder", len(recipe.quants)) as advance:
            for quant in recipe.quants:
                folder = ctx.out / quant
                if quant == "int4" and gptq:  # koquant's GPTQ codes, given to the builder as a GPTQ checkpoint
                    key = _gptq_pass(opts.block_size)
                    self._build_int4(ctx, opts, source, ctx.shared.get(key, ctx), folder,
                                     written=lambda: ctx.shared.release(key))
                    ctx.calibration_use = {**ctx.shared.use(), "used_for": "int4 GPTQ (layer input Hessians)"}
                else:
                    builder.build(source, folder, quant, ctx.work / "builder-cache", block_size=opts.block_size,
                                  accuracy_level=opts.accuracy_level, algo=opts.int4_algo if quant == "int4" else None,
                                  lm_head=opts.lm_head, log=ctx.work / f"builder-{quant}.log")
                af = ArtifactFile(f"{quant}/{MODEL_FILE}", quant)
                af.notes.append(_describe(quant, opts))
                files.append(af)
                advance()
        plain = {}
        if gptq and recipe.gate == "user":  # the user gate's yardstick: round-to-nearest on the same grid
            with ctx.step("measuring plain int4 (round-to-nearest, the builder's own grid and rounding)"):
                folder = ctx.work / "plain-int4"
                plain_codes = _PlainInt4(_SourceWeights(ctx.reference.layerwise, ckpt.architecture), opts.block_size)
                self._build_int4(ctx, opts, source, plain_codes, folder)
                m = self._measure(ctx, folder, "int4")["metrics"]
                shutil.rmtree(folder)
            plain["int4"] = {"quant": "int4", "tool": f"the model builder's plain int4 (round-to-nearest, "
                             f"block {opts.block_size})", **{k: m[k] for k in ("kl_mean", "kl_p99", "top1")}}
        parity = self._runtime_parity(ctx, ctx.out / recipe.quants[0])
        with ctx.task("validating against the source", len(files)) as advance:
            for af in files:
                # int8, and int4 by rtn / k_quant, are the builder's own files: their own yardstick
                own = af.quant == "int8" or (af.quant == "int4" and not gptq)
                af.validation = self.validate(ctx, ctx.out / af.quant, af.quant, plain.get(af.quant), own=own)
                advance()
        for af in files:
            folder = ctx.out / af.quant
            af.tensor_types = tensor_types(folder / MODEL_FILE)
            af.size = sum((folder / n).stat().st_size for n in (MODEL_FILE, DATA_FILE) if (folder / n).is_file())
            af.sha256 = sha256_file(folder / MODEL_FILE)
        ctx.record = {"runtime": "onnxruntime-genai", "execution_provider": "cpu", "options": asdict(opts),
                    "folders": {af.quant: str(Path(af.path).parent) + "/" for af in files}, **parity}
        if adapted:  # what the builder was given in place of the source's config.json
            ctx.record["builder_config"] = adapted
        return files

    def _build_int4(self, ctx, opts: OnnxOptions, staged: Path, weights, folder: Path, written=None) -> None:
        """The builder's int4 model in ``folder`` from its input ``staged`` with ``weights`` as the decoder codes
        (``quantized_input``); ``written()`` once they are on disk (to free them before the builder runs)."""
        source = quantized_input.write(staged, ctx.work / "builder-int4-input", weights,
                                       ctx.ckpt.architecture, opts.block_size)
        del weights
        if written is not None:
            written()
        try:
            builder.build(source, folder, "int4", ctx.work / "builder-cache", block_size=opts.block_size,
                          accuracy_level=opts.accuracy_level, algo="rtn", lm_head=opts.lm_head,
                          log=ctx.work / f"builder-{folder.name}.log")
        finally:
            shutil.rmtree(source, ignore_errors=True)

    def _runtime_parity(self, ctx, folder: Path) -> dict:
        """onnxruntime-genai's own tokenizer and template engine against the source's (recorded, not gated)."""
        ref, ckpt = ctx.reference, ctx.ckpt
        parity = {"text": ref.heldout.plain_text(), "source_ids": ref.heldout_ids, "bos_id": ref.bos_id,
                  "template": ckpt.chat_template, "bos_token": ref.tokenizer.bos_token,
                  "eos_token": ref.tokenizer.eos_token}
        return _run_genai(ctx, folder, {"parity": parity}, "comparing its tokenizer with the source's")["parity"]

    # ------------------------------------------------------------------ gate
    def _measure(self, ctx, folder: Path, quant: str) -> dict:
        """The folder's logits on the held-out chunks and its greedy continuation, run by onnxruntime-genai."""
        ref = ctx.reference
        prompt = ref.heldout_ids[:GREEDY_PROMPT]
        job = {"chunks": [list(map(int, c)) for c in ref.eval_chunks.ids], "prompt": prompt,
               "new_tokens": GREEDY_TOKENS, "quant": quant, "out": str(ctx.work)}
        run = _run_genai(ctx, folder, job, f"validating {quant}")
        got = [np.load(f) for f in run["logits"]]
        for f in run["logits"]:
            Path(f).unlink()
        return {"metrics": compare_logits(ref.logits, got), "greedy": run["greedy"], "prompt": prompt}

    def validate(self, ctx, folder: Path, quant: str, plain: dict | None = None, own: bool = False) -> dict:
        """``plain``: the builder's own file of this type, measured; ``own``: this file is the builder's own."""
        from transformers import AutoTokenizer

        ref, ckpt = ctx.reference, ctx.ckpt
        failures = []
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
        template_ok = ckpt.chat_template is None or template == ckpt.chat_template
        if not template_ok:
            failures.append(("the export's chat_template.jinja differs from the source's chat template",
                             HINTS["template"]))
        # koquant's runtime tokenizes with the folder's tokenizer through transformers: it must give the source ids
        folder_tok = AutoTokenizer.from_pretrained(folder, model_max_length=10**9)  # no "longer than" warning
        folder_ids = list(folder_tok(ref.heldout.plain_text())["input_ids"])
        same_ids = folder_ids == ref.heldout_ids
        measured = self._measure(ctx, folder, quant)
        runtime, prompt, metrics = measured["greedy"], measured["prompt"], measured["metrics"]
        # the source's greedy choice after every prefix of the runtime's continuation, in one layerwise pass
        # (teacher forcing): equal to running the source greedily, without the whole model in memory
        agree = greedy_agreement(ref.layerwise, prompt, runtime)
        greedy = {"prompt_tokens": len(prompt), "new_tokens": len(runtime), "identical": agree == len(runtime),
                  "identical_prefix": agree}
        if quant == "fp32" and not greedy["identical"]:
            failures.append((f"greedy continuation differs from the source after {greedy['identical_prefix']} tokens",
                             HINTS["lossless"]))
        if own:
            plain = {"quant": quant, "tool": f"the model builder's plain {quant} (this file)",
                     **{k: metrics[k] for k in ("kl_mean", "kl_p99", "top1")}}
        mismatch = None if same_ids else token_mismatch(ref.heldout_ids, folder_ids, ref.tokenizer.decode)
        verdict = judge(quant, metrics, same_ids, failures, gate=ctx.recipe.gate, plain=plain, id_mismatch=mismatch)
        verdict.update(heldout_tokens=len(ref.heldout_ids), chat_template_identical=template_ok, greedy=greedy,
                       ids_fed="source tokenizer")
        return verdict

    def usage(self, m: Manifest) -> list[str]:
        """How to run an ONNX folder with onnxruntime-genai, and what its own tokenizer/template engine get wrong."""
        onnx = m.onnx if m.onnx is not None else {}
        folder = next(iter(onnx.get("folders", {}).values()), "./")
        lines = [f"- `{f.path}`: {'; '.join(f.notes)}" for f in m.files if f.notes]
        lines += ["", "Each quant folder runs with onnxruntime-genai (`pip install onnxruntime-genai`):", "", "```python",
                 "import onnxruntime_genai as og", f'model = og.Model("{folder}")',
                 "params = og.GeneratorParams(model)", "params.set_search_options(max_length=256)",
                 "gen = og.Generator(model, params)", "gen.append_tokens(ids)  # token ids, see below",
                 "while not gen.is_done():", "    gen.generate_next_token()", "```", ""]
        tok, tpl = onnx.get("tokenizer", {}), onnx.get("chat_template", {})
        if tok.get("runtime_ids_identical"):
            bos = " once BOS is prepended (it adds none itself)" if tok.get("prepend_bos") else ""
            lines.append(f"onnxruntime-genai's own tokenizer gives the source token ids on the held-out text{bos}.")
        elif tok:
            d = tok.get("first_difference", {})
            lines.append("onnxruntime-genai's own tokenizer does **not** reproduce the source token ids "
                         f"({tok.get('runtime_tokens')} vs {tok.get('source_tokens')} tokens on the held-out text, first "
                         f"difference at token {d.get('position')}): tokenize with `tokenizer.json` through transformers "
                         "and pass the ids, as `koquant chat` does.")
        if tpl.get("runtime_renders_identical") is False:
            why = tpl.get("error") or "its rendering differs"
            lines.append(f"Its chat-template engine (minja) does not render this template like jinja2 ({why}); "
                         "render prompts with `chat_template.jinja` through jinja2.")
        return lines

    # ------------------------------------------------------------------ per-quant records
    def finalize(self, ctx, manifest: Manifest) -> None:
        """Give every quant folder its own manifest and card (the ONNX record is ``ctx.record``, set by export)."""
        for f in manifest.files:
            folder = Path(f.path).parent
            sub = copy.deepcopy(manifest)
            sub.files = [replace(f, path=Path(f.path).name)]
            sub.onnx["folders"] = {f.quant: "./"}
            sub.part_of = "../koquant.json"
            sub.folder_files = {p.name: sha256_file(p) for p in sorted((ctx.out / folder).iterdir()) if p.is_file()}
            write_manifest(ctx.out / folder, sub)
            write_model_card(ctx.out / folder, sub, library=self.format.library, usage=self.usage(sub))


def _run_genai(ctx, folder: Path, job: dict, step: str) -> dict:
    """onnxruntime-genai in a child process (``koquant.procs``): a crash in its kernels is reported, not fatal."""
    return procs.run("koquant.exporters.onnx.genai:gate_job",
                     {"folder": str(folder), "threads": ctx.recipe.threads, **job},
                     backend="onnxruntime-genai", step=f"{step} ({folder.name})", work=ctx.work)


def _describe(quant: str, opts: OnnxOptions) -> str:
    level = f"accuracy level {opts.accuracy_level} ({builder.ACCURACY_LEVELS[opts.accuracy_level]})"
    if quant == "int4":
        how = {"gptq": "GPTQ on Korean calibration text", "rtn": "round-to-nearest (the builder's default quantizer)",
               "k_quant": "k-quant (the builder's k_quant quantizer)"}[opts.int4_algo]
        head = {"int4": "lm_head int4 (the builder's default)", "int8": "lm_head int8 (round-to-nearest)",
                "float": "lm_head in float"}.get(opts.lm_head, f"lm_head {opts.lm_head}")
        return f"int4 MatMulNBits, block {opts.block_size}, {how}, {head}, {level}"
    if quant == "int8":
        return f"int8 MatMulNBits, block {opts.block_size}, round-to-nearest, {level}"
    return f"{quant} weights and activations"


def _check_divisible(config: dict, block: int) -> None:
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    dims = {"hidden_size": hidden, "intermediate_size": config.get("intermediate_size", hidden),
            "num_attention_heads × head_dim": heads * (config.get("head_dim") or hidden // heads)}
    bad = {k: v for k, v in dims.items() if v % block}
    if bad:
        raise RecipeError(f"GPTQ int4 needs every layer's input width divisible by the block size {block}: "
                          + ", ".join(f"{k}={v}" for k, v in bad.items()),
                          hint="choose a smaller --block-size, or --int4-algo rtn (the builder pads)")
