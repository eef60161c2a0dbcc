"""Every code block of the README runs as written, in order, in one folder; and the table of
figures it quotes after a block is what that block prints.

Python blocks run in one namespace (later blocks may use what earlier ones made); ``sh``
blocks run line by line with the ``multilevel`` command of this environment. The set-up
block (``make demo``, ``make test``) is the one not run here: it installs the environment
these tests run in. An untagged block right after a Python block is output that block
prints: its numbers must match.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the README, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(README.read_text())]


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+|-?\d+(?=\s|$)", text)]


def run_sh(text: str, cwd: Path) -> None:
    cli = [sys.executable, "-m", "multilevel.cli"]
    for line in text.splitlines():
        command = line.split("  #")[0].strip()
        if not command:
            continue
        argv = shlex.split(command)
        assert argv[0] == "multilevel", f"README sh line is not a multilevel command: {line}"
        done = subprocess.run([*cli, *argv[1:], *(["--no-progress"] if argv[1] in ("fit", "resume", "demo") else [])],
                              cwd=cwd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "MPLBACKEND": "Agg"})
        assert done.returncode == 0, f"README command failed: {command}\n{done.stderr}"


@pytest.mark.long
def test_readme_blocks_run_as_written(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    found = blocks()
    ran = 0
    for i, (lang, text) in enumerate(found):
        if lang == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(text, f"README block {i}", "exec"), namespace)
            quoted = found[i + 1] if i + 1 < len(found) and found[i + 1][0] == "" else None
            if quoted is not None:
                expected = numbers(quoted[1])
                assert expected, "quoted output without numbers"
                got = numbers(out.getvalue().split(quoted[1].splitlines()[0].split()[0])[-1])[:len(expected)]
                assert got == pytest.approx(expected, abs=0.011), f"README block {i} prints other figures"
            ran += 1
        elif lang == "sh":
            if "make " in text:
                continue  # the set-up commands, which installed what runs this test
            run_sh(text, tmp_path)
            ran += 1
    assert ran >= 5
