r"""Predictions of fits with several random-effects terms (crossed, nested, uncorrelated).

For each posterior draw s and new row i,

    eta_i = offset_i + f_i' a^(s) + sum_{k in re_form} z_ki' b_k,j(i)^(s),

with a the fixed effects (theta and alpha), offset_i the formula's ``offset(...)`` terms (GLMs;
an ``offset=`` argument is added by :func:`multilevel.predict.predict`), and for each grouping factor k included:
b_kj = beta_kj - (its terms' population means) for a level j seen in fitting; for a level
never seen, a new effect drawn per posterior draw from MVN(0, Sigma_k^(s)) (all rows of one
unseen level share it). ``re_form`` chooses the factors, as lme4's ``re.form``: None (all),
a list of factor names, ``[]`` / ``"~0"`` / ``"NA"`` (none: the population-level prediction),
or an lme4 formula such as ``"~(1 | s)"`` (its factors). The normals of the new levels come
from the generator, factor by factor in formula order, levels in order of first appearance:
``rng.standard_normal((chains, draws, k, q_k))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .convert import index_values, label_key
from .design import _column_labels
from .errors import ModelError
from .predict import _cholesky
from .factors import row_labels
from .families import check_family
from .terms import find_bars

if TYPE_CHECKING:
    from .result import Fit


def factors_of(fit: Fit) -> list[str]:
    """The fit's grouping factors, in formula order."""
    return list(fit.sigma_variables())


def resolve_re_form(fit: Fit, re_form: Any, include_group_effects: bool = True) -> list[str]:
    """The factors whose group effects a prediction includes (module docstring)."""
    names = factors_of(fit)
    if not include_group_effects:
        return []
    if re_form is None:
        return names
    if re_form is pd.NA or (isinstance(re_form, float) and np.isnan(re_form)):
        return []  # R's NA
    if isinstance(re_form, str):
        text = re_form.strip()
        if text.replace(" ", "") in ("~0", "NA", "~1", ""):
            return []
        if not text.startswith("~"):
            raise ModelError(f"re_form {re_form!r} is not a formula; write e.g. '~(1 | {names[0]})', '~0', or a list "
                             "of factor names")
        bars = find_bars(text, text)
        rest = "".join(ch for i, ch in enumerate(text[1:], 1) if not any(b.start <= i <= b.end for b in bars))
        if not bars or any(part.strip() not in ("", "0", "1") for part in rest.split("+")):
            raise ModelError(f"re_form {re_form!r} names no grouping factor in a term (expr | factor) alone; write "
                             f"e.g. '~(1 | {names[0]})', '~0' for none, or a list of factor names")
        chosen = [f for bar in bars for f in _nested_factors(bar.factor)]
    else:
        chosen = [str(f) for f in re_form]
    unknown = [f for f in chosen if f not in names]
    if unknown:
        raise ModelError(f"re_form names factor {unknown[0]!r}, which the fit does not have (factors: "
                         f"{', '.join(names)})")
    return [f for f in names if f in chosen]


def _nested_factors(factor: str) -> list[str]:
    """``a/b/c`` -> ``a``, ``a:b``, ``a:b:c`` (lme4's nesting); ``a : b`` -> ``a:b``."""
    parts = [":".join(p.strip() for p in level.split(":")) for level in factor.split("/")]
    return [":".join(parts[:i + 1]) for i in range(len(parts))]


def fixed_effect_draws(fit: Fit, idx: np.ndarray) -> dict[str, np.ndarray]:
    """{fixed column: (chain, draw) draws} from theta and alpha."""
    post = fit.posterior
    out = {str(t): post["theta"].sel(term=t).values[:, idx] for t in post["theta"][post["theta"].dims[-1]].values}
    if "alpha" in post:
        out.update({str(t): post["alpha"].sel(fixed_term=t).values[:, idx] for t in post["fixed_term"].values})
    return out


def deviations(fit: Fit, factor: str, idx: np.ndarray, fixed: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """(chain, draw, level, term) deviations b_kj = beta_kj - population means, and the terms."""
    post = fit.posterior
    var = fit.beta_variables().get(factor)
    if var is None:
        raise ModelError("this fit was saved without its per-group draws (group_draws=False): predictions with "
                         "seen levels need them; predict at the population level (re_form='~0') or fit again")
    beta = post[var].values[:, idx]
    terms = [str(t) for t in post[var][post[var].dims[-1]].values]
    shape = beta.shape[:2]
    zero = set(fit.zero_mean_terms)
    mean = np.stack([fixed[t] if t in fixed and t not in zero else np.zeros(shape) for t in terms], axis=-1)
    return beta - mean[..., None, :], terms


def predict_crossed(fit: Fit, data: pd.DataFrame, idx: np.ndarray, factors: list[str], rng: np.random.Generator,
                    conform: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """eta (chain, draw, rows) of the new rows ``data``, and coordinates per factor (its level
    labels and whether each is new). ``conform(name, new, train)`` checks a column against the
    fitted one (:func:`multilevel.predict._conform`)."""
    design = fit.design
    if design is None:
        raise ModelError("this fit has no stored training data, so new data cannot be transformed like the fitted data")
    n = data.shape[0]
    if n == 0:
        raise ModelError("the new data have no rows")
    used = [f for f in design.factors if f.name in factors]
    needed = [c for c in sorted(_predictor_columns(design)) if c in design.frame.columns]
    group_cols = [c for f in used for c in f.factor.columns]
    columns = list(dict.fromkeys(needed + group_cols))
    missing = [c for c in columns if c not in data.columns]
    if missing:
        cols = ", ".join(map(str, data.columns[:12])) + (", ..." if data.shape[1] > 12 else "")
        hint = " (or leave its factor out: re_form, --re-form in the CLI)" if missing[0] in group_cols else ""
        raise ModelError(f"column {missing[0]!r} needed by the formula is not in the new data (columns are: {cols}){hint}")
    if data[columns].isna().any(axis=None):
        bad = [c for c in columns if data[c].isna().any()]
        raise ModelError(f"rows of the new data have missing values in {', '.join(bad)}; predictions need complete rows")
    conformed = pd.DataFrame({c: conform(c, data[c], design.frame[c]) for c in needed}, index=data.index)
    post = fit.posterior
    fixed = fixed_effect_draws(fit, idx)
    n_chain = post.sizes["chain"]
    eta = np.zeros((n_chain, idx.shape[0], n))
    try:
        if design.formulae_fixed.common is not None:
            fnew = design.formulae_fixed.common.evaluate_new_data(conformed)
            F = np.asarray(fnew.design_matrix, dtype=float).reshape(n, -1)
            for c, name in enumerate(_column_labels(fnew)):
                eta += F[:, c] if name.startswith("offset(") else fixed[name][..., None] * F[:, c]
        Zs = {f.name: np.hstack([np.asarray(m.common.evaluate_new_data(conformed).design_matrix,
                                            dtype=float).reshape(n, -1) for m in f.matrices]) for f in used}
    except ModelError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot evaluate formula {design.spec.formula!r} on the new data: {detail}") from None
    coords: dict[str, Any] = {}
    for f in used:
        b, terms = deviations(fit, f.name, idx, fixed)
        level_dim = post[fit.beta_variables()[f.name]].dims[-2]
        fitted = {label_key(v): j for j, v in enumerate(post[level_dim].values)}
        labels = row_labels(data, f.factor.columns)
        level = np.array([fitted.get(key, -1) for key in labels], dtype=np.int64)
        new_index: dict[str, int] = {}
        new_level = np.array([-1 if j >= 0 else new_index.setdefault(key, len(new_index))
                              for key, j in zip(labels, level)], dtype=np.int64)
        Z = Zs[f.name]
        seen = np.flatnonzero(level >= 0)
        for k in range(Z.shape[1]):
            eta[..., seen] += Z[seen, k] * b[:, :, level[seen], k]
        if new_index:
            Sigma = post[fit.sigma_variables()[f.name]].values[:, idx]
            u = rng.standard_normal((n_chain, idx.shape[0], len(new_index), Z.shape[1]))
            b_new = np.einsum("cdkl,cdul->cduk", _cholesky(Sigma), u)
            unseen = np.flatnonzero(level < 0)
            for k in range(Z.shape[1]):
                eta[..., unseen] += Z[unseen, k] * b_new[:, :, new_level[unseen], k]
        coords[f"{f.name}_level"] = ("obs", np.asarray(labels, dtype=str))
        coords[f"{f.name}_new"] = ("obs", level < 0)
    return eta, coords


def _predictor_columns(design: Any) -> set[str]:
    """The data columns of the fixed part and of the random-effects terms' expressions (the
    grouping factors' columns only where a predictor uses them too)."""
    from .predict import _rhs_variables

    parts = [design.spec.fixed_rhs()] + [t.rhs() for f in design.factors for t in f.terms]
    return set().union(*(_rhs_variables(part) for part in parts))


def fitted_crossed(fit: Fit, idx: np.ndarray, factors: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """eta (chain, draw, rows) of the rows used in fitting with the group effects of ``factors``
    only (and the offset), and the rows' labels (data order)."""
    cd = fit.group("constant_data")
    fixed = fixed_effect_draws(fit, idx)
    effects = [(cd[f"Z_{factor}"].values, cd[f"index_{factor}"].values, deviations(fit, factor, idx, fixed)[0])
               for factor in factors]
    offset = cd["offset"].values if "offset" in cd else None
    return rows_linear_predictor(cd["F"].values, [str(t) for t in cd["fixed"].values], fixed, effects, offset), \
        cd["row_label"].values


def rows_linear_predictor(F: np.ndarray, fixed_names: list[str], fixed: dict[str, np.ndarray],
                          effects: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                          offset: np.ndarray | None = None) -> np.ndarray:
    """eta (chain, draw, rows) = F a + offset + sum_k Z_k b_k[index_k] of rows whose fixed
    design is ``F`` (columns ``fixed_names``, draws ``fixed`` as :func:`fixed_effect_draws`)
    and, per factor included, covariates Z_k, level index index_k and deviations b_k
    (chain, draw, level, term) as :func:`deviations` (one compiled pass over the rows per
    factor, :func:`multilevel.glmlik.row_linear_predictor`)."""
    from .glmlik import row_linear_predictor

    shape = next(iter(fixed.values())).shape if fixed else effects[0][2].shape[:2]
    eta = np.zeros((*shape, F.shape[0]))
    for c, name in enumerate(fixed_names):
        eta += fixed[name][..., None] * F[:, c]
    if offset is not None:
        eta += offset
    part = np.empty_like(eta)
    for Z, index, b in effects:
        row_linear_predictor(np.ascontiguousarray(Z, dtype=float), np.ascontiguousarray(index, dtype=np.int64),
                             np.ascontiguousarray(b.reshape(-1, *b.shape[2:]), dtype=float),
                             part.reshape(-1, F.shape[0]))
        eta += part
    return eta


def as_array(values: np.ndarray, fit: Fit, idx: np.ndarray, rows: Any, kind: str, factors: list[str],
             coords: dict[str, Any]) -> xr.DataArray:
    """The predictions as a DataArray (chain, draw, obs) with the row labels and per-factor coords."""
    post = fit.posterior
    n = values.shape[-1]
    all_coords = {"chain": post["chain"].values, "draw": post["draw"].values[idx], "obs": np.arange(n),
                  "row": ("obs", index_values(pd.Index(rows))), **coords}
    return xr.DataArray(values, dims=("chain", "draw", "obs"), coords=all_coords, name=kind,
                        attrs={"kind": kind, "re_form": ", ".join(factors) or "none",
                               "include_group_effects": int(bool(factors)), "family": check_family(fit.family).name})


__all__ = ["fitted_crossed", "predict_crossed", "resolve_re_form", "rows_linear_predictor"]
