"""GGUF quant types as data: llama.cpp's tensor types, and the file types koquant makes, one row each.

Two tables, both restating the pinned llama.cpp; ``tests/test_quant_tables.py`` fails when either
drifts from the gguf-py and sources vendored with it:

- :data:`GGML_TYPES`, every ggml tensor type: ``block_size`` values stored in ``type_size`` bytes
  (``type_traits`` in ``ggml/src/ggml.c``, ``GGML_QUANT_SIZES`` in gguf-py), and whether llama.cpp
  refuses to write a tensor of that type without an importance matrix (``tensor_requires_imatrix``
  in ``src/llama-quant.cpp``). A row of ``ncols`` values takes ``ncols / block_size * type_size``
  bytes and is only possible when ``block_size`` divides ``ncols``.
- :data:`FILE_TYPES`, the file types ("mixes") ``koquant export --fmt gguf`` writes and ``koquant
  plan`` sizes, largest first: the name ``llama-quantize`` takes, the ``llama_ftype`` id, the tensor
  type the mix starts from (``llama_ftype_get_default_type``), whether the mix cannot be made without
  an importance matrix, and the thresholds the validation gate holds it to. The per-tensor
  deviations from the base type live in :mod:`koquant.plan.gguf_mix`.

The file types of the pinned llama.cpp without a row are in :data:`LEFT_OUT`, with the reason:
koquant neither exports nor plans them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RecipeError
from . import thresholds as th
from .thresholds import Thresholds

__all__ = [
    "GGMLType",
    "FileType",
    "GGML_TYPES",
    "GGML_TYPES_BY_ID",
    "FILE_TYPES",
    "LEFT_OUT",
    "ggml_type",
    "file_type",
    "row_bytes",
    "tensor_bytes",
    "tensor_needs_imatrix",
    "DEFAULT",
]

QK_K = 256


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type: ``block_size`` values are stored in ``type_size`` bytes."""

    name: str
    id: int
    block_size: int
    type_size: int
    quantized: bool = True
    needs_imatrix: bool = False  # llama.cpp writes no tensor of this type without an importance matrix

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size


def _t(name: str, id_: int, block: int, size: int, quantized: bool = True, imatrix: bool = False) -> GGMLType:
    return GGMLType(name, id_, block, size, quantized, imatrix)


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
    _t("IQ2_XXS", 16, QK_K, 2 + QK_K // 4, imatrix=True),
    _t("IQ2_XS", 17, QK_K, 2 + QK_K // 4 + QK_K // 32, imatrix=True),
    _t("IQ3_XXS", 18, QK_K, 2 + QK_K // 4 + QK_K // 8, imatrix=True),
    _t("IQ1_S", 19, QK_K, 2 + QK_K // 8 + QK_K // 16, imatrix=True),
    _t("IQ4_NL", 20, 32, 2 + 16),
    _t("IQ3_S", 21, QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    _t("IQ2_S", 22, QK_K, 2 + QK_K // 4 + QK_K // 16, imatrix=True),
    _t("IQ4_XS", 23, QK_K, 2 + 2 + QK_K // 2 + QK_K // 64),
    _t("I8", 24, 1, 1, False),
    _t("I16", 25, 1, 2, False),
    _t("I32", 26, 1, 4, False),
    _t("I64", 27, 1, 8, False),
    _t("F64", 28, 1, 8, False),
    _t("IQ1_M", 29, QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32, imatrix=True),
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


def tensor_needs_imatrix(tensor: str, type_: str, ftype: str) -> bool:
    """llama.cpp's ``tensor_requires_imatrix``: whether tensor ``tensor`` (a GGUF name) written as
    ``type_`` in a ``ftype`` file needs an importance matrix. The embedding and output tensors never do;
    Q2_K tensors only in a Q2_K_S file."""
    if tensor in ("token_embd.weight", "output.weight"):
        return False
    return ggml_type(type_).needs_imatrix or (type_ == "Q2_K" and ftype == "Q2_K_S")


@dataclass(frozen=True)
class FileType:
    """A llama.cpp file type: the name ``llama-quantize`` takes, its ``llama_ftype`` id and base type.

    ``needs_imatrix``: llama.cpp refuses the mix without an importance matrix, because some tensor of it
    gets a type :func:`tensor_needs_imatrix` names (for IQ3_XS that is ``attn_q``/``attn_k`` in IQ3_XXS,
    not its IQ3_S base). Only a model whose widths the block does not divide can escape that, its tensors
    falling back to other types; export refuses such a mix without an importance matrix all the same.
    ``thresholds``: what the validation gate holds an export of this type to.
    """

    name: str
    id: int
    base: str
    summary: str
    thresholds: Thresholds
    needs_imatrix: bool = False

    @property
    def quantized(self) -> bool:
        """False for the float types (F32, F16, BF16): no calibration, no importance matrix."""
        return ggml_type(self.base).quantized


# Ordered from largest to smallest, the order the plan's table prints in.
_FILE_TYPE_LIST = (
    FileType("F32", 0, "F32", "32-bit float, no quantization", th.FLOAT32),
    FileType("F16", 1, "F16", "16-bit float", th.FLOAT16),
    FileType("BF16", 32, "BF16", "bfloat16", th.BFLOAT16),
    FileType("Q8_0", 7, "Q8_0", "8-bit, block 32", th.BITS8),
    FileType("Q6_K", 18, "Q6_K", "6-bit k-quant", th.BITS6),
    FileType("Q5_1", 9, "Q5_1", "5-bit legacy, with offset", th.BITS5),
    FileType("Q5_K_M", 17, "Q5_K", "5-bit k-quant mix", th.BITS5),
    FileType("Q5_K_S", 16, "Q5_K", "5-bit k-quant", th.BITS5),
    FileType("Q5_0", 8, "Q5_0", "5-bit legacy", th.BITS5),
    FileType("Q4_1", 3, "Q4_1", "4-bit legacy, with offset", th.BITS4),
    FileType("IQ4_NL", 25, "IQ4_NL", "4.5-bit non-linear, block 32", th.BITS4),
    FileType("Q4_K_M", 15, "Q4_K", "4-bit k-quant mix (the usual default)", th.BITS4),
    FileType("Q4_K_S", 14, "Q4_K", "4-bit k-quant", th.BITS4),
    FileType("Q4_0", 2, "Q4_0", "4-bit legacy", th.BITS4),
    FileType("IQ4_XS", 30, "IQ4_XS", "4.25-bit non-linear", th.BITS4),
    FileType("Q3_K_L", 13, "Q3_K", "3-bit k-quant mix, large", th.BITS3),
    FileType("Q3_K_M", 12, "Q3_K", "3-bit k-quant mix", th.BITS3),
    FileType("IQ3_M", 27, "IQ3_S", "3.7-bit i-quant mix", th.BITS3),
    FileType("IQ3_S", 26, "IQ3_S", "3.4-bit i-quant", th.BITS3),
    FileType("Q3_K_S", 11, "Q3_K", "3-bit k-quant", th.BITS3),
    FileType("IQ3_XS", 22, "IQ3_S", "3.3-bit i-quant mix", th.BITS3, needs_imatrix=True),
    FileType("IQ3_XXS", 23, "IQ3_XXS", "3.06-bit i-quant", th.BITS3, needs_imatrix=True),
    FileType("Q2_K", 10, "Q2_K", "2-bit k-quant mix", th.BITS2),
    FileType("Q2_K_S", 21, "Q2_K", "2-bit k-quant", th.BITS2, needs_imatrix=True),
    FileType("IQ2_M", 29, "IQ2_S", "2.7-bit i-quant", th.BITS2, needs_imatrix=True),
    FileType("IQ2_S", 28, "IQ2_XS", "2.5-bit i-quant", th.BITS2, needs_imatrix=True),
    FileType("IQ2_XS", 20, "IQ2_XS", "2.31-bit i-quant", th.BITS2, needs_imatrix=True),
    FileType("IQ2_XXS", 19, "IQ2_XXS", "2.06-bit i-quant", th.BITS2, needs_imatrix=True),
    FileType("TQ2_0", 37, "TQ2_0", "2.06-bit ternary (for ternary-trained checkpoints)", th.BITS1),
    FileType("IQ1_M", 31, "IQ1_M", "1.75-bit i-quant", th.BITS1, needs_imatrix=True),
    FileType("TQ1_0", 36, "TQ1_0", "1.69-bit ternary (for ternary-trained checkpoints)", th.BITS1),
    FileType("IQ1_S", 24, "IQ1_S", "1.56-bit i-quant", th.BITS1, needs_imatrix=True),
)

FILE_TYPES: dict[str, FileType] = {f.name: f for f in _FILE_TYPE_LIST}

# llama.cpp file types koquant does not make, and why
LEFT_OUT = {
    "MXFP4_MOE": "MXFP4 for the experts of mixture-of-experts checkpoints; koquant's architectures are dense",
    "NVFP4": "llama.cpp has no fallback type for a row length its 64-value block does not divide",
    "Q1_0": "llama.cpp has no fallback type for a row length its 128-value block does not divide",
    "Q2_0": "new in the pinned llama.cpp; not yet measured against koquant's gate",
}

# llama-quantize accepts these short names too.
DEFAULT = "Q4_K_M"  # what --fmt gguf writes without --quant

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
