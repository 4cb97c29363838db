"""Every registered architecture, generated from the registry: a miniature, exports, prompts, bench, plan.

The format-specific tests (test_gguf_export.py, test_onnx_export.py, test_gptq_export.py,
test_runtime_parity.py, test_memory_bound.py) run once per miniature of every architecture the
format supports (conftest.py's ``family`` parametrization). This module checks what ties the
registry together: each exportable architecture has a miniature, each cell a backend cannot make is
refused before any work with the backend's name and version, the chat prompt's token ids are the
same on the source and on every export, ``koquant bench`` reports every export, ``koquant plan``
covers every format, and the README's table lists exactly what the registry says.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import koquant
from koquant.errors import CheckpointError, RecipeError
from koquant.exporters import export_formats

FORMATS = [f.name for f in export_formats()]
from koquant.source.architectures import ARCHITECTURES, MULTIMODAL, architecture
from koquant.testing.miniatures import FAMILIES, SEED_FAMILIES

from .conftest import families_for

README = Path(__file__).resolve().parents[1] / "README.md"
EXPORTABLE = sorted(a.name for a in ARCHITECTURES.values() if a.backends)
#: one miniature per architecture that is not a seed family's (the seeds have their own tests)
NEW = sorted(name for name in FAMILIES if name not in SEED_FAMILIES)
CONVERSATION = [
    {"role": "system", "content": "당신은 한국어로 정중하게 답하는 비서입니다."},
    {"role": "user", "content": "대한민국 헌법 제1조는 무엇인가요?"},
    {"role": "assistant", "content": "대한민국은 민주공화국이다."},
    {"role": "user", "content": "그 뜻을 한 문장으로 풀어 주세요."},
]


def _family_of(arch_name: str) -> list[str]:
    return [name for name, fam in FAMILIES.items() if architecture(fam.hf_class).name == arch_name]


@pytest.mark.parametrize("arch", EXPORTABLE)
def test_every_exportable_architecture_has_a_miniature(arch):
    assert _family_of(arch), f"{arch} is registered as exportable but koquant.testing has no miniature of it"


def test_every_miniature_is_a_registered_class():
    for name, fam in FAMILIES.items():
        arch = architecture(fam.hf_class)
        assert arch is not None and arch.backends, name
        assert fam.model_type in arch.model_types, name


@pytest.mark.parametrize("arch", sorted(a.name for a in ARCHITECTURES.values() if set(FORMATS) - set(a.backends)))
def test_unsupported_format_refused_before_any_work(arch, miniature, tmp_path):
    fam = _family_of(arch)[0]
    entry = ARCHITECTURES[arch]
    for fmt in sorted(set(FORMATS) - set(entry.backends)):
        out = tmp_path / fmt
        with pytest.raises(RecipeError) as e:
            koquant.export(miniature(fam), koquant.Recipe(fmt, ("int4",)), out)
        message = e.value.message
        assert entry.hf_class in message and fmt in message
        assert re.search(r"\d+\.\d+\.\d+", message), "the refusal names the backend's pinned version"
        assert not out.exists()
        assert all(b in e.value.hint for b in entry.backends)


def test_multimodal_gemma3_refused_with_the_way_to_its_text_model(miniature, tmp_path):
    import json
    import shutil

    src = tmp_path / "gemma3-vl"
    shutil.copytree(miniature("gemma3-ko-mini"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["Gemma3ForConditionalGeneration"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        koquant.export(src, koquant.Recipe("gguf", ("Q8_0",)), tmp_path / "out")
    assert "multimodal" in e.value.message and "Gemma3ForCausalLM" in e.value.message
    assert MULTIMODAL["Gemma3ForConditionalGeneration"][1] == e.value.hint
    assert not (tmp_path / "out").exists()


def _exports_of(family: str, request) -> list:
    fixtures = {"gguf": "gguf_exports", "onnx": "onnx_exports", "gptq": "gptq_exports"}
    arts = []
    for fmt, fixture in fixtures.items():
        if family in families_for(fmt):
            arts.append(request.getfixturevalue(fixture)(family))
    return arts


@pytest.mark.parametrize("mini", NEW)
def test_chat_prompt_ids_identical_on_every_export(mini, miniature, request):
    """`koquant chat` feeds the same token ids on the source and on every file of every export."""
    from transformers import AutoTokenizer

    import jinja2

    tok = AutoTokenizer.from_pretrained(miniature(mini))
    conv = CONVERSATION
    try:
        tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    except jinja2.TemplateError:  # Gemma 2's own template has no system turn
        conv = CONVERSATION[1:]
    want = list(tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"])
    got = {}
    with koquant.load(miniature(mini)) as s:
        got["hf"] = s.encode_chat(conv)
    for art in _exports_of(mini, request):
        for f in art.files:
            with koquant.load(art.path, quant=f["quant"], threads=1) as s:
                got[f"{art.manifest['format']}:{f['quant']}"] = s.encode_chat(conv)
    assert {k for k in got if k != "hf"}, "no export was made"
    assert all(ids == want for ids in got.values()), {k: v for k, v in got.items() if v != want}


#: the least that still measures everything: one 128-token chunk, one short prefill, 8 decode steps
TINY_BENCH = dict(threads=1, ctx=128, chunks=1, prefill=(16,), decode_tokens=8, warmup=0, repeats=1)


@pytest.mark.parametrize("mini", NEW)
def test_bench_reports_every_export(mini, miniature, request):
    import math

    arts = _exports_of(mini, request)
    from koquant.bench import bench

    report = bench(miniature(mini), [a.path for a in arts], **TINY_BENCH)
    want = [f"{a.manifest['format']}:{f['quant']}" for a in arts for f in a.files]
    assert sorted(e["name"] for e in report.exports) == sorted(want)
    for e in report.exports:
        for key in ("kl_mean", "top1", "ppl", "decode_tok_s", "bound_tok_s", "file_bytes"):
            assert isinstance(e[key], (int, float)) and math.isfinite(e[key]), (e["name"], key)
        assert 0 < e["top1"] <= 1


@pytest.mark.parametrize("mini", sorted(FAMILIES))
def test_plan_covers_every_format(mini, miniature):
    from koquant.plan import plan as make_plan

    plan = make_plan(str(miniature(mini)))
    arch = architecture(FAMILIES[mini].hf_class)
    for fmt in FORMATS:
        rows = [e for e in plan.exports if e.format == fmt]
        assert rows, f"plan has no {fmt} row for {mini}"
        assert all(e.available == (fmt in arch.backends) for e in rows), fmt


def _readme_table() -> dict[str, set[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Supported models", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("`") and cells[1].endswith("`"):
            hf_class = cells[1].strip("`")
            table[hf_class] = {c.strip("` ") for c in cells[2].split(",")}
    return table


def test_readme_supported_models_table_is_the_registry():
    table = _readme_table()
    want = {a.hf_class: set(a.backends) for a in ARCHITECTURES.values() if a.backends}
    assert table == want


@pytest.mark.parametrize(("mini", "layer_types"), [
    ("exaone4-mini", ["sliding_attention", "full_attention"]),  # hybrid EXAONE 4 that is not the 64-layer 32B
    ("gemma3-ko-mini", ["full_attention"] + ["sliding_attention"] * 5),  # not Gemma 3's five-to-one order
])
def test_gguf_refuses_layer_types_llama_cpp_would_ignore(mini, layer_types, miniature, tmp_path):
    import json
    import shutil

    src = tmp_path / "src"
    shutil.copytree(miniature(mini), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(sliding_window=128, layer_types=layer_types)
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RecipeError) as e:
        koquant.export(src, koquant.Recipe("gguf", ("Q8_0",)), tmp_path / "out")
    assert "llama.cpp 0.3.36" in e.value.message and "wrong attention masks" in e.value.message
    assert "gptq" in e.value.hint
    assert not (tmp_path / "out").exists()
