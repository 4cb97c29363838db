"""The ggml tensor types and llama.cpp file types, as data.

Block sizes and bytes per block follow ``type_traits`` in the pinned llama.cpp
(``ggml/src/ggml.c``; the same numbers are ``GGML_QUANT_SIZES`` in gguf-py). A row of
``ncols`` values of a block type takes ``ncols / block_size * type_size`` bytes and is only
possible when ``block_size`` divides ``ncols``.

The file types ("mixes") are llama.cpp's ``llama_ftype`` values with the tensor type each
one starts from (``llama_ftype_get_default_type``); the per-tensor deviations from that
default live in :mod:`koquant.plan.gguf_mix`.
"""

from __future__ import annotations

from dataclasses import dataclass

from koquant.errors import RecipeError

__all__ = [
    "GGMLType",
    "FileType",
    "GGML_TYPES",
    "FILE_TYPES",
    "ggml_type",
    "file_type",
    "row_bytes",
    "tensor_bytes",
]

QK_K = 256


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type: ``block_size`` values are stored in ``type_size`` bytes."""

    name: str
    id: int
    block_size: int
    type_size: int
    quantized: bool

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size


def _t(name: str, id_: int, block: int, size: int, quantized: bool = True) -> GGMLType:
    return GGMLType(name, id_, block, size, quantized)


_TYPE_LIST = (
    _t("F32", 0, 1, 4, False),
    _t("F16", 1, 1, 2, False),
    _t("Q4_0", 2, 32, 2 + 16),
    _t("Q4_1", 3, 32, 2 + 2 + 16),
    _t("Q5_0", 6, 32, 2 + 4 + 16),
    _t("Q5_1", 7, 32, 2 + 2 + 4 + 16),
    _t("Q8_0", 8, 32, 2 + 32),
    _t("Q8_1", 9, 32, 2 + 2 + 32),
    _t("Q2_K", 10, QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    _t("Q3_K", 11, QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),
    _t("Q4_K", 12, QK_K, 2 + 2 + QK_K // 2 + 12),
    _t("Q5_K", 13, QK_K, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    _t("Q6_K", 14, QK_K, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    _t("Q8_K", 15, QK_K, 4 + QK_K + QK_K // 8),
    _t("IQ2_XXS", 16, QK_K, 2 + QK_K // 4),
    _t("IQ2_XS", 17, QK_K, 2 + QK_K // 4 + QK_K // 32),
    _t("IQ3_XXS", 18, QK_K, 2 + QK_K // 4 + QK_K // 8),
    _t("IQ1_S", 19, QK_K, 2 + QK_K // 8 + QK_K // 16),
    _t("IQ4_NL", 20, 32, 2 + 16),
    _t("IQ3_S", 21, QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    _t("IQ2_S", 22, QK_K, 2 + QK_K // 4 + QK_K // 16),
    _t("IQ4_XS", 23, QK_K, 2 + 2 + QK_K // 2 + QK_K // 64),
    _t("I8", 24, 1, 1, False),
    _t("I16", 25, 1, 2, False),
    _t("I32", 26, 1, 4, False),
    _t("I64", 27, 1, 8, False),
    _t("F64", 28, 1, 8, False),
    _t("IQ1_M", 29, QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    _t("BF16", 30, 1, 2, False),
    _t("TQ1_0", 34, QK_K, 2 + 4 * 13),
    _t("TQ2_0", 35, QK_K, 2 + 64),
    _t("MXFP4", 39, 32, 1 + 16),
    _t("NVFP4", 40, 64, 4 + 32),
    _t("Q1_0", 41, 128, 2 + 16),
    _t("Q2_0", 42, 64, 2 + 16),
)

GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in _TYPE_LIST}
GGML_TYPES_BY_ID: dict[int, GGMLType] = {t.id: t for t in _TYPE_LIST}


def ggml_type(key: str | int | GGMLType) -> GGMLType:
    """Look a ggml type up by name (``"Q4_K"``) or numeric id."""
    if isinstance(key, GGMLType):
        return key
    found = GGML_TYPES_BY_ID.get(key) if isinstance(key, int) else GGML_TYPES.get(str(key).upper())
    if found is None:
        raise RecipeError(
            f"unknown ggml tensor type {key!r}",
            hint="known types: " + ", ".join(GGML_TYPES),
        )
    return found


def row_bytes(type_: str | GGMLType, ncols: int) -> int:
    """Bytes of one row of ``ncols`` values (``ggml_row_size``); the block size must divide it."""
    t = ggml_type(type_)
    if ncols % t.block_size:
        raise RecipeError(
            f"a row of {ncols} values cannot be stored as {t.name} (block size {t.block_size})",
            hint="pick a type whose block size divides the row length",
        )
    return ncols // t.block_size * t.type_size


def tensor_bytes(type_: str | GGMLType, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor; ``shape`` is in ggml order (``shape[0]`` is the row length)."""
    n_rows = 1
    for d in shape[1:]:
        n_rows *= d
    return n_rows * row_bytes(type_, shape[0])


@dataclass(frozen=True)
class FileType:
    """A llama.cpp file type: the name ``llama-quantize`` takes, its ``llama_ftype`` id and base type."""

    name: str
    id: int
    base: str
    summary: str


# Ordered from largest to smallest, the order the table prints in. Ternary (TQ*), MXFP4_MOE,
# NVFP4 and the new Q1_0/Q2_0 are left out: they are for ternary or MoE checkpoints and
# llama.cpp has no row-size fallback for some of them.
_FILE_TYPE_LIST = (
    FileType("F32", 0, "F32", "32-bit float, no quantization"),
    FileType("F16", 1, "F16", "16-bit float"),
    FileType("BF16", 32, "BF16", "bfloat16"),
    FileType("Q8_0", 7, "Q8_0", "8-bit, block 32"),
    FileType("Q6_K", 18, "Q6_K", "6-bit k-quant"),
    FileType("Q5_1", 9, "Q5_1", "5-bit legacy, with offset"),
    FileType("Q5_K_M", 17, "Q5_K", "5-bit k-quant mix"),
    FileType("Q5_K_S", 16, "Q5_K", "5-bit k-quant"),
    FileType("Q5_0", 8, "Q5_0", "5-bit legacy"),
    FileType("Q4_1", 3, "Q4_1", "4-bit legacy, with offset"),
    FileType("IQ4_NL", 25, "IQ4_NL", "4.5-bit non-linear, block 32"),
    FileType("Q4_K_M", 15, "Q4_K", "4-bit k-quant mix (the usual default)"),
    FileType("Q4_K_S", 14, "Q4_K", "4-bit k-quant"),
    FileType("Q4_0", 2, "Q4_0", "4-bit legacy"),
    FileType("IQ4_XS", 30, "IQ4_XS", "4.25-bit non-linear"),
    FileType("Q3_K_L", 13, "Q3_K", "3-bit k-quant mix, large"),
    FileType("Q3_K_M", 12, "Q3_K", "3-bit k-quant mix"),
    FileType("IQ3_M", 27, "IQ3_S", "3.7-bit i-quant mix"),
    FileType("IQ3_S", 26, "IQ3_S", "3.4-bit i-quant"),
    FileType("Q3_K_S", 11, "Q3_K", "3-bit k-quant"),
    FileType("IQ3_XS", 22, "IQ3_S", "3.3-bit i-quant mix"),
    FileType("IQ3_XXS", 23, "IQ3_XXS", "3.06-bit i-quant"),
    FileType("Q2_K", 10, "Q2_K", "2-bit k-quant mix"),
    FileType("Q2_K_S", 21, "Q2_K", "2-bit k-quant"),
    FileType("IQ2_M", 29, "IQ2_S", "2.7-bit i-quant"),
    FileType("IQ2_S", 28, "IQ2_XS", "2.5-bit i-quant"),
    FileType("IQ2_XS", 20, "IQ2_XS", "2.31-bit i-quant"),
    FileType("IQ2_XXS", 19, "IQ2_XXS", "2.06-bit i-quant"),
    FileType("IQ1_M", 31, "IQ1_M", "1.75-bit i-quant"),
    FileType("IQ1_S", 24, "IQ1_S", "1.56-bit i-quant"),
)

FILE_TYPES: dict[str, FileType] = {f.name: f for f in _FILE_TYPE_LIST}

# llama-quantize accepts these short names too.
_FILE_TYPE_ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}


def file_type(name: str | FileType) -> FileType:
    """Look a llama.cpp file type up by the name ``llama-quantize`` takes (``"Q4_K_M"``)."""
    if isinstance(name, FileType):
        return name
    key = str(name).upper()
    key = _FILE_TYPE_ALIASES.get(key, key)
    found = FILE_TYPES.get(key)
    if found is None:
        raise RecipeError(
            f"unknown GGUF type {name!r}",
            hint="known types: " + ", ".join(FILE_TYPES),
        )
    return found
