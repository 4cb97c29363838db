"""The quant-type tables (koquant.quant_recipes.gguf / gptq / onnx): pinned to llama.cpp, read by every stage.

The GGUF table restates the pinned llama.cpp, so it is checked against the gguf-py and sources vendored
with it (``GGML_QUANT_SIZES``, ``GGMLQuantizationType``, ``LlamaFileType``; ``llama_ftype_get_default_type``
and ``tensor_requires_imatrix`` in ``src/llama-quant.cpp``; ``llama-quantize``'s names): a llama.cpp bump
that changes a size, an id, a base type or the importance-matrix rule fails here. Then: every type
export makes has explicit thresholds, and plan offers exactly what export makes, under the same names.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from koquant.errors import RecipeError
from koquant.exporters import gate, get_exporter
from koquant.plan import plan, plan_gguf, plan_gptq, plan_onnx, preset_spec, spec_from_config
from koquant.quant_recipes import gguf, gptq, onnx
from koquant.quant_recipes.recipe import Recipe
from koquant.quant_recipes.thresholds import Thresholds

# --------------------------------------------------------------------------- pinned to the vendored llama.cpp


@pytest.fixture(scope="module")
def llama_src() -> Path:
    from koquant.exporters.gguf.llamacpp import llama_cpp_source

    return llama_cpp_source()


@pytest.fixture(scope="module")
def vendored_gguf(llama_src):
    from koquant.exporters.gguf.llamacpp import _vendored_gguf

    mod = _vendored_gguf()
    assert Path(mod.__file__).resolve().is_relative_to((llama_src / "gguf-py").resolve()), mod.__file__
    return mod


def _ftype_member(name: str) -> str:
    return "ALL_F32" if name == "F32" else f"MOSTLY_{name}"


def _function_body(llama_src: Path, signature: str) -> str:
    """The body of one function of the vendored ``src/llama-quant.cpp``."""
    source = (llama_src / "src" / "llama-quant.cpp").read_text()
    start = source.index(signature)
    return source[start:source.index("\n}\n", start)]


def test_tensor_types_match_gguf_py(vendored_gguf):
    """Every ggml type: same id, block size and bytes per block as GGML_QUANT_SIZES; none missing or extra."""
    sizes = vendored_gguf.constants.GGML_QUANT_SIZES
    enum = vendored_gguf.constants.GGMLQuantizationType
    assert {t.name for t in enum} == set(gguf.GGML_TYPES)
    for t in enum:
        row = gguf.GGML_TYPES[t.name]
        assert (row.id, (row.block_size, row.type_size)) == (int(t), sizes[t]), t.name
        assert row.quantized == (row.block_size > 1), t.name


def test_file_types_match_llama_file_type(vendored_gguf):
    """Every row is a LlamaFileType of the same id; every LlamaFileType has a row or a reason it has none."""
    enum = vendored_gguf.constants.LlamaFileType
    for row in gguf.FILE_TYPES.values():
        assert int(enum[_ftype_member(row.name)]) == row.id, row.name
    members = {t.name for t in enum} - {"GUESSED"}
    covered = {_ftype_member(n) for n in gguf.FILE_TYPES} | {_ftype_member(n) for n in gguf.LEFT_OUT}
    assert members == covered
    assert not set(gguf.LEFT_OUT) & set(gguf.FILE_TYPES)


def test_base_types_match_llama_quant(llama_src):
    """``base`` is llama.cpp's ``llama_ftype_get_default_type``."""
    body = _function_body(llama_src, "ggml_type llama_ftype_get_default_type(")
    default, pending = {}, []
    for m in re.finditer(r"case LLAMA_FTYPE_(\w+):|return GGML_TYPE_(\w+);", body):
        if m.group(1):
            pending.append(m.group(1))
        else:
            default.update({p: m.group(2) for p in pending})
            pending = []
    for row in gguf.FILE_TYPES.values():
        assert default[_ftype_member(row.name)] == row.base, row.name


def test_imatrix_rule_matches_llama_quant(llama_src):
    """The tensor types that need an importance matrix are the ones ``tensor_requires_imatrix`` names."""
    body = _function_body(llama_src, "static bool tensor_requires_imatrix(")
    always, pending = set(), []
    for m in re.finditer(r"case GGML_TYPE_(\w+):|return ([^;]+);", body):
        if m.group(1):
            pending.append(m.group(1))
            continue
        if m.group(2).strip() == "true":
            always |= set(pending)
        pending = []
    assert always == {n for n, t in gguf.GGML_TYPES.items() if t.needs_imatrix}
    # the exceptions tensor_needs_imatrix restates: Q2_K in a Q2_K_S file only; never the embedding or output
    assert re.search(r"case GGML_TYPE_Q2_K:.*?return ftype == LLAMA_FTYPE_MOSTLY_Q2_K_S;", body, re.S)
    assert "tensor_name_match_token_embd" in body and "tensor_name_match_output_weight" in body
    assert gguf.tensor_needs_imatrix("blk.0.ffn_down.weight", "Q2_K", "Q2_K_S")
    assert not gguf.tensor_needs_imatrix("blk.0.ffn_down.weight", "Q2_K", "Q2_K")
    assert not gguf.tensor_needs_imatrix("token_embd.weight", "IQ2_XXS", "IQ2_XXS")


def test_names_are_llama_quantize_names(llama_src):
    """Every row is a name ``llama-quantize`` takes, and the short aliases mean what they mean there."""
    text = (llama_src / "tools" / "quantize" / "quantize.cpp").read_text()
    options = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r'\{\s*"(\w+)",\s*LLAMA_FTYPE_(\w+),\s*"([^"]*)"', text)}
    for row in gguf.FILE_TYPES.values():
        assert options[row.name][0] == _ftype_member(row.name), row.name
    aliases = {name: member for name, (member, desc) in options.items() if desc.startswith("alias for")}
    assert aliases
    for name, member in aliases.items():
        assert _ftype_member(gguf.file_type(name).name) == member, name


def test_binding_knows_every_file_type():
    """The pinned binding quantizes to every row (the exporter asks it for LLAMA_FTYPE_<name>)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    for row in gguf.FILE_TYPES.values():
        assert getattr(llama_cpp, f"LLAMA_FTYPE_{_ftype_member(row.name)}") == row.id, row.name


# two small shapes beside the presets: untied with odd widths (fallbacks), tied with 1 KV head
_SMALL = [
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 352,
     "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 512,
     "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 288, "intermediate_size": 512,
     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
     "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
]


@pytest.mark.parametrize("source", ["llama3-ko-8b-aog", "gemma-ko-2b", "ocelot-10.8b", "synatra-7b", 0, 1])
def test_file_type_imatrix_flag_is_the_tensor_rule(source):
    """A row ``needs_imatrix`` exactly when its mix, planned without one, has a tensor the rule names; on
    widths the blocks do not divide the fallback types may need none, never the other way round."""
    spec = preset_spec(source) if isinstance(source, str) else spec_from_config(_SMALL[source])
    for row in gguf.FILE_TYPES.values():
        needs = plan_gguf(spec, row.name, imatrix=False).needs_imatrix
        if isinstance(source, str):
            assert needs == row.needs_imatrix, row.name
        else:
            assert needs <= row.needs_imatrix, row.name


# --------------------------------------------------------------------------- thresholds


def test_every_exported_type_has_explicit_thresholds():
    """One row each, no prefix fallback: a type without a row has no thresholds at all."""
    names = [*gguf.FILE_TYPES, *gptq.VARIANTS, *onnx.EXPORTABLE]
    assert len(set(names)) == len(names)  # the three tables never name the same quant
    assert set(gate.THRESHOLDS) == set(names)
    for row in gguf.FILE_TYPES.values():
        assert isinstance(row.thresholds, Thresholds) and gate.thresholds_for(row.name) is row.thresholds
    for v in gptq.VARIANTS.values():
        assert gate.thresholds_for(v.name) is v.thresholds
    for name in onnx.EXPORTABLE:
        assert gate.thresholds_for(name) is onnx.PRECISIONS[name].thresholds
    for unknown in ("Q9_K", "Q4_K", "w3g128", "fp16"):
        with pytest.raises(RecipeError, match="no validation thresholds"):
            gate.thresholds_for(unknown)


def test_a_width_is_gated_alike_in_every_format():
    assert gate.thresholds_for("int8") == gate.thresholds_for("w8g128") == gate.thresholds_for("Q8_0")
    assert gate.thresholds_for("int4") == gate.thresholds_for("w4g32") == gate.thresholds_for("Q4_K_M")
    assert gate.thresholds_for("fp32") == gate.thresholds_for("F32")


# --------------------------------------------------------------------------- plan offers what export makes


@pytest.fixture
def exporters(monkeypatch):
    """The three exporters with their install checks stubbed: check_recipe then refuses only the recipe."""
    from koquant.exporters.gguf import llamacpp
    from koquant.exporters.gptq import exporter as gptq_exporter
    from koquant.exporters.onnx import genai

    monkeypatch.setattr(llamacpp, "import_llama_cpp", lambda: None)
    monkeypatch.setattr(gptq_exporter, "check_install", lambda: "stub")
    monkeypatch.setattr(genai, "check_install", lambda: {})
    return {fmt: get_exporter(fmt) for fmt in ("gguf", "gptq", "onnx")}


def _exports(exporter, fmt: str, quant: str) -> bool:
    try:
        exporter.check_recipe(Recipe(fmt, (quant,)))
    except RecipeError:
        return False
    return True


def test_plan_offers_exactly_what_export_makes(exporters):
    keys = {e.key for e in plan("gemma-ko-2b", ctx=(512,)).exports}
    planned = {fmt: {k.split(":", 1)[1] for k in keys if k.startswith(fmt + ":")} for fmt in ("gguf", "gptq", "onnx")}
    assert planned["gguf"] == set(gguf.FILE_TYPES)
    assert planned["onnx"] == set(onnx.EXPORTABLE)
    assert planned["gptq"] == set(gptq.PLANNED)
    for fmt, names in planned.items():
        for name in names:
            assert _exports(exporters[fmt], fmt, name), f"plan offers {fmt}:{name}, export refuses it"


def test_what_export_refuses_plan_refuses(exporters):
    spec = preset_spec("gemma-ko-2b")
    for precision in onnx.PRECISIONS:
        made = _exports(exporters["onnx"], "onnx", precision)
        assert made == (precision in onnx.EXPORTABLE)
        if not made:
            with pytest.raises(RecipeError):
                plan_onnx(spec, precision)
    for name in [*gptq.VARIANTS, "w3g128", "w2g128", "w4g100"]:
        made = _exports(exporters["gptq"], "gptq", name)
        assert made == (name in gptq.VARIANTS), name
        label = gptq.parse_quant(name)
        if made:
            assert plan_gptq(spec, label["bits"], label["group_size"]).variant == name
        else:
            with pytest.raises(RecipeError):
                plan_gptq(spec, label["bits"], label["group_size"])
    for name in gguf.FILE_TYPES:
        assert _exports(exporters["gguf"], "gguf", name), name
    assert not _exports(exporters["gguf"], "gguf", "MXFP4_MOE")


def test_export_refuses_imatrix_types_without_calibration(exporters):
    for row in gguf.FILE_TYPES.values():
        for recipe in (Recipe("gguf", (row.name,), imatrix=False), Recipe("gguf", (row.name,), calib=None)):
            try:
                exporters["gguf"].check_recipe(recipe)
                refused = False
            except RecipeError as e:
                assert "require an importance matrix" in str(e)
                refused = True
            assert refused == row.needs_imatrix, row.name


# --------------------------------------------------------------------------- the runtime reads the table


def test_runtime_names_gguf_files_from_the_table_not_the_exporter():
    # the loader reads quant names through the format registry, from the GGUF table; resolving a file
    # imports the registry and the formats' declarations only, never an exporter's module
    code = ("import sys; from pathlib import Path; from koquant.runtime import loader\n"
            "from koquant.exporters import file_format; from koquant.quant_recipes.gguf import FILE_TYPES\n"
            "fmt = file_format(Path('model.gguf'))\n"
            "assert all(fmt.quant_in_name(f'model-{q}.gguf') == q for q in FILE_TYPES)\n"
            "assert fmt.quant_in_name('model-q4_k_m.gguf') == 'Q4_K_M'\n"
            "assert fmt.quant_in_name('x.gguf') is None\n"
            "print(sorted(m for m in sys.modules if m.startswith('koquant.exporters')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(["koquant.exporters", "koquant.exporters.gguf", "koquant.exporters.gptq",
                                      "koquant.exporters.onnx"])


def test_lossless_top1_flips_within_the_logit_bound_are_near_ties():
    """A flip where the source's own margin is under twice the allowed logit difference is noise, not a defect."""
    from koquant.exporters.gate import judge, thresholds_for

    bound = thresholds_for("F16").max_abs_max
    base = {"positions": 1024, "top1": 0.998, "kl_mean": 1e-7, "kl_p99": 1e-6, "kl_max": 1e-5,
            "max_abs_diff": bound / 2}
    assert judge("F16", {**base, "top1_flip_margin": 1.9 * bound}, True, gate="strict")["passed"]
    verdict = judge("F16", {**base, "top1_flip_margin": 2.1 * bound}, True, gate="strict")
    assert not verdict["passed"] and "top-1 agreement" in verdict["failures"][0]
    # quantized types have no logit bound: their top-1 threshold always applies
    q = judge("Q4_K_M", {**base, "top1": 0.5, "top1_flip_margin": 0.0, "kl_mean": 0.01}, True, gate="strict")
    assert not q["passed"]


_METRICS = {"positions": 1024, "top1": 0.80, "kl_mean": 0.20, "kl_p99": 1.5, "kl_max": 4.0,
            "max_abs_diff": 3.0, "max_abs_diff_p99": 2.0, "top1_flip_margin": 2.0, "nonfinite_positions": 0}


def test_user_gate_judges_a_quantized_file_against_the_plain_tools():
    """Publish what is no worse than the plain tool's file of the type (within the stated tolerance), with its
    ratio; refuse what is worse, naming the plain file and with its own hint. Fixed bounds are --gate strict."""
    from koquant.exporters.gate import HINTS, PLAIN_TOLERANCE, judge

    plain = {"quant": "Q3_K_M", "tool": "llama.cpp's plain Q3_K_M (no importance matrix)", "kl_mean": 0.29,
             "top1": 0.75, "kl_p99": 2.0}
    ok = judge("Q3_K_M", _METRICS, True, plain=plain)
    assert ok["passed"] and ok["rule"].startswith("plain tool") and abs(ok["kl_vs_plain"] - 0.20 / 0.29) < 1e-12
    # the same numbers fail the fixed bounds (top-1 0.80 >= 0.75 passes there, KL 0.20 <= 0.3 passes: use Q4_K_M's)
    strict = judge("Q4_K_M", _METRICS, True, gate="strict")
    assert not strict["passed"] and strict["hints"] == [HINTS["strict"]] * len(strict["failures"])
    worse = judge("Q3_K_M", {**_METRICS, "kl_mean": 0.29 * (1 + PLAIN_TOLERANCE) + 0.01}, True, plain=plain)
    assert not worse["passed"] and "plain Q3_K_M" in worse["failures"][0] and worse["hints"] == [HINTS["plain"]]
    within = judge("Q3_K_M", {**_METRICS, "kl_mean": 0.29 * (1 + PLAIN_TOLERANCE) - 0.001}, True, plain=plain)
    assert within["passed"]
    # no plain file of a type that needs an importance matrix: the fixed bounds apply
    iq = judge("IQ2_XXS", {**_METRICS, "kl_mean": 1.5}, True)
    assert not iq["passed"] and iq["rule"] == "fixed bounds"


def test_user_gate_refuses_broken_files_whatever_their_distances():
    from koquant.exporters.gate import HINTS, judge

    plain = {"quant": "Q4_K_M", "tool": "plain", "kl_mean": 10.0, "top1": 0.1, "kl_p99": 20.0}
    nan = judge("Q4_K_M", {**_METRICS, "nonfinite_positions": 3}, True, plain=plain)
    assert not nan["passed"] and "NaN or inf at 3 of 1024" in nan["failures"][0] and nan["hints"] == [HINTS["nonfinite"]]
    ids = judge("Q4_K_M", _METRICS, False, plain=plain, id_mismatch="token ids differ at position 7")
    assert not ids["passed"] and ids["failures"] == ["token ids differ at position 7"] and ids["hints"] == [HINTS["ids"]]
    tpl = judge("Q4_K_M", _METRICS, True, [("the GGUF's chat template differs", HINTS["template"])], plain=plain)
    assert not tpl["passed"] and tpl["hints"] == [HINTS["template"]] and tpl["rule"] == "broken"
    # a lossless type is judged by its KL bound, not by an absolute logit difference tuned on bf16 values
    f16 = {**_METRICS, "top1": 0.996, "kl_mean": 2e-6, "max_abs_diff": 0.07}
    assert judge("F16", f16, True)["passed"] and not judge("F16", f16, True, gate="strict")["passed"]
    assert judge("F16", {**f16, "kl_mean": 0.01}, True)["hints"] == [HINTS["lossless"]]


def test_token_mismatch_names_the_first_differing_position_and_its_text():
    from koquant.exporters.gate import token_mismatch

    decode = lambda ids: "".join(chr(0xAC00 + i) for i in ids)  # noqa: E731 (ids -> Hangul syllables)
    msg = token_mismatch([1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 5, 6], decode)
    assert "at position 3" in msg and "source 4 '" + chr(0xAC04) + "'" in msg and "export 9" in msg
    assert "differ" in token_mismatch([1, 2], [1, 2, 3], decode) and "3 ids instead of 2" in token_mismatch(
        [1, 2], [1, 2, 3], decode)
