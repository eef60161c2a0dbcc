"""The package's one exception type for bad input."""

from __future__ import annotations


class ModelError(ValueError):
    """Raised for input the package cannot use.

    The message names the column, term or argument at fault and says what to do.
    The command line prints it as one line on stderr and exits with status 2.
    """
