"""Running the command line inside the test process."""

from __future__ import annotations

import contextlib
import io
import warnings

from multilevel.cli import main


def run_main(argv: list) -> tuple[int, str, str]:
    """Run ``multilevel.cli.main(argv)`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = warnings.showwarning
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in argv])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        warnings.showwarning = saved
    return code, out.getvalue(), err.getvalue()
