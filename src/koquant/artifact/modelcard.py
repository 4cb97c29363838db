"""The generated model card (README.md) of an artifact."""

from __future__ import annotations

from pathlib import Path

from .manifest import Manifest

_LIBRARY = {"gguf": "gguf", "gptq": "transformers", "onnx": "onnxruntime-genai"}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_model_card(m: Manifest | dict) -> str:
    if not isinstance(m, Manifest):
        m = Manifest.from_dict(m)
    fmt = m.format
    lines = [
        "---",
        f"base_model: {m.source['base_model']}",
        "quantized_by: koquant",
        f"library_name: {_LIBRARY.get(fmt, fmt)}",
        "language:",
        "- ko",
        "tags:",
        f"- {fmt}",
        "- korean",
        "- koquant",
        "---",
        "",
        f"# {m.name} ({fmt.upper()})",
        "",
        f"Exported by koquant {m.tools['koquant']} from `{m.source['name']}` "
        f"({m.source['architecture']}, {m.source['dtype']}). Every file below was loaded back and compared "
        f"with the source on held-out Korean text ({m.evaluation['text']}, {m.evaluation['chunks']} chunks of "
        f"{m.evaluation['chunk_size']} tokens) before it was published.",
        "",
        "## Validation",
        "",
        "| file | quant | size | top-1 agreement | mean KL | p99 KL | max abs logit diff | token ids identical | passed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in m.files:
        v = f.validation
        lines.append(
            f"| {f.path} | {f.quant} | {_size(f.size)} | {v['top1']:.4f} | {v['kl_mean']:.3g} | "
            f"{v['kl_p99']:.3g} | {v['max_abs_diff']:.3g} | {'yes' if v['token_ids_identical'] else 'NO'} | "
            f"{'yes' if v['passed'] else 'NO'} |"
        )
    fallbacks = [(f.path, fb) for f in m.files for fb in f.fallbacks]
    if fallbacks:
        lines += ["", "## Per-tensor fallbacks", ""]
        lines += [f"- {p}: `{fb['tensor']}` wanted {fb['wanted']}, used {fb['used']} "
                  f"(ncols {fb['ncols']} not divisible by {fb['block']})" for p, fb in fallbacks]
    cal = m.calibration
    lines += ["", "## Recipe", ""]
    r = m.recipe
    lines.append(f"- quant types: {', '.join(r['quants'])}")
    if cal:
        lines.append(f"- calibration: `{cal['name']}` (sha256 {cal['sha256'][:16]}…), "
                     f"{cal.get('chunks', '?')} chunks × {cal.get('chunk_size', '?')} tokens, "
                     + (cal["used_for"] if "used_for" in cal else f"Korean importance matrix in `{cal.get('file', '-')}`"))
    else:
        lines.append("- calibration: none")
    if m.chat_template["sha256"]:
        lines.append(f"- chat template: the source's own, byte-identical (sha256 {m.chat_template['sha256'][:16]}…)")
    lines += ["", "## Use", ""]
    if fmt == "gguf":
        first = m.files[0].path
        lines += ["```sh", f"koquant chat {first}", f"llama-cli -m {first}  # llama.cpp", "```"]
    if fmt == "onnx":
        lines += _onnx_use(m)
    if fmt == "gptq":
        lines += _gptq_use(m)
    lines += ["", "The full record (hashes, tool versions, per-tensor types) is in `koquant.json`.", ""]
    return "\n".join(lines)


def _onnx_use(m: Manifest) -> list[str]:
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


def _gptq_use(m: Manifest) -> list[str]:
    """How to load a GPTQ checkpoint, and what it is."""
    g = m.gptq if m.gptq is not None else {}
    lines = [f"- `{f.path}`: {'; '.join(f.notes)}" for f in m.files if f.notes]
    lines += [
        f"- layout: {g.get('layout', 'GPTQ v1')}, `quantize_config.json` and `quantization_config` in `config.json`; "
        "lm_head and embeddings stay in floating point", "",
        "Loads with transformers (`pip install optimum gptqmodel`), vLLM, TGI and exllama:", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained(".", device_map="cpu")  # or "auto" on a GPU',
        'tokenizer = AutoTokenizer.from_pretrained(".")', "```", "",
        "```sh", "koquant chat .", "vllm serve .", "```",
    ]
    return lines


def write_model_card(folder: Path, manifest: Manifest | dict) -> Path:
    p = folder / "README.md"
    p.write_text(render_model_card(manifest), encoding="utf-8")
    return p
