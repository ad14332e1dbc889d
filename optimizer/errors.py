"""The one error hierarchy of trtforge.

Every error a user can cause or a check can raise is a ``TrtforgeError``: the CLI prints
its message as one line and exits with its ``exit_code``. Anything else escaping the CLI is
a bug and keeps its traceback.

Messages say what is wrong, where (file, node, input) and what to do about it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2


class TrtforgeError(Exception):
    """Base class: a problem the user can act on. Exit code 2 unless a subclass says otherwise."""

    exit_code = EXIT_BAD_INPUT


class InputError(TrtforgeError):
    """A model, data or engine file is missing, corrupt, unsafe or does not fit."""


class ConfigError(TrtforgeError):
    """A recipe or command-line option is wrong."""


class PassError(TrtforgeError):
    """A graph pass could not run on this model."""


class VerificationError(TrtforgeError):
    """A transformation changed what the model computes beyond tolerance."""

    exit_code = EXIT_GATE_FAILED


class CalibrationError(TrtforgeError):
    """Calibration data or statistics are unusable (NaNs, wrong inputs, nothing to quantize)."""


class NothingToQuantize(CalibrationError):
    """The model has no node the precision stage can quantize (none, or all inside subgraphs)."""


class BuildError(TrtforgeError):
    """TensorRT could not parse or build the model, or no builder is installed."""


class UnparsableModel(BuildError):
    """TensorRT's ONNX parser does not take the model (ops it has no importer for)."""


class ValidationError(TrtforgeError):
    """The candidate and the reference cannot be compared (different outputs, bad data)."""


class GateFailed(TrtforgeError):
    """A release gate was not met: the artifact is worse than allowed."""

    exit_code = EXIT_GATE_FAILED


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A library exception's message as one short line, for wrapping into a TrtforgeError."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]
