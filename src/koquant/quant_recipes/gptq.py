"""GPTQ quant types as data: the widths and group sizes koquant writes, one row per variant.

A variant is named ``w<bits>g<group size>`` (``w4g128``, ``w8g32``), or ``w<bits>`` for one group per
row (group size -1). The same name is the export's ``--quant``, the artifact's quant, the plan's
``gptq:w4g128`` and the bench entry. Widths are the ones vLLM, TGI, exllama and transformers all
load from a GPTQ v1 checkpoint; each is gated like the GGUF type of its width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import RecipeError
from . import thresholds as th
from .thresholds import Thresholds

__all__ = ["GPTQVariant", "VARIANTS", "BITS", "GROUP_SIZES", "DEFAULT", "PLANNED", "quant_name", "parse_quant",
           "variant"]

_WIDTHS = {4: th.BITS4, 8: th.BITS8}  # bits -> the gate's bounds
BITS = tuple(_WIDTHS)
GROUP_SIZES = (32, 64, 128, -1)  # input columns per scale; -1: one group per row


def quant_name(bits: int, group_size: int) -> str:
    """The artifact's quant name: ``w4g128``, ``w8g32``, ``w4`` (one group per row)."""
    return f"w{bits}" + (f"g{group_size}" if group_size > 0 else "")


def parse_quant(name: str) -> dict:
    """``w4g128`` -> {"bits": 4, "group_size": 128}; ``w8`` -> {"bits": 8, "group_size": -1}."""
    m = re.fullmatch(r"w(\d+)(?:g(\d+))?", name.strip().lower())
    if m is None:
        raise RecipeError(f"{name!r} is not a GPTQ quant name",
                          hint="GPTQ quant names are w<bits>g<group size> (w4g128, w8g128, w4g32) or w<bits> "
                          "for one group per row; or use --bits and --group-size")
    return {"bits": int(m.group(1)), "group_size": int(m.group(2)) if m.group(2) else -1}


@dataclass(frozen=True)
class GPTQVariant:
    bits: int
    group_size: int
    thresholds: Thresholds

    @property
    def name(self) -> str:
        return quant_name(self.bits, self.group_size)


VARIANTS: dict[str, GPTQVariant] = {
    quant_name(b, g): GPTQVariant(b, g, bounds) for b, bounds in _WIDTHS.items() for g in GROUP_SIZES
}


def variant(bits: int, group_size: int) -> GPTQVariant:
    """The row of ``bits`` and ``group_size``; a RecipeError naming what koquant writes when there is none."""
    if bits not in _WIDTHS:
        raise RecipeError(f"GPTQ export does not support {bits}-bit weights",
                          hint="use --bits 4 or --bits 8 (the widths vLLM, TGI, exllama and transformers load); "
                          "for lower widths use --fmt gguf with Q3_K_M or Q2_K")
    if group_size not in GROUP_SIZES:
        raise RecipeError(f"GPTQ group size {group_size} is not supported",
                          hint="use --group-size 128, 64, 32 or -1 (one group per row)")
    return VARIANTS[quant_name(bits, group_size)]


DEFAULT = VARIANTS["w4g128"]  # what --fmt gptq writes without --quant / --bits / --group-size
PLANNED = ("w4g128", "w4g32", "w8g128")  # the variants koquant plan sizes by default
