"""Typed errors: the CLI turns each into one line on stderr and an exit code.

Exit codes are part of the CLI contract: 0 success, 1 a verification
(parity) failure, 2 unusable input.
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_UNUSABLE_INPUT = 2


class NormonnxError(Exception):
    """Base class of every error normonnx reports to a user."""

    exit_code = EXIT_UNUSABLE_INPUT


class UnusableInputError(NormonnxError):
    """A file, argument or model normonnx cannot work on; the message says which and why."""


class ModelLoadError(UnusableInputError):
    """An ONNX file that is missing, malformed, hostile or unsupported."""


class CheckpointError(UnusableInputError):
    """A checkpoint that cannot be loaded safely."""


class ExportError(UnusableInputError):
    """A torch model that could not be exported as asked."""


class OutputError(NormonnxError):
    """An output path normonnx refuses to write (for example the input itself)."""


class MissingKernelError(UnusableInputError):
    """onnxruntime has no kernel for an op of the model: a custom op whose library was not given."""


class VerificationError(NormonnxError):
    """The candidate model does not match its reference within tolerance."""

    exit_code = EXIT_VERIFY_FAILED


class RuntimeUnavailableError(NormonnxError):
    """An execution provider or optional package that is not present here."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(error: BaseException) -> str:
    """An exception as one line: its first non-empty message line (terminal colour codes removed), or its type name."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
