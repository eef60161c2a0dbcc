"""Grouping factors: which level of a random-effects term's factor each row belongs to.

A factor is one data column (``g``) or the combinations of several (``batch:cask``, the
interaction lme4 makes of ``(1 | batch/cask)``): casks ``'a'..'c'`` reused in every batch
are different levels ``'1:a'``, ``'2:a'``, ... Levels are the combinations present in the
data, sorted by the columns in turn (each column in its own order: numbers as numbers).

Labels are strings, the same however the data were read (:func:`label_key`: ``1224``,
``1224.0`` and ``"1224"`` are one level ``"1224"``, as R spells factor levels); an
interaction's label joins its columns' labels with ``:``, as lme4 does.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import ModelError

if TYPE_CHECKING:  # annotations only: reading a saved fit needs no formula parser
    from .terms import RandomTerm


def label_key(value: Any) -> str:
    """A group label as a string key, so that 1224, 1224.0 and "1224" name the same group
    (a CSV read back gives numbers where the fitted data had strings, and vice versa)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class GroupingFactor:
    """The levels of one grouping factor on the rows of the data.

    Attributes
    ----------
    name : the factor as the formula names it (``"g"``, ``"batch:cask"``).
    columns : the data columns it is made of.
    index : (N,) int64, the level of each row, 0..n_levels-1, in the data's row order.
    levels : the levels as in the data (a column's values; for an interaction, its labels).
    labels : (n_levels,) the levels as strings (:func:`label_key`), ``:``-joined for an
        interaction: how a fit names them.
    """

    name: str
    columns: tuple[str, ...]
    index: np.ndarray
    levels: pd.Index
    labels: np.ndarray

    @property
    def n_levels(self) -> int:
        return int(self.labels.shape[0])


def row_labels(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """Each row's level label of the factor made of ``columns``: the column's label, or the
    columns' labels joined with ``:`` (how new data find a fitted level)."""
    keys = [[label_key(v) for v in frame[c].tolist()] for c in columns]
    return [":".join(parts) for parts in zip(*keys)]


def grouping_factor(frame: pd.DataFrame, term: RandomTerm) -> GroupingFactor:
    """The grouping factor of ``term`` on the rows of ``frame`` (which holds its columns,
    without missing values).

    Raises :class:`ModelError` when two combinations of an interaction's columns read as
    one label (``'a:b'`` + ``'c'`` and ``'a'`` + ``'b:c'``, or 1 and ``"1"``).
    """
    columns = term.factor_columns
    if len(columns) == 1:
        index, levels = pd.factorize(frame[columns[0]], sort=True)
        labels = np.asarray([label_key(v) for v in np.asarray(levels, dtype=object)], dtype=str)
    else:
        index, combos = pd.factorize(pd.MultiIndex.from_frame(frame[list(columns)]), sort=True)
        labels = np.asarray([":".join(label_key(v) for v in combo) for combo in combos], dtype=str)
        if len(set(labels.tolist())) < len(labels):
            seen: set[str] = set()
            clash = next(s for s in labels.tolist() if s in seen or seen.add(s))
            raise ModelError(
                f"grouping factor {term.factor!r} has two combinations of {', '.join(columns)} labelled {clash!r}; "
                "make the labels of its columns distinct (no ':' inside them, not both 1 and '1')"
            )
        levels = pd.Index(labels)
    return GroupingFactor(name=term.factor, columns=columns, index=np.asarray(index, dtype=np.int64),
                          levels=pd.Index(levels, name=term.factor), labels=labels)


__all__ = ["GroupingFactor", "grouping_factor", "label_key", "row_labels"]
