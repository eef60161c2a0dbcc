"""validation/render.py: a partial run of ``make validate`` keeps the rows of the runs it did not
rerun; ``--fresh`` (a full run) drops them. (The figures are stubbed: ArviZ's take seconds.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

import sbc

ROOT = Path(__file__).resolve().parents[1]


def render_module():
    spec = importlib.util.spec_from_file_location("render", ROOT / "validation" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_result(folder: Path, test: str, shift: int, monkeypatch) -> None:
    """One run's JSON as tests/sbc.py writes it: 40 replications of two parameters, L = 9."""
    rng = np.random.default_rng(shift)
    ranks = (rng.integers(0, 10, (40, 2)) + shift) % 10
    monkeypatch.setenv("MULTILEVEL_SBC_OUT", str(folder))
    monkeypatch.setenv("PYTEST_CURRENT_TEST", f"tests/test_x.py::{test} (call)")
    sbc.collect([{"a": int(r[0]), "b": int(r[1])} for r in ranks], L=9, bins=5)


def rows(page: Path) -> dict[str, str]:
    return {line.split("](")[0][3:]: line for line in page.read_text().splitlines() if line.startswith("| [")}


def test_a_partial_run_keeps_the_other_rows_and_fresh_drops_them(tmp_path, monkeypatch):
    render = render_module()
    monkeypatch.setattr(render, "figure", lambda record, path: path.write_bytes(b""))
    page = tmp_path / "docs" / "validation.md"
    first, second = tmp_path / "first", tmp_path / "second"
    for name in ("test_full[one factor]", "test_full[two]"):
        write_result(first, name, 0, monkeypatch)
    record = json.loads((first / "test_full_one_factor_.json").read_text())  # a test id with a space
    assert record["run_at"] and record["test"] == "tests/test_x.py::test_full[one factor]"
    assert render.main(first, page) == 0
    before = rows(page)
    assert list(before) == ["test_full[one factor]", "test_full[two]"]
    assert (page.parent / "validation" / "test_full_one_factor.png").exists()
    assert "(validation/test_full_one_factor.png)" in before["test_full[one factor]"]

    write_result(second, "test_full[two]", 3, monkeypatch)  # rerun one of them, its ranks changed
    write_result(second, "test_other", 1, monkeypatch)
    assert render.main(second, page) == 0
    after = rows(page)
    assert list(after) == ["test_full[one factor]", "test_full[two]", "test_other"]
    assert after["test_full[one factor]"] == before["test_full[one factor]"]  # kept as it was
    assert after["test_full[two]"] != before["test_full[two]"]  # rerun: its new p-value
    text = page.read_text()
    for name in after:
        assert f"### {name}" in text

    assert render.main(second, page, fresh=True) == 0
    assert list(rows(page)) == ["test_full[two]", "test_other"]
