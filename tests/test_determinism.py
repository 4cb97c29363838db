"""The same checkpoint and recipe give the same bytes: GGUF, ONNX and GPTQ, manifest included.

Each format's session export (``conftest.py``) is made a second time from the recipe its own
``koquant.json`` records, and every file of the two artifacts must be byte-identical: the
quantized GGUF files and the Korean importance matrix, the ONNX graphs and their external
weights (int4 from koquant's GPTQ), the GPTQ ``model.safetensors`` (tensor by tensor, so a
failure names the tensors), the tokenizer copies, the model cards and ``koquant.json`` with its
inventory of hashes. Both runs are on one machine with the same thread count; README.md says
what that covers. The second GGUF and GPTQ exports also prove that those formats never load the
whole float32 source (koquant.exporters.layerwise).
"""

from __future__ import annotations

import pytest

import koquant
from koquant.quant_recipes.recipe import Recipe
from koquant.testing.miniatures import build_miniature

from .killing import snapshot

FAMILY = "komt-mini"  # two layers: the cheapest trained miniature


def recipe_from_manifest(manifest: dict) -> Recipe:
    """The recipe a manifest records is enough to make the artifact again."""
    d = dict(manifest["recipe"])
    assert d.pop("version") == 1
    return Recipe(**{**d, "quants": tuple(d["quants"])})


def _differing_tensors(a, b) -> list[str]:
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    return sorted(n for n in ta.keys() | tb.keys() if n not in ta or n not in tb or not ta[n].equal(tb[n]))


def _differing_entries(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys(), key=str)
                for d in _differing_entries(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differing_entries(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"[:300]]


@pytest.mark.parametrize("fmt", ["gguf", "onnx", "gptq"])
def test_same_recipe_gives_the_same_bytes(fmt, request, tmp_path, monkeypatch):
    first = request.getfixturevalue(f"{fmt}_exports")(FAMILY)
    if fmt != "onnx":  # GGUF and GPTQ reach the source only layer by layer (ONNX int4 GPTQ needs the whole model)
        from koquant.exporters.reference import Reference

        def whole_model(self):
            raise AssertionError(f"the {fmt} export loaded the whole float32 source model")

        monkeypatch.setattr(Reference, "model", property(whole_model))
    again = koquant.export(build_miniature(FAMILY), recipe_from_manifest(first.manifest), tmp_path / "again")
    a, b = snapshot(first.path), snapshot(again.path)
    assert sorted(a) == sorted(b)
    differ = sorted(p for p in a if a[p] != b[p])
    detail = ""
    if "model.safetensors" in differ:
        detail += f"; tensors that differ: {_differing_tensors(first.path / 'model.safetensors', again.path / 'model.safetensors')}"
    if "koquant.json" in differ:
        detail += f"; manifest entries that differ: {_differing_entries(first.manifest, again.manifest)}"
    assert differ == [], f"{fmt}: files differ between two runs of the same recipe: {differ}{detail}"
    assert first.manifest["inventory"] == again.manifest["inventory"]
    assert [f["sha256"] for f in first.files] == [f["sha256"] for f in again.files]
