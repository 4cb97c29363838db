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


# ---------------------------------------------------------------- the one install check hint
#: each optional extra -> the command that installs it in a checkout (pinned by constraints.txt)
INSTALL_HINTS = {
    extra: f"pip install -c constraints.txt -e '.[{extra}]'" for extra in ("gguf", "onnx", "onnx-gpu", "gptq", "bench", "serve", "ray")
}


def install_hint(extra: str) -> str:
    """The command that installs the optional extra ``extra`` (one of :data:`INSTALL_HINTS`)."""
    try:
        return INSTALL_HINTS[extra]
    except KeyError:
        raise ValueError(f"no optional extra {extra!r}; known: {', '.join(INSTALL_HINTS)}") from None


def missing_extra(what: str, extra: str, *, more: str = "") -> BackendMissingError:
    """The error for a missing or mismatched optional backend: message ``what``, hint installing ``extra``.

    ``more`` is appended to the hint verbatim (what else to know about the install). Every install check
    raises through here, so the hint is written once.
    """
    return BackendMissingError(what, hint=install_hint(extra) + more)
