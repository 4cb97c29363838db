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


def pytest_generate_tests(metafunc):
    # Tests asking for `family` run once per seed family, generated from the registry, so a new
    # family without tests cannot slip in.
    if "family" in metafunc.fixturenames:
        metafunc.parametrize("family", sorted(FAMILIES))
