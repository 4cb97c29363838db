"""``Recipe``: what to export, validated before any work starts, versioned in the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import RecipeError

RECIPE_VERSION = 1

#: How the validation gate judges an export (koquant.exporters.gate).
GATE_MODES = ("user", "strict")


@dataclass(frozen=True)
class Recipe:
    fmt: str
    quants: tuple[str, ...]
    calib: str | None = "default"  # built-in name, file or folder; None disables calibration
    calib_chat: bool = False  # render calibration samples through the model's chat template
    calib_ctx: int = 512
    calib_chunks: int = 32
    imatrix: bool = True  # GGUF: apply the Korean importance matrix to quantized types
    eval_ctx: int = 256  # held-out chunk length for the validation gate
    eval_chunks: int = 4
    threads: int = 0  # 0: all cores
    name: str | None = None  # artifact base name; default: the model folder's name
    params: dict = field(default_factory=dict)  # format-specific options
    gate: str = "user"  # "user": refuse broken files and ones worse than the plain tool's; "strict": fixed bounds

    def __post_init__(self):
        if not self.quants:
            raise RecipeError("no quant type given", hint="e.g. --quant Q4_K_M,Q8_0")
        for key in ("calib_ctx", "calib_chunks", "eval_ctx", "eval_chunks"):
            v = getattr(self, key)
            if not isinstance(v, int) or v <= 0:
                raise RecipeError(f"{key} must be a positive integer, got {v!r}")
        if self.calib_ctx < 16:
            raise RecipeError("calib_ctx must be at least 16 tokens (llama.cpp ignores shorter batches)")
        if self.threads < 0:
            raise RecipeError("threads must be >= 0 (0 uses every core)")
        if self.gate not in GATE_MODES:
            raise RecipeError(f"unknown gate {self.gate!r}", hint="use --gate " + " or --gate ".join(GATE_MODES))
        if len(set(self.quants)) != len(self.quants):
            raise RecipeError(f"quant types repeat: {', '.join(self.quants)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quants"] = list(self.quants)
        d["version"] = RECIPE_VERSION
        d.pop("threads")  # does not change the output
        return d
