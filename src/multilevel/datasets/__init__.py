"""Bundled classic multilevel data sets (sources in ``README.md`` beside this file)."""

from __future__ import annotations

from importlib import resources

import pandas as pd

#: Columns read as categorical labels rather than numbers, per data set.
_LABEL_COLUMNS: dict[str, list[str]] = {
    "hsb82": ["school"],
    "sleepstudy": ["Subject"],
    "epil": ["subject", "period"],
    "cbpp": ["herd", "period"],
    "insteval": ["s", "d", "studage", "lectage", "service", "dept"],
}

NAMES: tuple[str, ...] = tuple(_LABEL_COLUMNS)


def load_dataset(name: str) -> pd.DataFrame:
    """Return the bundled data set ``name`` (one of :data:`NAMES`) as a DataFrame.

    Grouping columns are read as strings, so that labels such as school ``"1224"`` are
    kept as labels and never treated as numbers.
    """
    from ..errors import ModelError

    if name not in _LABEL_COLUMNS:
        raise ModelError(f"unknown data set {name!r}; bundled data sets are: {', '.join(NAMES)}")
    path = resources.files(__name__).joinpath(f"{name}.csv")
    with resources.as_file(path) as p:
        return pd.read_csv(p, dtype={c: str for c in _LABEL_COLUMNS[name]})
