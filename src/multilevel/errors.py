"""The package's exception types for bad input and numerical failure, and the check that a saved fit's file exists."""

from __future__ import annotations

import os


class ModelError(ValueError):
    """Raised for input the package cannot use.

    The message names the column, term or argument at fault and says what to do.
    The command line prints it as one line on stderr and exits with status 2.
    """


class NumericalError(FloatingPointError):
    """Sampling met a numerical failure it could not recover from.

    The message says which parameter (and group) failed. ``fit`` holds the draws made up to
    the last completed block before the failure (or None), so nothing drawn is lost.
    """

    def __init__(self, message: str, fit: object = None):
        super().__init__(message)
        self.fit = fit


def require_fit_file(path: str | os.PathLike) -> None:
    """Refuse a saved fit's path that does not exist (checked before anything is read or imported)."""
    if not os.path.exists(path):
        raise ModelError(f"fit file {str(path)!r} not found")
