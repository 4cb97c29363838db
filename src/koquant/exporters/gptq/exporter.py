"""GPTQ through GPTQModel on CPU, calibrated on Korean, in the GPTQ v1 checkpoint layout.

1. The recipe is checked before any work: bits (4 or 8), group size against every decoder
   Linear's input width (a group that does not divide it makes a checkpoint that saves but
   fails when loaded), calibration text present, GPTQModel installed.
2. A child process (``koquant.exporters.gptq.worker``) runs GPTQModel on the staged source with the
   shared Korean calibration chunks (the same token ids the GGUF importance matrix and the
   ONNX int4 GPTQ use), layer by layer, and saves qweight / qzeros / scales / g_idx with
   ``quantize_config.json`` and ``quantization_config`` in ``config.json`` (checkpoint format
   ``gptq``, the v1 zero points every loader reads).
3. The folder gets the source's own tokenizer files and chat template back (GPTQModel's
   tokenizer helper rewrites them), and machine-specific entries leave the config.
4. The gate: a second child loads the folder with ``AutoModelForCausalLM.from_pretrained(...,
   device_map="cpu")``, as users do, and its logits on held-out Korean chunks are compared with
   the source's.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ...artifact import ArtifactFile, Manifest
from ...source.architectures import ARCHITECTURES, Architecture, Dims
from ...source.checkpoint import sha256_file
from ... import procs
from ...errors import ExportError, KoquantError, RecipeError, missing_extra
from ...quant_recipes import gptq as variants
from ...quant_recipes.gptq import parse_quant, quant_name
from .. import Exporter, option_names, recipe_options
from .loading import needs_defuser
from ..gate import HINTS, compare_logits, judge, token_mismatch

GPTQMODEL_PINNED = "7.6.0"
DEFAULT_DAMP = 0.05  # GPTQModel's default: Hessian dampening as a fraction of its mean diagonal
# GPTQModel's `mse`: search each group's scale over shrinking ranges (norm 2.4, as in the GPTQ reference
# code) instead of taking min/max. With act-order it is the best of the grid measured on the trained
# miniature (benchmarks/gptq_vs_rtn.md); the checkpoint layout is unchanged.
DEFAULT_MSE = 2.4
WEIGHTS = "model.safetensors"
# config.json / quantize_config.json entries that depend on the machine or the run, not the recipe
_VOLATILE_META = ("offload_to_disk_path",)


@dataclass(frozen=True)
class GPTQOptions:
    bits: int = variants.DEFAULT.bits
    group_size: int = variants.DEFAULT.group_size
    act_order: bool = True
    sym: bool = True
    damp: float = DEFAULT_DAMP
    mse: float = DEFAULT_MSE

    @classmethod
    def from_recipe(cls, recipe) -> "GPTQOptions":
        params = recipe_options(recipe, cls, "GPTQ")
        if len(recipe.quants) != 1:
            raise RecipeError(f"GPTQ writes one checkpoint per export; got quant types {', '.join(recipe.quants)}",
                              hint="choose the width with --bits and --group-size (one export each)")
        label = parse_quant(recipe.quants[0])
        for key, value in label.items():
            if params.setdefault(key, value) != value:
                raise RecipeError(f"quant {recipe.quants[0]} says {key}={value}, but {key}={params[key]} was given",
                                  hint="give the width either as --quant or as --bits/--group-size")
        opts = cls(**params)
        variants.variant(opts.bits, opts.group_size)  # a width and group size koquant writes
        if not 0 < opts.damp < 1:
            raise RecipeError(f"GPTQ dampening {opts.damp} is outside (0, 1)", hint="the usual value is 0.01-0.1")
        if opts.mse < 0:
            raise RecipeError(f"GPTQ mse norm {opts.mse} is negative", hint="0 turns the scale search off; 2.4 is usual")
        return opts

    @property
    def quant(self) -> str:
        return quant_name(self.bits, self.group_size)


def check_install() -> str:
    """GPTQModel's version, or one clear message naming the extra to install."""
    import importlib.metadata as md

    try:
        version = md.version("gptqmodel")
    except md.PackageNotFoundError:
        version = None
    if version is None or importlib.util.find_spec("gptqmodel") is None:
        raise missing_extra("GPTQ export needs GPTQModel, which is not installed", "gptq")
    if version != GPTQMODEL_PINNED:
        raise missing_extra(f"gptqmodel {version} is installed, but koquant is built against {GPTQMODEL_PINNED}", "gptq")
    if importlib.util.find_spec("optimum") is None:
        raise missing_extra("loading GPTQ checkpoints with transformers needs optimum, which is not installed", "gptq")
    return version


def _layout(arch: Architecture | None) -> Architecture:
    """The registry entry whose layer layout applies (default: the Llama layout every exported family shares)."""
    return arch or ARCHITECTURES["llama"]


def layer_widths(config: dict, arch: Architecture | None = None) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each decoder Linear of ``arch`` GPTQ quantizes (a mixture of experts'
    router stays float), from config.json."""
    dims = Dims.from_config(config)
    if dims.intermediate is None:
        dims = replace(dims, intermediate=4 * dims.hidden)
    layout = _layout(arch)
    return {name: w for name, w in layout.linear_widths(dims).items() if not layout.linear(name).router}


def quantized_modules(config: dict, arch: Architecture | None = None) -> list[str]:
    """The submodules (inside a decoder layer) GPTQ quantizes: every Linear, one per expert, but a router."""
    n_experts = Dims.from_config(config).experts
    return [n for lin in _layout(arch).linears if not lin.router for n in lin.hf_names(n_experts)]


def check_shapes(config: dict, opts: GPTQOptions, arch: Architecture | None = None) -> None:
    """Refuse a recipe whose checkpoint would save but fail to load, naming the layer and what would work."""
    widths = layer_widths(config, arch)
    layers = _layout(arch).layers
    pack = 32 // opts.bits  # values per int32 in qweight (along in_features) and qzeros (along out_features)
    if opts.group_size > 0:
        bad = {name: i for name, (i, _) in widths.items() if i % opts.group_size}
        if bad:
            ok = [g for g in variants.GROUP_SIZES if g < 0 or all(i % g == 0 for i, _ in widths.values())]
            names = ", ".join(f"{layers}.*.{n} (in_features {i})" for n, i in bad.items())
            raise RecipeError(
                f"group size {opts.group_size} does not divide the input width of {names}; GPTQModel would save "
                "such a checkpoint, but its kernels and vLLM/exllama fail to load it",
                hint="group sizes that work for this model: " + ", ".join(map(str, ok)))
    bad = {name: (i, o) for name, (i, o) in widths.items() if i % pack or o % pack}
    if bad:
        names = ", ".join(f"{layers}.*.{n} ({i}x{o})" for n, (i, o) in bad.items())
        raise RecipeError(f"{opts.bits}-bit GPTQ packs {pack} values per int32, which does not divide {names}",
                          hint="use --fmt gguf or --fmt onnx for this model")


class GPTQExporter(Exporter):
    tool_packages = ("gptqmodel", "optimum", "defuser")
    options = option_names(GPTQOptions)

    def check_recipe(self, recipe) -> None:
        GPTQOptions.from_recipe(recipe)
        if recipe.calib is None:
            raise RecipeError("GPTQ needs calibration text, but calibration is off",
                              hint="drop --no-calib (the default is Korean bills), or pass --calib FILE")
        check_install()

    def needs_calibration(self, recipe) -> bool:
        return True

    # ------------------------------------------------------------------ export
    def export(self, ctx) -> list[ArtifactFile]:
        opts = GPTQOptions.from_recipe(ctx.recipe)
        check_shapes(ctx.ckpt.config, opts, ctx.ckpt.architecture)
        ref = ctx.reference
        chunks = ref.calibration_chunks(ctx.calibration)
        saved = ctx.work / "gptqmodel-out"
        job = {
            **asdict(opts), "source": str(ctx.source_dir.resolve()), "out": str(saved.resolve()), "dtype": "float32",
            "offload_dir": str((ctx.work / "offload").resolve()), "calibration": chunks.ids,
        }
        layers = int(ctx.ckpt.config["num_hidden_layers"])
        with ctx.task(f"GPTQ {opts.quant} on Korean text ({len(chunks.ids)}×{chunks.n_ctx} tokens)", layers) as advance:
            log = _run_worker("quantize", job, ctx.work, progress=advance, threads=ctx.recipe.threads)
        if not (saved / WEIGHTS).is_file():
            raise ExportError("GPTQModel finished without writing model.safetensors:\n" + _tail(log),
                              hint="run with KOQUANT_DEBUG=1 and report GPTQModel's message above")
        modules = _quant_log(saved / "quant_log.csv")
        self._publish(ctx, saved)
        ctx.calibration_use = {"chunks": len(chunks.ids), "chunk_size": chunks.n_ctx, "tokens": chunks.n_tokens,
                               "chunks_sha256": chunks.sha256,
                               "used_for": "GPTQ (layer input Hessians, computed by GPTQModel in its own process)"}
        ctx.record = {**asdict(opts), "quantizer": f"gptqmodel {GPTQMODEL_PINNED}", "checkpoint_format": "gptq",
                    "layout": "GPTQ v1: qweight, qzeros, scales, g_idx (int32-packed, zero points stored - 1)",
                    "modules": modules}
        if needs_defuser(ctx.ckpt.config):  # transformers loads it only with the experts as per-expert Linears
            ctx.record["defused_experts"] = ctx.ckpt.config["model_type"]
        af = ArtifactFile(WEIGHTS, opts.quant)
        af.notes.append(f"{opts.bits}-bit GPTQ, group size {opts.group_size}, "
                        f"{'act-order' if opts.act_order else 'no act-order'}, {'symmetric' if opts.sym else 'asymmetric'}, "
                        f"dampening {opts.damp}, {f'scale search (mse {opts.mse})' if opts.mse else 'min/max scales'}, "
                        f"calibrated on {ctx.calibration.name}")
        with ctx.task("validating against the source", 2 if ctx.recipe.gate == "user" else 1) as advance:
            plain = self.plain_rtn(ctx, opts) if ctx.recipe.gate == "user" else None
            advance()
            af.validation = self.validate(ctx, opts.quant, plain)
            advance()
        from ...source.safetensors import read_safetensors_header

        af.tensor_types = {name: info.dtype for name, info in read_safetensors_header(ctx.out / WEIGHTS).items()}
        af.size = (ctx.out / WEIGHTS).stat().st_size
        af.sha256 = sha256_file(ctx.out / WEIGHTS)
        return [af]

    def _publish(self, ctx, saved: Path) -> None:
        """Move GPTQModel's checkpoint into the artifact with the source's tokenizer files and template."""
        for name in ("config.json", "quantize_config.json"):
            path = saved / name
            data = json.loads(path.read_text(encoding="utf-8"))
            _drop_volatile(data)
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        qc = json.loads((saved / "config.json").read_text(encoding="utf-8")).get("quantization_config") or {}
        if qc.get("checkpoint_format", qc.get("format")) != "gptq":
            raise ExportError(f"GPTQModel wrote checkpoint format {qc.get('checkpoint_format')!r}, not gptq (v1)",
                              hint="report this with the command line")
        for name in ("config.json", "quantize_config.json", WEIGHTS):
            shutil.move(saved / name, ctx.out / name)
        for src in ctx.ckpt.tokenizer_files:  # tokenizer, chat template, generation config: the source's bytes
            shutil.copyfile(src, ctx.out / src.name)

    # ------------------------------------------------------------------ gate
    def usage(self, m: Manifest) -> list[str]:
        """How to load a GPTQ checkpoint, and what it is."""
        g = m.gptq if m.gptq is not None else {}
        lines = [f"- `{f.path}`: {'; '.join(f.notes)}" for f in m.files if f.notes]
        lines += [
            f"- layout: {g.get('layout', 'GPTQ v1')}, `quantize_config.json` and `quantization_config` in `config.json`; "
            "lm_head and embeddings stay in floating point", "",
            "Loads with transformers (`pip install optimum gptqmodel`), vLLM, TGI and exllama:", "",
            "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        ]
        if g.get("defused_experts"):  # transformers 5 fuses the experts, which GPTQ stores one by one
            lines += ["import defuser  # GPTQModel's dependency: build the experts as one Linear each",
                      f'defuser.replace_fused_blocks("{g["defused_experts"]}")']
        lines += [
            'model = AutoModelForCausalLM.from_pretrained(".", device_map="cpu")  # or "auto" on a GPU',
            'tokenizer = AutoTokenizer.from_pretrained(".")', "```", "",
            "```sh", "koquant chat .", "vllm serve .", "```",
        ]
        return lines

    def plain_rtn(self, ctx, opts) -> dict:
        """The user gate's yardstick: round-to-nearest on the same grid (bits, groups, symmetry), no calibration."""
        from .rtn import rtn_transform

        ref = ctx.reference
        fn = rtn_transform(ctx.ckpt.architecture, opts.bits, opts.group_size, opts.sym)
        source = ref.logits  # before the transform: the source's own logits
        with ref.layerwise.transformed(fn) as lw:
            m = compare_logits(source, lw.logits(ref.eval_chunks.ids))
        return {"quant": opts.quant, "tool": f"round-to-nearest on the same grid ({opts.quant}, "
                f"{'symmetric' if opts.sym else 'asymmetric'})", **{k: m[k] for k in ("kl_mean", "kl_p99", "top1")}}

    def validate(self, ctx, quant: str, plain: dict | None = None) -> dict:
        import numpy as np
        from transformers import AutoTokenizer

        ref, ckpt = ctx.reference, ctx.ckpt
        work = ctx.work.resolve()
        job = {"folder": str(ctx.out.resolve()), "ids": ref.eval_chunks.ids, "logits": str(work / "gptq-logits.npy"),
               "info": str(work / "gptq-load.json")}
        _run_worker("logits", job, ctx.work, threads=ctx.recipe.threads)
        got = list(np.load(job["logits"]))
        metrics = compare_logits(ref.logits, got)
        folder_tok = AutoTokenizer.from_pretrained(ctx.out, model_max_length=10**9)
        folder_ids = list(folder_tok(ref.heldout.plain_text())["input_ids"])
        same_ids = folder_ids == ref.heldout_ids
        template_file = ctx.out / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else folder_tok.chat_template
        template_ok = ckpt.chat_template is None or template == ckpt.chat_template
        mismatch = None if same_ids else token_mismatch(ref.heldout_ids, folder_ids, ref.tokenizer.decode)
        failures = [] if template_ok else [("the export's chat template differs from the source's", HINTS["template"])]
        verdict = judge(quant, metrics, same_ids, failures, gate=ctx.recipe.gate, plain=plain, id_mismatch=mismatch)
        load = json.loads(Path(job["info"]).read_text(encoding="utf-8"))
        verdict.update(heldout_tokens=len(ref.heldout_ids), chat_template_identical=template_ok,
                       loaded_with="transformers AutoModelForCausalLM.from_pretrained(device_map='cpu')",
                       kernel=load["linear_class"])
        return verdict

def _drop_volatile(node) -> None:
    if isinstance(node, dict):
        for key in _VOLATILE_META:
            node.pop(key, None)
        for value in node.values():
            _drop_volatile(value)
    elif isinstance(node, list):
        for value in node:
            _drop_volatile(value)


# GPTQModel's loss column for a module quantized without its Hessian: ``fallback(rtn): <mean |Q - W|>``
_FALLBACK = re.compile(r"^fallback\((\w+)\):")


def _quant_log(path: Path) -> dict:
    """GPTQModel's per-module record (layer, module, loss, samples, damp) summed up; the file itself is not kept.

    A module that saw under 0.5% of the calibration tokens (an expert of a mixture of experts the router
    seldom picks) is rounded to nearest instead (GPTQModel's default fallback); its loss is another
    measure, so ``loss_*`` cover the GPTQ modules only and ``fallback`` counts the others by strategy.
    """
    import csv

    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    losses, damps, fallback = [], set(), {}
    for r in rows:
        loss = (r.get("loss") or "").strip()
        m = _FALLBACK.match(loss)
        if m:
            fallback[m.group(1)] = fallback.get(m.group(1), 0) + 1
            continue
        if loss:
            losses.append(float(loss))
        if r.get("damp") not in (None, ""):
            damps.add(float(r["damp"]))
    damps = sorted(damps)
    # GPTQModel's CPU workers append rows in completion order; fsum is exact, so the mean does not depend on it
    return {"count": len(rows), "loss_mean": math.fsum(losses) / len(losses) if losses else None,
            "loss_max": max(losses) if losses else None, "damp_used": damps, "fallback": fallback}


_LAYER = re.compile(rb"Quantizing layer (\d+) of (\d+)")


def _worker_env(work: Path, threads: int) -> dict:
    from ...procs import cache_root

    env = dict(os.environ)
    cores = threads or os.cpu_count() or 2
    env.update({
        # GPTQModel crashes on machines with <= 3 cores unless it has at least two CPU workers
        "GPTQMODEL_CPU_WORKERS": env.get("GPTQMODEL_CPU_WORKERS") or str(max(2, min(cores, 12) // 2)),
        # its packing extension is compiled once, into koquant's cache instead of ~/.cache/gptqmodel
        "GPTQMODEL_TORCH_EXTENSIONS_DIR": env.get("GPTQMODEL_TORCH_EXTENSIONS_DIR")
        or str(cache_root() / "gptqmodel-extensions"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(work), "PYTHONHASHSEED": "0",
    })
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _run_worker(action: str, job: dict, work: Path, *, progress=None, threads: int = 0) -> Path:
    """Run ``koquant.exporters.gptq.worker``'s ``action`` as a ``koquant.procs`` job; its output goes to a log in
    ``work``, layer progress to ``progress``, a crash of its kernels becomes a one-line report."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"gptq-{action}.log"
    log.unlink(missing_ok=True)
    done = [0]

    def on_output(line: bytes) -> None:
        if progress is not None:
            for m in _LAYER.finditer(line):
                while done[0] < int(m.group(1)):
                    progress()
                    done[0] += 1

    step = "quantizing with GPTQ" if action == "quantize" else "loading the GPTQ export back for validation"
    try:
        # cwd: GPTQModel writes its own logs to ./logs, which must not land in the user's folder
        procs.run(f"koquant.exporters.gptq.worker:{action}", job, backend="GPTQModel", step=step, work=work, cwd=work,
                  env=_worker_env(work.resolve(), threads), on_output=on_output, log=log)
    except procs.NativeCrashError:
        raise
    except KoquantError as e:
        raise ExportError(f"GPTQModel failed ({action}): {e.message}\n{_tail(log)}",
                          hint="run with KOQUANT_DEBUG=1, or report GPTQModel's message above") from None
    return log


def _tail(log: Path, lines: int = 8) -> str:
    text = log.read_bytes().decode("utf-8", "replace").replace("\r", "\n")
    keep = [ln for ln in text.splitlines() if ln.strip() and "━" not in ln and "░" not in ln and "█" not in ln]
    return "\n".join(keep[-lines:])
