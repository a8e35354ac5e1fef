"""Errors raised by microexport.

`Error` and its subclasses are *user* errors: bad input, a missing tool, an unsupported model. The
CLI prints them as one line and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class Error(Exception):
    """A user-facing error: one line naming the problem and what to do about it."""

    exit_status = 2

    def one_line(self) -> str:
        """The message folded onto a single line."""
        return " ".join(str(self).split())


class ModelError(Error):
    """The model cannot be read or compiled (corrupt file, unsupported operator, dynamic shape)."""


class UnsupportedOperator(ModelError):
    """The model uses an operator microexport cannot lower."""

    def __init__(self, op: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"unsupported operator '{op}'{extra}: replace it in the model or open an issue"
        )
        self.op = op


class DynamicShape(ModelError):
    """A tensor has a dimension not known at compile time."""


class InputError(Error):
    """A runtime input (.npy file) does not match the model."""


class MissingTool(Error):
    """An external program is not installed."""

    def __init__(self, program: str, package: str) -> None:
        super().__init__(f"'{program}' not found: install it with 'apt-get install {package}'")
        self.program = program
        self.package = package


class Unsupported(Error):
    """The platform cannot do what was asked (flash an emulated board, `--port` without serial)."""


class DoesNotFit(Error):
    """The model needs more flash or RAM than the board has."""


class TirJsonError(Error):
    """A `microexport-tir` / `microexport-graph` document is malformed or invalid, or a TIR node
    has no mapping in the format. The message starts with the JSON path of the problem."""
