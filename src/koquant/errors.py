"""One error family for everything a user can cause.

The CLI catches :class:`KoquantError` at its boundary, prints the message and the
hint (the next thing to try) and exits non-zero. ``KOQUANT_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations


class KoquantError(Exception):
    """A problem the user can act on. ``hint`` names the next step."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class CheckpointError(KoquantError):
    """The source model folder is missing something or is malformed."""


class UnsafeInputError(KoquantError):
    """Input that would execute code or escape its folder (pickle weights, path traversal)."""


class RecipeError(KoquantError):
    """The requested export options are invalid or unsupported."""


class CalibrationError(KoquantError):
    """Calibration or evaluation text could not be read or is unusable."""


class BackendMissingError(KoquantError):
    """An optional backend (llama.cpp, onnxruntime-genai, gptqmodel) is not installed."""


class ExportError(KoquantError):
    """A backend failed while producing an artifact."""


class ValidationError(KoquantError):
    """An export drifted from the source beyond the thresholds of its quant type."""

    exit_code = 3


class OutputError(KoquantError):
    """The output location cannot be written."""


class ArtifactError(KoquantError):
    """An artifact folder or its ``koquant.json`` is malformed."""


class IntegrityError(ArtifactError):
    """An artifact's files differ from what its manifest recorded (changed, missing or extra)."""

    exit_code = 4
