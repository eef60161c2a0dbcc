"""Design: model arrays sorted by group, built once from a formula and a DataFrame.

Rows are sorted by group once, so that every group is a contiguous slice
``starts[j]:starts[j+1]`` and per-group sums are segment sums. The varying terms are
kept as the N x p per-row covariates ``X`` plus an integer group index, never as the
dense N x (m p) group design matrix.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from formulae import design_matrices
from formulae.environment import Environment
from formulae.terms import Variable

from .errors import ModelError
from .factors import grouping_factor, row_labels
from .formula import INTERCEPT, FormulaSpec
from .rformula import FORMULA_NAMESPACE, display_labels, display_name

NaAction = Literal["drop", "raise"]


#: a numeric data column with this many distinct integer values is pointed out as maybe a category
FEW_INTEGER_VALUES = (3, 6)
#: categorical levels listed in the report up to this many (else only their count)
LEVELS_SHOWN = 6


@dataclass(frozen=True)
class Predictor:
    """How one variable or expression of the formula's fixed and varying parts was read,
    as lme4's summary shows contrasts.

    Attributes
    ----------
    name : the variable or expression as written (``ses``, ``factor(YEAR)``, ``log(x)``).
    kind : ``"numeric"`` or ``"categorical"``.
    levels : the levels of a categorical predictor, in coding order; () for numeric ones.
    coding : how a categorical predictor is coded: ``"treatment"`` (dummies against
        ``reference``, lme4's default), ``"sum"`` (sum-to-zero contrasts, ``reference`` the
        level coded -1), ``"full"`` (one column per level, no intercept) or ``"custom"``.
    reference : the reference (or sum-coded) level, or None.
    integer_values : for a numeric data column with 3 to 6 distinct integer values (YEAR
        95, 96, 97), those values: read as numbers it has one slope, not a level each.
    """

    name: str
    kind: str
    levels: tuple = ()
    coding: str | None = None
    reference: Any = None
    integer_values: tuple = ()


@dataclass
class Design:
    """Arrays of one multilevel model, rows sorted by group.

    Attributes
    ----------
    y : (N,) response.
    X : (N, p) covariates of the varying terms (beta_j), columns ``varying_terms``.
    Z : (N, r) covariates of the fixed-only terms (alpha), columns ``fixed_terms``.
    group : (N,) integer group index in 0..m-1, non-decreasing.
    starts : (m + 1,) row offsets: group j is rows ``starts[j]:starts[j+1]``.
    group_labels : the m group labels, as in the data (an interaction factor's as
        ``:``-joined strings, :mod:`multilevel.factors`).
    theta_free : (p,) True where the varying term also stands in the fixed part and so
        has a population mean theta_k; False where its mean is fixed at 0.
    row_labels : the data's index labels of the rows used, in sorted order.
    offset : (N,) known part of the linear predictor (``offset(...)`` terms, ``offset=``).
    trials : (N,) binomial trials (ones for the other families).
    weights : (N,) precision weights w_i of the Gaussian family (observation i has variance
        sigma2 / w_i, lme4's ``weights``), or None for an unweighted model.
    response_kind, response_levels : how ``formulae`` read the response.
    frame : the formula's columns of the rows used, in sorted order: what the design is
        rebuilt from (after loading a saved fit, or to evaluate new data consistently).
    predictors : how each variable and expression of the fixed and varying parts was read
        (numeric, or categorical with its levels and coding), see :func:`predictor_lines`.
    """

    spec: FormulaSpec
    y: np.ndarray
    X: np.ndarray
    Z: np.ndarray
    group: np.ndarray
    starts: np.ndarray
    group_labels: pd.Index
    varying_terms: list[str]
    fixed_terms: list[str]
    theta_free: np.ndarray
    row_labels: pd.Index
    frame: pd.DataFrame = field(default=None, repr=False)
    offset: np.ndarray = field(default=None, repr=False)
    offset_argument: np.ndarray | None = field(default=None, repr=False)
    trials: np.ndarray = field(default=None, repr=False)
    weights: np.ndarray | None = field(default=None, repr=False)
    response_kind: str = "numeric"
    response_levels: Any = None
    formulae_fixed: Any = field(default=None, repr=False)
    formulae_varying: Any = field(default=None, repr=False)
    predictors: tuple[Predictor, ...] = ()

    @property
    def n_obs(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.starts.shape[0] - 1)

    @property
    def group_sizes(self) -> np.ndarray:
        return np.diff(self.starts)


def _column_labels(matrices: Any) -> list[str]:
    """Column names of a ``formulae`` common design matrix, in column order, in the user's
    spelling (:func:`multilevel.rformula.display_labels`)."""
    names: list[str] = []
    for term in matrices.terms.values():
        names.extend(display_labels(term))
    return names


def _coding(matrix: np.ndarray, levels: list) -> tuple[str, Any]:
    """The coding of a categorical predictor from its contrast matrix (levels x columns)."""
    rows, cols = matrix.shape
    unit = np.all(np.isin(matrix, (0.0, 1.0)), axis=1) & (matrix.sum(axis=1) == 1)
    if cols == rows and np.array_equal(matrix, np.eye(rows)):
        return "full", None
    if cols == rows - 1:
        zero = np.all(matrix == 0, axis=1)
        minus = np.all(matrix == -1, axis=1)
        for kind, special in (("treatment", zero), ("sum", minus)):
            if special.sum() == 1 and np.all(unit[~special]):
                return kind, levels[int(np.flatnonzero(special)[0])]
    return "custom", None


def _integer_values(col: pd.Series) -> tuple:
    """The distinct values of a numeric column when they are a few integers, else ()."""
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return ()
    values = pd.unique(col.to_numpy())
    lo, hi = FEW_INTEGER_VALUES
    if not lo <= len(values) <= hi or not np.all(np.mod(values, 1) == 0):
        return ()
    return tuple(v.item() if isinstance(v, np.generic) else v for v in np.sort(values))


def read_predictors(matrices: Sequence[Any], frame: pd.DataFrame) -> tuple[Predictor, ...]:
    """How each variable and expression of the ``formulae`` common design ``matrices`` was
    read, in formula order, each once (offsets, the intercept and the response left out)."""
    seen: dict[str, Predictor] = {}
    for matrix in matrices:
        for term in matrix.terms.values() if matrix is not None else ():
            for component in getattr(term, "components", []):
                name = display_name(component.name)
                if name in seen or component.kind not in ("numeric", "categoric"):
                    continue
                if component.kind == "numeric":
                    plain = isinstance(component, Variable) and component.name in frame.columns
                    seen[name] = Predictor(name, "numeric",
                                           integer_values=_integer_values(frame[component.name]) if plain else ())
                    continue
                levels = [v.item() if isinstance(v, np.generic) else v for v in component.levels]
                coding, reference = _coding(np.asarray(component.contrast_matrix.matrix, dtype=float), levels)
                seen[name] = Predictor(name, "categorical", tuple(levels), coding, reference)
    return tuple(seen.values())


def _level(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _describe(p: Predictor) -> str:
    """One predictor's clause of the report's ``Predictors:`` line."""
    if p.kind == "numeric":
        values = ", ".join(map(_level, p.integer_values))
        return (f"{p.name} numeric ({len(p.integer_values)} distinct integer values: {values}; "
                f"write factor({p.name}) to treat it as a category)")
    n = len(p.levels)
    shown = f"{n} levels: {', '.join(map(_level, p.levels))}" if n <= LEVELS_SHOWN else f"{n} levels"
    coding = {"treatment": f"reference {_level(p.reference)}", "full": "a column each",
              "sum": f"sum-to-zero contrasts, {_level(p.reference)} coded -1"}.get(p.coding, "custom contrasts")
    return f"{p.name} categorical ({shown}; {coding})"


def predictor_lines(design: Design | None, width: int = 100) -> list[str]:
    """The report's block on how each predictor was read, wrapped at ``width``, e.g.
    ``Predictors: ses numeric; sector categorical (2 levels: 'Catholic', 'Public'; reference
    'Catholic'); YEAR numeric (3 distinct integer values: 95, 96, 97; write factor(YEAR) to
    treat it as a category)``. Plain numeric predictors share one clause (the first 8 named).
    Empty for no design (a fit saved without its data) or no predictors."""
    predictors = design.predictors if design is not None else ()
    if not predictors:
        return []
    plain = [p.name for p in predictors if p.kind == "numeric" and not p.integer_values]
    clauses = [_describe(p) for p in predictors if p.kind == "categorical" or p.integer_values]
    if plain:
        names = ", ".join(plain[:8]) + (f" and {len(plain) - 8} more" if len(plain) > 8 else "")
        clauses.insert(0, f"{names} numeric")
    return textwrap.wrap("Predictors: " + "; ".join(clauses), width=width, subsequent_indent=" " * 12,
                         break_long_words=False, break_on_hyphens=False)


def missing_rows(used: pd.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
    """The rows with a missing value, or a non-finite number, in a column of ``used``, and per
    column how many it has (the rows :func:`select_rows` drops; the Dask engine's partitions
    apply the same rule)."""
    bad = np.zeros(len(used), dtype=bool)
    per_column = {}
    for name in used.columns:
        col = used[name]
        mask = col.isna().to_numpy().copy()
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            mask |= ~np.isfinite(col.to_numpy(dtype=float, na_value=np.nan))
        per_column[name] = int(mask.sum())
        bad |= mask
    return bad, per_column


def select_rows(data: pd.DataFrame, spec: FormulaSpec, na_action: NaAction) -> pd.DataFrame:
    """Check the formula's columns exist and drop (or refuse) rows with missing values.

    Missing or infinite values in a used column drop the row with a warning giving the
    count (lme4's ``na.omit``), or raise with ``na_action="raise"``.
    """
    missing = [v for v in spec.variables if v not in data.columns]
    if missing:
        cols = ", ".join(map(str, data.columns[:12]))
        raise ModelError(
            f"column {missing[0]!r} named in the formula is not in the data "
            f"(columns are: {cols}{', ...' if data.shape[1] > 12 else ''})"
        )
    if na_action not in ("drop", "raise"):
        raise ModelError(f"na_action must be 'drop' or 'raise', not {na_action!r}")
    used = data[list(spec.variables)]
    bad, per_column = missing_rows(used)
    n_bad = int(bad.sum())
    if n_bad:
        cols = [v for v in spec.variables if per_column[v]]
        if na_action == "raise":
            raise ModelError(
                f"{n_bad} rows have missing or infinite values in {', '.join(cols) or 'used columns'}; "
                "remove them or use na_action='drop'"
            )
        warnings.warn(f"dropped {n_bad} rows with missing or infinite values in {', '.join(cols)}", stacklevel=4)
        columns = spec.group_columns
        before = dict.fromkeys(row_labels(used.loc[used[list(columns)].notna().all(axis=1)], columns))
        data = data.loc[~bad]
        lost = [g for g in before if g not in set(row_labels(data, columns))]
        if lost:
            shown = ", ".join(map(str, lost[:5])) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
            warnings.warn(f"{len(lost)} groups of {spec.group!r} had no rows left and are dropped: {shown}", stacklevel=4)
    if data.shape[0] == 0:
        raise ModelError("no rows left after dropping missing values")
    return data


def _row_values(value: Any, data: pd.DataFrame, name: str, example: str) -> np.ndarray:
    """One finite number per row of ``data``, from a column name or the values themselves
    (the ``offset=`` and ``weights=`` arguments)."""
    if isinstance(value, str):
        if value not in data.columns:
            raise ModelError(f"{name} column {value!r} is not in the data")
        values = data[value].to_numpy()
    else:
        values = np.asarray(value)
        if values.shape != (len(data),):
            raise ModelError(f"{name} must have one value per row ({len(data)}), got shape {values.shape}")
    if values.dtype.kind not in "biuf" or not np.all(np.isfinite(values.astype(float))):
        raise ModelError(f"{name} must be finite numbers ({example})")
    return values.astype(float)


def _offset_argument(offset: Any, data: pd.DataFrame) -> np.ndarray:
    return _row_values(offset, data, "offset", "e.g. offset=np.log(exposure)")


def _weights_argument(weights: Any, data: pd.DataFrame) -> np.ndarray:
    """Precision weights from a column name or one value per row: finite and positive numbers.

    Zero weights are refused rather than dropped: a zero-weight row adds nothing to the
    likelihood, and counting it in sigma2's degrees of freedom would be wrong.
    """
    values = _row_values(weights, data, "weights", "precision weights: row i has variance sigma2 / w_i")
    if np.any(values <= 0):
        raise ModelError(f"weights must be positive; {int(np.sum(values <= 0))} rows have weight <= 0 "
                         "(drop zero-weight rows from the data)")
    return values


def mean_is_free(varying_names: Sequence[str], fixed_names: Sequence[str]) -> np.ndarray:
    """theta_free of a term's design columns: True where a varying column also stands in the
    fixed part (by its label), so its group effects have a population mean theta_k; False
    where the mean is fixed at 0 (lme4: ``y ~ 1 + (0 + x | g)``)."""
    return np.array([name in fixed_names for name in varying_names], dtype=bool)


def _check_full_rank(M: np.ndarray, names: list[str]) -> None:
    """Refuse a fixed-effects design ``M`` (columns ``names``) with more columns than rows or
    collinear columns, naming them."""
    if M.shape[1] > M.shape[0]:
        raise ModelError(
            f"the fixed-effects design has {M.shape[1]} columns ({', '.join(names)}) but only {M.shape[0]} rows; "
            "use fewer fixed-effect terms or more data"
        )
    if M.shape[1]:
        scale = np.sqrt(np.mean(M * M, axis=0))
        scale[scale == 0] = 1.0
        _, sv, vt = np.linalg.svd(M / scale, full_matrices=False)
        tol = max(M.shape) * np.finfo(float).eps * sv[0] * 1e3
        if sv[-1] <= tol:
            null = np.abs(vt[-1])
            involved = [names[i] for i in np.flatnonzero(null > 1e-6 * null.max())]
            raise ModelError(
                f"the fixed-effects design is rank deficient: columns {', '.join(involved)} are collinear; "
                "drop or combine one of them"
            )


def check_identifiable(design: "Design") -> None:
    """Refuse a rank-deficient fixed design, naming the collinear columns; warn about varying
    terms the groups cannot identify."""
    M = np.hstack([design.X[:, design.theta_free], design.Z])
    names = [t for t, f in zip(design.varying_terms, design.theta_free) if f] + list(design.fixed_terms)
    _check_full_rank(M, names)
    p = design.X.shape[1]
    for k, term in enumerate(design.varying_terms):
        if term == INTERCEPT:
            continue
        col = design.X[:, k]
        spread = np.maximum.reduceat(col, design.starts[:-1]) - np.minimum.reduceat(col, design.starts[:-1])
        if not np.any(spread > 1e-12 * (np.abs(col).max() or 1.0)):
            warnings.warn(
                f"varying term {term!r} is constant within every group of {design.spec.group!r}: its group-specific "
                "effects are identified by the prior alone; consider removing it from the group-specific part",
                stacklevel=4,
            )
    if np.max(design.group_sizes) <= p and p > 1:
        warnings.warn(
            f"no group has more rows than the {p} varying terms: the group-specific effects are identified mostly "
            "by the prior; consider fewer varying terms",
            stacklevel=4,
        )


def check_group_counts(design: "Design", gaussian: bool) -> None:
    """lme4's checks of the grouping factor against the rows (``checkNlevels``, ``checkZdims``),
    for the Gaussian family: refuse as many groups as rows, or no more rows than group effects
    (groups x varying terms), where the group-effect variances are confounded with the
    residual variance sigma2. GLMs have no residual variance: there an observation-level
    effect such as ``(1 | obs)`` is identified and allowed."""
    if not gaussian:
        return
    n, m, p = design.n_obs, design.n_groups, design.X.shape[1]
    factor = design.spec.group
    if m >= n:
        raise ModelError(
            f"grouping factor {factor!r} has {m} levels for {n} rows (one row per level), so its variance is "
            f"confounded with the residual variance sigma2 (lme4 refuses this too); remove the term "
            f"({design.spec.varying_rhs()} | {factor}), "
            "or use a GLM family (poisson, binomial, bernoulli), where an observation-level effect is identified"
        )
    if n <= m * p:
        raise ModelError(
            f"the {n} rows are no more than the {m * p} group effects ({m} groups of {factor!r} x {p} varying terms), "
            "so the group-effect variances are confounded with the residual variance sigma2 (lme4 refuses this too); "
            "use fewer varying terms or more rows per group"
        )


def _check_finite(M: np.ndarray, names: list[str], formula: str) -> None:
    """Refuse design columns with infinite or missing values (``log(x)`` of x <= 0), naming them."""
    bad = ~np.isfinite(M)
    if bad.any():
        counts = bad.sum(axis=0)
        k = int(np.flatnonzero(counts)[0])
        raise ModelError(f"term {names[k]!r} of formula {formula!r} is not finite in {counts[k]} rows "
                         "(e.g. the log of 0 or of a negative number); transform or filter the data so that it is finite")


def _evaluate(spec: FormulaSpec, data: pd.DataFrame, parts: list[str]) -> list[Any]:
    """``formulae`` design matrices of ``parts`` (formula texts) on ``data``, with numpy, pandas
    and R's functions in scope; an evaluation error becomes one line naming the formula."""
    try:
        env = Environment([FORMULA_NAMESPACE])  # numpy, pandas and R's functions (multilevel.rformula)
        with np.errstate(divide="ignore", invalid="ignore"):  # log(0) and the like: refused later, by name
            return [design_matrices(part, data, na_action="error", env=env) for part in parts]
    except ModelError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot evaluate formula {spec.formula!r} on the data: {detail}") from None


def _response(fixed: Any) -> np.ndarray:
    response = np.asarray(fixed.response.design_matrix)
    if response.ndim == 2 and response.shape[1] == 1:
        response = response[:, 0]
    return response


def _rows(spec: FormulaSpec, data: pd.DataFrame, na_action: NaAction, offset: Any, weights: Any
          ) -> tuple[pd.DataFrame, Any, np.ndarray | None, Any]:
    """The rows used (missing values dropped or refused), the ``offset=`` values on them (0.0
    when none) and the precision weights on them (None when none), and the offset as given."""
    if offset is not None and not isinstance(offset, str):
        offset = pd.Series(_offset_argument(offset, data), index=data.index)
    if weights is not None and not isinstance(weights, str):
        weights = pd.Series(_weights_argument(weights, data), index=data.index)
    data = select_rows(data, spec, na_action)
    extra = _offset_argument(offset, data) if isinstance(offset, str) else (
        offset.loc[data.index].to_numpy() if offset is not None else 0.0)
    w = _weights_argument(weights, data) if isinstance(weights, str) else (
        weights.loc[data.index].to_numpy() if weights is not None else None)
    return data, extra, w, offset


def build_design(spec: FormulaSpec, data: pd.DataFrame, na_action: NaAction = "drop", offset: Any = None,
                 weights: Any = None, gaussian: bool = True, crossed: bool = False) -> "Design | CrossedDesign":
    """Evaluate ``spec`` on ``data`` with ``formulae`` and sort the rows by group.

    ``offset(...)`` terms of the formula and the ``offset`` argument (a column name or
    one value per row) are added into the known part of the linear predictor.
    ``weights`` (a column name or one value per row; Gaussian precision weights) follow
    the rows kept and their sorting. A formula with several random-effects terms, or any
    formula with ``crossed`` (a sampler of several terms run on one), gives a
    :class:`CrossedDesign` (:func:`build_crossed_design`; ``gaussian``: the family is Gaussian).
    """
    if len(spec.terms) > 1 or crossed:
        return build_crossed_design(spec, data, na_action, offset=offset, weights=weights, gaussian=gaussian)
    data, extra, w, offset = _rows(spec, data, na_action, offset, weights)
    fixed, varying = _evaluate(spec, data, [f"{spec.response} ~ {spec.fixed_rhs()}", spec.varying_rhs()])
    response = _response(fixed)
    F = np.asarray(fixed.common.design_matrix, dtype=float) if fixed.common is not None else np.empty((len(data), 0))
    fixed_names = _column_labels(fixed.common) if fixed.common is not None else []
    X = np.asarray(varying.common.design_matrix, dtype=float)
    varying_names = _column_labels(varying.common)
    _check_finite(F, fixed_names, spec.formula)
    _check_finite(X, varying_names, spec.formula)
    is_offset = [name.startswith("offset(") for name in fixed_names]
    off = F[:, [i for i, o in enumerate(is_offset) if o]].sum(axis=1) + extra
    theta_free = mean_is_free(varying_names, fixed_names)
    z_cols = [i for i, name in enumerate(fixed_names) if name not in varying_names and not is_offset[i]]
    Z = F[:, z_cols]

    factor = grouping_factor(data, spec.terms[0])
    order = np.argsort(factor.index, kind="stable")
    codes = factor.index[order]
    m = factor.n_levels
    starts = np.searchsorted(codes, np.arange(m + 1)).astype(np.int64)
    return Design(
        spec=spec,
        y=response[order],
        X=np.ascontiguousarray(X[order]),
        Z=np.ascontiguousarray(Z[order]),
        group=codes,
        starts=starts,
        group_labels=factor.levels,
        varying_terms=varying_names,
        fixed_terms=[fixed_names[i] for i in z_cols],
        theta_free=theta_free,
        row_labels=data.index[order],
        frame=data[list(spec.variables)].iloc[order],
        offset=np.ascontiguousarray(np.broadcast_to(off, (len(data),))[order], dtype=float),
        offset_argument=None if offset is None else np.broadcast_to(extra, (len(data),))[order].astype(float),
        trials=np.ones(len(data)),
        weights=None if w is None else np.ascontiguousarray(w[order], dtype=float),
        response_kind=str(getattr(fixed.response, "kind", "numeric")),
        response_levels=getattr(fixed.response, "levels", None),
        formulae_fixed=fixed,
        formulae_varying=varying,
        predictors=read_predictors([fixed.common, varying.common], data),
    )


@dataclass
class CrossedDesign:
    """Arrays of a model with several random-effects terms (crossed, nested or uncorrelated),
    rows in the data's order (no single sort serves several factors).

    The model: y = F a + sum_k Z_k b_k + e, with a the fixed effects (columns ``fixed_names``
    of F), and per grouping factor k (:class:`~multilevel.reterms.FactorTerms`) the level
    effects b_kj ~ MVN(0, Sigma_k). A fixed column that also varies in some factor is a
    ``theta`` term, the others ``alpha`` terms (fixed-only), as in one-factor models.

    Attributes
    ----------
    y : (N,) response. F : (N, p) fixed design, columns ``fixed_names``.
    theta_index, alpha_index : positions in F of the theta and alpha terms.
    factors : the grouping factors, in formula order.
    offset : (N,) known part of the linear predictor (``offset(...)`` terms and ``offset=``;
        zeros for the Gaussian family). offset_argument : the ``offset=`` part, or None.
    trials : (N,) binomial trials (ones for the other families). weights : precision weights or None.
    row_labels, frame, predictors, formulae_fixed, response_kind, response_levels : as in
        :class:`Design`.
    """

    spec: FormulaSpec
    y: np.ndarray
    F: np.ndarray
    fixed_names: list[str]
    theta_index: np.ndarray
    alpha_index: np.ndarray
    factors: tuple
    row_labels: pd.Index
    frame: pd.DataFrame = field(default=None, repr=False)
    offset: np.ndarray = field(default=None, repr=False)
    offset_argument: np.ndarray | None = field(default=None, repr=False)
    trials: np.ndarray = field(default=None, repr=False)
    weights: np.ndarray | None = field(default=None, repr=False)
    response_kind: str = "numeric"
    response_levels: Any = None
    formulae_fixed: Any = field(default=None, repr=False)
    predictors: tuple[Predictor, ...] = ()

    @property
    def n_obs(self) -> int:
        return int(self.y.shape[0])

    @property
    def theta_terms(self) -> list[str]:
        return [self.fixed_names[i] for i in self.theta_index]

    @property
    def alpha_terms(self) -> list[str]:
        return [self.fixed_names[i] for i in self.alpha_index]

    @property
    def fixed_terms(self) -> list[str]:
        """The fixed-only (alpha) terms, named as in one-factor designs."""
        return self.alpha_terms

    @property
    def n_groups(self) -> dict[str, int]:
        return {f.name: f.n_levels for f in self.factors}

    #: the rows are in memory (a :class:`~multilevel.distributed.design.PartitionedDesign`'s are not)
    in_memory = True

    def statistics(self, layout: Any) -> Any:
        """The Gaussian model's statistics of these rows
        (:func:`multilevel.blockstats.crossed_statistics`)."""
        from .blockstats import crossed_statistics

        return crossed_statistics(self, layout)


def build_crossed_design(spec: FormulaSpec, data: pd.DataFrame, na_action: NaAction = "drop", offset: Any = None,
                         weights: Any = None, gaussian: bool = True, check: bool = True) -> CrossedDesign:
    """Evaluate a formula with several random-effects terms on ``data``: the fixed design, and
    per grouping factor its covariates and level index (:mod:`multilevel.reterms`).
    Offsets (``offset(...)`` terms and the ``offset`` argument) go into ``offset`` for GLMs
    (``gaussian=False``) and are refused for the Gaussian family; degenerate factors are
    refused (:func:`multilevel.reterms.check_factors`) unless ``check`` is False (a sample of
    the rows, :mod:`multilevel.distributed.plan`)."""
    from .reterms import check_factors, factor_terms, group_terms

    if offset is not None and gaussian:
        raise ModelError("offset applies to the poisson, binomial and bernoulli families; "
                         "for gaussian subtract it from the response")
    data, extra, w, offset = _rows(spec, data, na_action, offset, weights)
    grouped = group_terms(spec.terms)
    parts = [f"{spec.response} ~ {spec.fixed_rhs()}"] + [t.rhs() for _, terms in grouped for t in terms]
    fixed, *term_matrices = _evaluate(spec, data, parts)
    F = np.asarray(fixed.common.design_matrix, dtype=float) if fixed.common is not None else np.empty((len(data), 0))
    fixed_names = _column_labels(fixed.common) if fixed.common is not None else []
    is_offset = np.array([name.startswith("offset(") for name in fixed_names], dtype=bool)
    if is_offset.any() and gaussian:
        raise ModelError("offset(...) applies to the poisson, binomial and bernoulli families; "
                         "for gaussian subtract it from the response")
    _check_finite(F, fixed_names, spec.formula)
    off = F[:, is_offset].sum(axis=1) + extra
    F, fixed_names = F[:, ~is_offset], [n for n, o in zip(fixed_names, is_offset) if not o]
    factors, k = [], 0
    for name, terms in grouped:
        mats = term_matrices[k:k + len(terms)]
        k += len(terms)
        f = factor_terms(name, terms, data, mats, _column_labels, fixed_names, spec.formula)
        _check_finite(f.Z, list(f.names), spec.formula)
        factors.append(f)
    if check:
        check_factors(factors, len(data), gaussian=gaussian)
    varying = {n for f in factors for n in f.names}
    theta_index = np.array([i for i, n in enumerate(fixed_names) if n in varying], dtype=np.int64)
    alpha_index = np.array([i for i, n in enumerate(fixed_names) if n not in varying], dtype=np.int64)
    return CrossedDesign(
        spec=spec,
        y=_response(fixed),
        F=np.ascontiguousarray(F),
        fixed_names=list(fixed_names),
        theta_index=theta_index,
        alpha_index=alpha_index,
        factors=tuple(factors),
        row_labels=data.index,
        frame=data[list(spec.variables)],
        offset=np.ascontiguousarray(np.broadcast_to(off, (len(data),)), dtype=float),
        offset_argument=None if offset is None else np.broadcast_to(extra, (len(data),)).astype(float),
        trials=np.ones(len(data)),
        weights=None if w is None else np.ascontiguousarray(w, dtype=float),
        response_kind=str(getattr(fixed.response, "kind", "numeric")),
        response_levels=getattr(fixed.response, "levels", None),
        formulae_fixed=fixed,
        predictors=read_predictors([fixed.common, *(m.common for m in term_matrices)], data),
    )


def check_crossed_identifiable(design: CrossedDesign, gaussian: bool = True) -> None:
    """Refuse a rank-deficient fixed design (naming the collinear columns) and, for the Gaussian
    family, a model with no more rows than fixed and group effects together (GLMs have no
    residual variance to confound with)."""
    _check_full_rank(design.F, design.fixed_names)
    if gaussian:
        check_effect_count(design)


def check_effect_count(design: CrossedDesign) -> None:
    """Refuse a Gaussian model with no more rows than group effects: its variances would be
    confounded with the residual variance (read from the counts only, no row)."""
    group_effects = sum(f.n_levels * f.q for f in design.factors)
    if design.n_obs <= group_effects:
        raise ModelError(f"the {design.n_obs} rows are no more than the {group_effects + design.F.shape[1]} fixed and "
                         "group effects, so the variances are confounded with the residual variance sigma2; use "
                         "fewer terms or more rows")


__all__ = ["CrossedDesign", "Design", "Predictor", "build_crossed_design", "build_design", "check_crossed_identifiable", "check_effect_count", "check_group_counts", "check_identifiable",
           "mean_is_free", "predictor_lines", "read_predictors", "select_rows", "INTERCEPT"]
