"""The formula over partitions: what one pass learns from all rows, then the design of each
partition exactly as the rows in memory would give it.

``formulae`` learns some things from the rows it sees: a categorical column's levels, the
states of stateful transforms (``center(x)``'s mean, ``bs(x, df=4)``'s knots), the levels of a
grouping factor. Evaluated on one
partition alone it would learn them from that partition. So (:func:`make_plan`):

1. one pass (:func:`scan_partition` per partition, combined in partition order) counts the
   rows with missing or infinite values in the formula's columns (dropped with the in-memory
   engine's warning, or refused), and collects the levels of every non-numeric column and of
   every grouping factor over the rows kept;
2. a prototype design is built on the first rows, and the rows that hold each numeric column's
   smallest and largest value (so that ``formulae``'s checks against a column's range, such as
   ``cr(x, knots=...)``'s, see the range of all rows), with those levels as ordered categoricals
   (``formulae`` then codes every level, as it codes a column's sorted distinct values in
   memory), and when the formula has stateful calls (``center``, ``scale``, ``bs``, ``poly``)
   passes over all rows learn their states (:mod:`multilevel.distributed.learn`: moments,
   exact quantiles for the knots, the polynomials' recurrence) and set them on the calls;
3. :func:`partition_design` evaluates the prototype's ``formulae`` matrices on each partition's
   rows (``evaluate_new_data``: the learned levels and constants, never relearned) and indexes
   each grouping factor by the global levels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from formulae.terms import Call

from ..design import (CrossedDesign, _column_labels, _evaluate, _response, _weights_argument, build_crossed_design,
                      missing_rows)
from ..errors import ModelError
from ..rsplines import template_knots
from ..factors import GroupingFactor, grouping_factor
from ..formula import FormulaSpec
from ..reterms import group_terms
from .learn import StatefulCall, learn_states, restore_state, transform_state

#: rows of the first partition the prototype design is built on
PROTOTYPE_ROWS = 2000


def categorical_columns(frame: pd.DataFrame, variables: tuple[str, ...]) -> list[str]:
    """The used columns ``formulae`` reads as categories: neither numeric nor boolean."""
    return [v for v in variables if not pd.api.types.is_numeric_dtype(frame[v]) and not pd.api.types.is_bool_dtype(frame[v])]


def factor_columns(spec: FormulaSpec) -> dict[str, tuple[str, ...]]:
    """Each grouping factor's data columns, by factor name."""
    return {name: terms[0].factor_columns for name, terms in group_terms(spec.terms)}


def factor_term(spec: FormulaSpec, name: str) -> Any:
    """The first random-effects term of factor ``name``."""
    return next(t for t in spec.terms if t.factor == name)


def extreme_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows holding each numeric column's smallest and largest value (the first of ties), in
    their order, each once."""
    numeric = [c for c in rows.columns if pd.api.types.is_numeric_dtype(rows[c])]
    if not len(rows) or not numeric:
        return rows.iloc[:0]
    at = sorted({int(pick(rows[c].to_numpy())) for c in numeric for pick in (np.argmin, np.argmax)})
    return rows.iloc[at]


def scan_partition(frame: pd.DataFrame, spec: FormulaSpec, categorical: list[str]) -> dict[str, Any]:
    """The first pass over one partition: rows, missing-value counts by column, the distinct
    values of the categorical columns and of the grouping factors' columns on the rows kept, and
    the rows of their numeric columns' extremes (:func:`extreme_rows`)."""
    used = frame[list(spec.variables)]
    bad, per_column = missing_rows(used)
    kept = used.loc[~bad]
    return {
        "rows": len(frame), "bad": int(bad.sum()), "per_column": per_column,
        "categories": {c: kept[c].drop_duplicates() for c in categorical},
        "factors": {name: kept[list(cols)].drop_duplicates() for name, cols in factor_columns(spec).items()},
        "extremes": extreme_rows(kept),
    }


def combine_scans(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two scans' results as one (a's rows first)."""
    return {
        "rows": a["rows"] + b["rows"], "bad": a["bad"] + b["bad"],
        "per_column": {c: a["per_column"][c] + b["per_column"][c] for c in a["per_column"]},
        "categories": {c: pd.concat([a["categories"][c], b["categories"][c]]).drop_duplicates() for c in a["categories"]},
        "factors": {f: pd.concat([a["factors"][f], b["factors"][f]]).drop_duplicates() for f in a["factors"]},
        "extremes": extreme_rows(pd.concat([a["extremes"], b["extremes"]])),
    }


def _categories(values: pd.Series) -> pd.CategoricalDtype:
    """The ordered categorical type ``formulae`` gives a column in memory: its categories if it
    is ordered, else its sorted distinct values."""
    if isinstance(values.dtype, pd.CategoricalDtype) and values.dtype.ordered:
        return values.dtype
    return pd.CategoricalDtype(sorted(np.unique(np.asarray(values)).tolist()), ordered=True)


@dataclass(frozen=True)
class GlobalFactor:
    """A grouping factor's levels over all rows (no row index): ``factor`` ordered and labelled
    as :func:`multilevel.factors.grouping_factor` orders and labels them in memory, and
    ``keys``, the level of each combination of its columns (to index a partition's rows)."""

    factor: GroupingFactor
    keys: pd.Index


def global_factor(term: Any, combos: pd.DataFrame) -> GlobalFactor:
    """The :class:`GlobalFactor` of ``term`` from the distinct combinations of its columns."""
    g = grouping_factor(combos, term)
    order = np.argsort(g.index, kind="stable")
    columns = list(term.factor_columns)
    keys = (pd.Index(combos[columns[0]].to_numpy()[order]) if len(columns) == 1
            else pd.MultiIndex.from_frame(combos[columns].iloc[order]))
    return GlobalFactor(replace(g, index=np.zeros(0, dtype=np.int64)), keys)


def level_index(kept: pd.DataFrame, columns: tuple[str, ...], keys: pd.Index) -> np.ndarray:
    """Each row's global level of the factor of ``columns`` whose levels' keys are ``keys``."""
    rows = kept[columns[0]] if len(columns) == 1 else pd.MultiIndex.from_frame(kept[list(columns)])
    return np.asarray(keys.get_indexer(rows), dtype=np.int64)


def stateful_calls(matrices: Any) -> list[StatefulCall]:
    """The stateful transforms of a ``formulae`` common matrix (:class:`~multilevel.distributed.learn.StatefulCall`
    per call, nested calls included)."""
    found = []

    def visit(lazy: Any, env: Any) -> None:
        for arg in list(getattr(lazy, "args", ())) + list(getattr(lazy, "kwargs", {}).values()):
            visit(arg, env)
        if getattr(lazy, "stateful_transform", None) is not None:
            found.append(StatefulCall(lazy.stateful_transform, lazy.args[0] if lazy.args else None,
                                      dict(getattr(lazy, "kwargs", {})), env, tuple(lazy.args[1:])))

    for term in matrices.terms.values() if matrices is not None else ():
        for component in getattr(term, "components", []):
            if isinstance(component, Call):
                visit(component.call, component.env)
    return found


def design_stateful_calls(design: CrossedDesign) -> list[StatefulCall]:
    """The distinct stateful transforms of a design's fixed and random-effects matrices, in
    formula order (:func:`stateful_calls`)."""
    calls = [c for m in [design.formulae_fixed.common, *(mm.common for f in design.factors for mm in f.matrices)]
             for c in stateful_calls(m)]
    return list({id(c.transform): c for c in calls}.values())


def transform_states(design: CrossedDesign) -> list[dict[str, Any]]:
    """The learned state of each stateful call of the design (:func:`design_stateful_calls`,
    :func:`multilevel.distributed.learn.transform_state`)."""
    return [transform_state(c.transform) for c in design_stateful_calls(design)]


def restore_prototype(spec: FormulaSpec, sample: pd.DataFrame, weights: str | None, states: list[Any],
                      gaussian: bool = True) -> CrossedDesign:
    """The prototype design again from its rows (categorical columns with the learned levels)
    and its stateful transforms' states (:func:`transform_states`): new data are then coded as
    the fitted rows were."""
    with template_knots():  # the states are set from the saved ones below
        proto = build_crossed_design(spec, sample, "raise", weights=weights, gaussian=gaussian, check=False)
    calls = design_stateful_calls(proto)
    if len(calls) != len(states):
        raise ModelError(f"the saved fit records the states of {len(states)} stateful transforms (center(), bs(), ...), "
                         f"but its formula {spec.formula!r} has {len(calls)}")
    for call, state in zip(calls, states):
        restore_state(call.transform, state)
    return proto


@dataclass
class PartitionPlan:
    """What :func:`partition_design` needs on a worker: the formula, the learned categorical
    types and grouping factors, the prototype's ``formulae`` matrices (learned constants set)."""

    spec: FormulaSpec
    categories: dict[str, pd.CategoricalDtype]
    keys: tuple[pd.Index, ...]  # per factor, :attr:`GlobalFactor.keys` (not its labels: a worker needs none)
    prototype: CrossedDesign
    weights: str | None = None
    family: str = "gaussian"  # a GLM's partitions take its response (y, trials) and offset(...) terms


def prepare(frame: pd.DataFrame, plan: PartitionPlan) -> tuple[pd.DataFrame, np.ndarray]:
    """A partition's rows kept (no missing values in used columns), categorical columns as the
    learned ordered types, and each factor's global level index of them."""
    columns = list(plan.spec.variables) + ([plan.weights] if plan.weights and plan.weights not in plan.spec.variables else [])
    used = frame[columns]
    bad, _ = missing_rows(used[list(plan.spec.variables)])
    kept = used.loc[~bad]
    indices = [level_index(kept, f.factor.columns, keys) for f, keys in zip(plan.prototype.factors, plan.keys)]
    return kept.astype(plan.categories) if plan.categories else kept, indices


def partition_design(frame: pd.DataFrame, plan: PartitionPlan) -> CrossedDesign:
    """The :class:`~multilevel.design.CrossedDesign` of one partition's rows: the prototype's
    matrices evaluated on them, every factor indexed by its global levels."""
    kept, indices = prepare(frame, plan)
    proto, spec = plan.prototype, plan.spec
    fixed = proto.formulae_fixed
    try:
        (response,) = _evaluate(spec, kept, [f"{spec.response} ~ 1"])
        F = (np.asarray(fixed.common.evaluate_new_data(kept).design_matrix, dtype=float) if fixed.common is not None
             else np.empty((len(kept), 0)))
        Zs = [np.hstack([np.asarray(m.common.evaluate_new_data(kept).design_matrix, dtype=float) for m in f.matrices])
              for f in proto.factors]
    except ModelError:
        raise
    except Exception as exc:  # a value formulae cannot code, e.g. a level of C(x) not in the first rows
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot evaluate formula {spec.formula!r} on a partition: {detail}") from None
    is_offset = np.array([n.startswith("offset(") for n in (_column_labels(fixed.common) if fixed.common is not None
                                                            else [])], dtype=bool)
    offset = F[:, is_offset].sum(axis=1) if is_offset.any() else np.zeros(len(kept))
    F = F[:, ~is_offset] if is_offset.any() else F
    # the rows' global level indices; the factors' labels stay the prototype's (the statistics
    # take the numbers of levels from the layout, the fit its labels from the client's design)
    factors = tuple(replace(f, factor=replace(f.factor, index=idx), Z=np.ascontiguousarray(Z))
                    for f, idx, Z in zip(proto.factors, indices, Zs))
    weights = None if plan.weights is None else _weights_argument(plan.weights, kept)
    y, trials = np.asarray(_response(response), dtype=float), np.ones(len(kept))
    if plan.family != "gaussian":
        from ..families import check_family, family_response

        y, trials = family_response(check_family(plan.family), _response(response), spec.response,
                                    proto.response_kind, proto.response_levels)
    return replace(proto, y=y, F=np.ascontiguousarray(F), factors=factors, row_labels=kept.index, frame=None,
                   offset=np.ascontiguousarray(offset, dtype=float), offset_argument=None, trials=trials,
                   weights=weights)


def warn_dropped(scan: dict[str, Any], na_action: str) -> None:
    """The in-memory engine's warning (or error) for rows with missing or infinite values."""
    if not scan["bad"]:
        return
    cols = [c for c, n in scan["per_column"].items() if n]
    if na_action == "raise":
        raise ModelError(f"{scan['bad']} rows have missing or infinite values in {', '.join(cols)}; "
                         "remove them or use na_action='drop'")
    warnings.warn(f"dropped {scan['bad']} rows with missing or infinite values in {', '.join(cols)}", stacklevel=5)


def make_plan(ddf: Any, spec: FormulaSpec, na_action: str, weights: str | None, compute: Any,
              family: str = "gaussian") -> tuple[PartitionPlan, tuple[GroupingFactor, ...], int]:
    """Learn the formula's levels and constants from all partitions of ``ddf`` (module doc):
    the plan, the grouping factors' global levels and the number of rows kept. ``compute``
    runs a list of delayed values in order."""
    from dask import delayed

    from .reduce import tree_reduce

    missing = [v for v in spec.variables if v not in ddf.columns]
    if missing:
        cols = ", ".join(map(str, list(ddf.columns)[:12]))
        raise ModelError(f"column {missing[0]!r} named in the formula is not in the data (columns are: {cols})")
    if na_action not in ("drop", "raise"):
        raise ModelError(f"na_action must be 'drop' or 'raise', not {na_action!r}")
    if weights is not None and not isinstance(weights, str):
        raise ModelError("with engine='dask' give weights as the name of a column")
    if weights is not None and weights not in ddf.columns:
        raise ModelError(f"weights column {weights!r} is not in the data")
    categorical = categorical_columns(ddf._meta, spec.variables)
    parts = ddf.to_delayed()
    (scan,) = compute([tree_reduce([delayed(scan_partition)(p, spec, categorical) for p in parts], combine_scans)])
    warn_dropped(scan, na_action)
    kept_rows = scan["rows"] - scan["bad"]
    if kept_rows == 0:
        raise ModelError("no rows left after dropping missing values")
    dtypes = {c: _categories(scan["categories"][c]) for c in categorical}
    factors = tuple(global_factor(factor_term(spec, name), scan["factors"][name]) for name in factor_columns(spec))
    head = ddf.head(PROTOTYPE_ROWS, npartitions=-1, compute=True)
    used = head[list(spec.variables) + ([weights] if weights and weights not in spec.variables else [])]
    bad, _ = missing_rows(used[list(spec.variables)])
    # the prototype is a template of the rows (the statistics never read it): its extreme rows
    # get weight 1 when the weights column is not in the formula
    extremes = scan["extremes"].reindex(columns=used.columns, fill_value=1.0)
    sample = pd.concat([used.loc[~bad], extremes], ignore_index=True)
    if len(sample) == 0:
        raise ModelError("the first rows of the data all have missing values; shuffle or filter the data")
    sample = sample.astype(dtypes) if dtypes else sample
    with template_knots():  # the few rows may not place df's knots; learned from all partitions below
        proto = build_crossed_design(spec, sample, "raise", weights=weights, gaussian=family == "gaussian", check=False)
    plan = PartitionPlan(spec, dtypes, tuple(f.keys for f in factors), proto, weights, family)
    calls = design_stateful_calls(proto)
    if calls:
        learn_states(calls, parts, plan, compute)
    return plan, tuple(f.factor for f in factors), kept_rows


__all__ = ["PROTOTYPE_ROWS", "PartitionPlan", "make_plan", "partition_design", "restore_prototype", "scan_partition",
           "transform_states"]
