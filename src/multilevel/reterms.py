"""Random-effects factors of a model with several terms: one object per grouping factor.

A formula's random-effects terms (:mod:`multilevel.terms`, after lme4's expansions) are
gathered by grouping factor: ``(1 | s) + (1 | d)`` has two factors of one term each;
``(x || g)`` = ``(1 | g) + (0 + x | g)`` has one factor ``g`` with two terms. A factor's
group effects b_kj (one per level j) have covariance Sigma_k, block-diagonal with one
block per term: the terms of one factor are uncorrelated (lme4's ``||``), the expressions
inside one term correlated.

Each :class:`FactorTerms` holds, as MixedModels.jl's ``ReMat`` does, the row-to-level index,
the per-row covariates Z_k (rows x q_k, never the dense rows x (levels x q_k) matrix) and
the labels; the sampler's statistics are built from these blocks
(:mod:`multilevel.blockstats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import ModelError
from .factors import GroupingFactor, grouping_factor
from .terms import RandomTerm


@dataclass(frozen=True)
class FactorTerms:
    """The random effects of one grouping factor.

    Attributes
    ----------
    factor : the grouping factor (name, row-to-level index, level labels).
    terms : the factor's random-effects terms, in formula order.
    Z : (N, q) covariates of the factor's varying expressions, the terms' columns side by
        side, rows in the design's row order.
    names : the q column labels (``Intercept``, ``x``), unique within the factor.
    blocks : the columns of each term: Sigma_k is block-diagonal with these blocks.
    mean_index : (q,) the position in the fixed effects of each column's population mean
        (the same label in the fixed part), or -1 where the mean is 0 (``(0 + x | g)``
        without ``x`` in the fixed part).
    matrices : the ``formulae`` design matrices of each term (to evaluate new data alike).
    """

    factor: GroupingFactor
    terms: tuple[RandomTerm, ...]
    Z: np.ndarray
    names: tuple[str, ...]
    blocks: tuple[tuple[int, ...], ...]
    mean_index: np.ndarray
    matrices: tuple[Any, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        return self.factor.name

    @property
    def q(self) -> int:
        return len(self.names)

    @property
    def n_levels(self) -> int:
        return self.factor.n_levels

    @property
    def labels(self) -> np.ndarray:
        return self.factor.labels

    @property
    def index(self) -> np.ndarray:
        return self.factor.index

    @property
    def correlated(self) -> bool:
        """True when a block has more than one column (a covariance to estimate)."""
        return any(len(b) > 1 for b in self.blocks)

    def block_mask(self) -> np.ndarray:
        """(q, q) True where Sigma_k may be non-zero (within a block)."""
        mask = np.zeros((self.q, self.q), dtype=bool)
        for b in self.blocks:
            mask[np.ix_(b, b)] = True
        return mask


def group_terms(terms: Sequence[RandomTerm]) -> list[tuple[str, list[RandomTerm]]]:
    """The terms gathered by factor name, factors in order of first appearance."""
    out: dict[str, list[RandomTerm]] = {}
    for t in terms:
        out.setdefault(t.factor, []).append(t)
    return list(out.items())


def factor_terms(name: str, terms: Sequence[RandomTerm], frame: pd.DataFrame, term_matrices: Sequence[Any],
                 column_labels: Any, fixed_names: Sequence[str], formula: str) -> FactorTerms:
    """The :class:`FactorTerms` of factor ``name`` from its terms' evaluated ``formulae``
    matrices (``term_matrices``, one per term; ``column_labels`` names their columns)."""
    columns, names, blocks = [], [], []
    for term, matrices in zip(terms, term_matrices):
        labels = column_labels(matrices.common)
        clash = [n for n in labels if n in names]
        if clash:
            raise ModelError(f"formula {formula!r} has {clash[0]!r} in two random-effects terms of factor {name!r}; "
                             "keep each expression in one term of a factor")
        start = len(names)
        names.extend(labels)
        blocks.append(tuple(range(start, len(names))))
        columns.append(np.asarray(matrices.common.design_matrix, dtype=float))
    Z = np.ascontiguousarray(np.hstack(columns))
    position = {n: i for i, n in enumerate(fixed_names)}
    mean_index = np.array([position.get(n, -1) for n in names], dtype=np.int64)
    return FactorTerms(factor=grouping_factor(frame, terms[0]), terms=tuple(terms), Z=Z, names=tuple(names),
                       blocks=tuple(blocks), mean_index=mean_index, matrices=tuple(term_matrices))


def check_factors(factors: Sequence[FactorTerms], n_obs: int, gaussian: bool, rows: bool = True) -> None:
    """Refuse degenerate factors in one line each: a factor with one level, two factors that
    group the rows identically (``(1 | a/b)`` where every a has one b; only with ``rows``, the
    factors' row indices at hand), and, for the Gaussian family, a factor with a level per row
    (confounded with sigma2, as lme4 refuses)."""
    for f in factors:
        if f.n_levels < 2:
            raise ModelError(f"grouping factor {f.name!r} has {f.n_levels} level; a random-effects factor needs at "
                             f"least 2 levels: remove its terms or move {f.name!r} to the fixed part")
        if gaussian and f.n_levels >= n_obs:
            raise ModelError(f"grouping factor {f.name!r} has {f.n_levels} levels for {n_obs} rows (one row per "
                             "level), so its variance is confounded with the residual variance sigma2 (lme4 refuses "
                             "this too); remove its terms, or use a GLM family, where an observation-level effect "
                             "is identified")
    seen: dict[tuple, str] = {}
    for f in factors if rows else ():
        # two factors group the rows alike when each level of one is exactly one level of the other
        first = np.zeros(f.n_levels, dtype=np.int64)
        first[f.index[::-1]] = np.arange(len(f.index))[::-1]
        canonical = np.argsort(np.argsort(first))[f.index]
        key = (f.n_levels, canonical.tobytes())
        if key in seen:
            raise identical_grouping(seen[key], f.name)
        seen[key] = f.name


def identical_grouping(first: str, second: str) -> ModelError:
    """The one-line refusal of two factors that group the rows identically."""
    return ModelError(f"grouping factors {first!r} and {second!r} group the rows identically (each level of one is "
                      "one level of the other), so their variances are not identified; remove the terms of one of them")


__all__ = ["FactorTerms", "check_factors", "identical_grouping", "factor_terms", "group_terms"]
