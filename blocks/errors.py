"""Exception hierarchy shared by every package of the project."""

from __future__ import annotations


class BinaryFaceError(Exception):
    """Root of every error this project raises on purpose."""


class SpecError(BinaryFaceError, ValueError):
    """A block spec or search space is invalid; nothing was built.

    ``path`` is the key path inside the document (``blocks[2].kernel_size``) and ``line``
    the 1-based YAML line, when known.
    """

    def __init__(self, message: str, path: str = "", line: int | None = None, source: str = "") -> None:
        self.message = message
        self.path = path
        self.line = line
        self.source = source
        where = source
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        prefix = ", ".join(part for part in (where, path) if part)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class SpecTypeError(SpecError, TypeError):
    """A spec value has the wrong type (a string where an integer belongs, for example)."""


class ConversionError(BinaryFaceError):
    """LCE conversion or interpreter allocation of a built model failed."""
