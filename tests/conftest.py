"""Shared fixtures: miniatures of every seed family and their GGUF exports, built once per session.

Miniatures and llama.cpp sources are cached under $KOQUANT_CACHE (default ~/.cache/koquant),
so a second run reuses them; exports are made fresh in a per-session temp folder.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from koquant.testing.miniatures import DEFAULT_MODEL, FAMILIES, build_miniature  # noqa: E402

GGUF_QUANTS = ("F16", "Q8_0", "Q4_K_M")


@pytest.fixture(scope="session")
def miniature():
    """miniature(name) -> path of the cached, briefly trained miniature checkpoint."""
    return build_miniature


@pytest.fixture(scope="session")
def default_model():
    return build_miniature(DEFAULT_MODEL)


def _exports(tmp_path_factory, fmt: str, quants: tuple[str, ...], **recipe):
    """export(name) -> Artifact of ``quants`` for a family, made once per session."""
    import koquant

    made = {}

    def get(name: str):
        if name not in made:
            out = tmp_path_factory.mktemp(fmt) / name
            made[name] = koquant.export(build_miniature(name), koquant.Recipe(fmt, quants, name=name, **recipe), out)
        return made[name]

    return get


@pytest.fixture(scope="session")
def gguf_exports(tmp_path_factory):
    """export(name) -> Artifact of F16,Q8_0,Q4_K_M for a family."""
    return _exports(tmp_path_factory, "gguf", GGUF_QUANTS, calib_chunks=8)


ONNX_QUANTS = ("fp32", "int4")


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory):
    """export(name) -> Artifact of ONNX fp32,int4 (Korean GPTQ) for a family.

    Small calibration and evaluation (2 cores in CI): 4 x 256 calibration tokens, 2 x 256 held-out.
    """
    return _exports(tmp_path_factory, "onnx", ONNX_QUANTS, calib_ctx=256, calib_chunks=4, eval_chunks=2)


GPTQ_QUANT = "w4g128"


@pytest.fixture(scope="session")
def gptq_exports(tmp_path_factory):
    """export(name) -> Artifact of GPTQ 4-bit g128 (Korean-calibrated) for a family.

    Small calibration and evaluation (2 cores in CI): 8 x 256 calibration tokens, 2 x 256 held-out.
    """
    return _exports(tmp_path_factory, "gptq", (GPTQ_QUANT,), calib_ctx=256, calib_chunks=8, eval_chunks=2)


@pytest.fixture(scope="session")
def llama_tools():
    """llama.cpp's own tools (llama-imatrix, llama-perplexity) built from the pinned sources, cached."""
    from koquant.exporters.gguf.llamacpp import build_tools

    return build_tools()


#: the export fixture of each format: a test asking for one runs for the families that format supports
FAMILY_FORMAT = {"gguf_exports": "gguf", "onnx_exports": "onnx", "gptq_exports": "gptq"}


def families_for(fmt: str | None = None) -> list[str]:
    """The miniatures whose architecture (in the registry) ``fmt`` exports; every miniature for None."""
    from koquant.source.architectures import architecture

    return sorted(name for name, fam in FAMILIES.items()
                  if fmt is None or fmt in architecture(fam.hf_class).backends)


def pytest_generate_tests(metafunc):
    # Tests asking for `family` run once per miniature, generated from the architecture registry
    # (tests/test_families.py checks every exportable architecture has one), and only for the
    # families the format under test supports; so a new architecture without tests cannot slip in.
    if "family" in metafunc.fixturenames:
        formats = {FAMILY_FORMAT[f] for f in metafunc.fixturenames if f in FAMILY_FORMAT}
        names = set(families_for())
        for fmt in formats:
            names &= set(families_for(fmt))
        backends = metafunc.definition.get_closest_marker("family_backends")
        if backends is None:
            metafunc.parametrize("family", sorted(names))
        else:  # (family, backend) pairs: "hf" and each "format:quant" the family's architecture exports
            pairs = [(f, b) for f in sorted(names) for b in backends.args[0]
                     if b == "hf" or f in families_for(b.partition(":")[0])]
            metafunc.parametrize(("family", "backend"), pairs)
