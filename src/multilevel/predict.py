r"""Predictions from a fit: for new rows, fitted values of the observed rows, and posterior
predictive draws for the observed rows.

New data go through the *same* ``formulae`` transformations as the fitted data
(``design.formulae_fixed.common.evaluate_new_data`` and its varying counterpart): the
categorical levels and reference level, ``center(x)`` (centred at the fitted data's mean),
spline knots and ``offset(...)`` terms are those of the fit.

For each posterior draw s (chain c, draw d) and new row i of group j:

* ``include_group_effects=True`` and j seen in fitting:
  eta_i = x_i' beta_j^(s) + z_i' alpha^(s) + offset_i;
* ``include_group_effects=True`` and j never seen: a new group effect is drawn per posterior
  draw, beta_new^(s) = theta^(s) + L^(s) u, L^(s) the Cholesky factor of Sigma^(s) and u
  standard normal, so beta_new ~ MVN(theta, Sigma) integrates over the group distribution.
  All rows of one unseen group share the draw. The normals are, exactly,
  ``numpy.random.default_rng(seed).standard_normal((chains, draws, k, p))`` with the k
  unseen groups in order of first appearance in ``newdata``; ``kind="response"`` then
  draws the response noise from the same generator.
* ``include_group_effects=False``: the population-level prediction at beta = theta,
  eta_i = x_i' theta^(s) + z_i' alpha^(s) + offset_i (a typical group, group column not needed).

``kind``: ``"linear"`` eta; ``"mean"`` the inverse link: eta (gaussian), exp(eta)
(poisson, negbinomial), the success probability logistic(eta) (binomial, bernoulli); ``"response"`` a
new response drawn from the family: N(eta, sigma2), Poisson(exp(eta)), NB(exp(eta), phi), Binomial(n_i,
logistic(eta)) successes out of the new rows' trials, Bernoulli(logistic(eta)). lme4's
``type = "link"`` is accepted for ``"linear"``; lme4's ``type = "response"`` is ``"mean"``
here (brms' ``posterior_epred``), while ``"response"`` draws new responses (brms'
``posterior_predict``).
A Gaussian fit with precision weights draws N(eta_i, sigma2 / w_i): the observed rows'
replicates (:func:`posterior_predictive`) with their fitted weights; new rows with weight 1
(variance sigma2) unless ``weights=`` gives theirs (a column name or one value per row).
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from formulae import model_description

from .convert import index_values, label_key
from .diagnostics import hdi, hdi_names as hdi_columns
from .design import _column_labels
from .errors import ModelError
from .factors import row_labels
from .families import Family, check_family
from .formula import data_variables
from .io import read_data

if TYPE_CHECKING:
    from .result import Fit

KINDS = ("linear", "mean", "response")
#: other names of the kinds: lme4's type = "link"
KIND_ALIASES = {"link": "linear"}
HDI_PROB = 0.94
#: exp(eta) is capped at exp(EXP_CAP) when Poisson responses are drawn (numpy's limit is ~1e19),
#: and so is the negative binomial's gamma-mixed rate
EXP_CAP = 41.0


# -- helpers --------------------------------------------------------------------------------

def make_rng(seed: Any) -> np.random.Generator:
    """A Generator from ``seed``: None (fresh entropy), a non-negative int, or a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ModelError(f"seed must be a non-negative integer or None, got {seed!r}")
    return np.random.default_rng(seed)


def draw_positions(n_draw: int, draws: Any) -> np.ndarray:
    """Positions of the draws used: all (None) or ``draws`` evenly spaced ones per chain."""
    if draws is None:
        return np.arange(n_draw)
    if isinstance(draws, bool) or not isinstance(draws, numbers.Integral) or not 1 <= draws <= n_draw:
        raise ModelError(f"draws must be None or an integer from 1 to {n_draw} (draws per chain), got {draws!r}")
    return np.unique(np.linspace(0, n_draw - 1, int(draws)).round().astype(int))


def inverse_link(family: Family, eta: np.ndarray) -> np.ndarray:
    if family.name == "gaussian":
        return eta
    if family.link == "log":
        return np.exp(np.minimum(eta, 700.0))
    return 0.5 * (1.0 + np.tanh(0.5 * eta))


def draw_response(family: Family, eta: np.ndarray, rng: np.random.Generator,
                  sigma2: np.ndarray | None = None, trials: np.ndarray | None = None,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """One response per entry of ``eta`` (chain, draw, obs); ``sigma2`` is (chain, draw), the
    family's dispersion (:func:`dispersion`: sigma2, or the negative binomial's phi, drawn as the
    gamma-Poisson mixture y ~ Poisson(mu g), g ~ Gamma(phi, 1 / phi)); Gaussian precision
    ``weights`` (obs,) give row i the variance sigma2 / w_i."""
    if family.name == "gaussian":
        noise = np.sqrt(sigma2)[..., None] * rng.standard_normal(eta.shape)
        return eta + (noise if weights is None else noise / np.sqrt(weights))
    if family.name == "poisson":
        return rng.poisson(np.exp(np.minimum(eta, EXP_CAP)))
    if family.name == "negbinomial":
        phi = np.asarray(sigma2, dtype=float)[..., None]
        rate = np.exp(np.minimum(eta, EXP_CAP)) * rng.gamma(np.broadcast_to(phi, eta.shape)) / phi
        return rng.poisson(np.minimum(rate, np.exp(EXP_CAP)))
    prob = inverse_link(family, eta)
    n = np.ones(eta.shape[-1], dtype=np.int64) if trials is None else np.asarray(trials).astype(np.int64)
    return rng.binomial(np.broadcast_to(n, eta.shape), prob)


def dispersion(post: Any, family: Family, idx: np.ndarray, kind: str = "response") -> np.ndarray | None:
    """The draws ``idx`` (chain, len(idx)) of the family's dispersion (:attr:`Family.dispersion`:
    sigma2, phi) when ``kind`` is ``"response"`` and the family has one, else None."""
    if kind != "response" or family.dispersion is None:
        return None
    return post[family.dispersion].values[:, idx]


def on_scale(kind: str, family: Family, eta: np.ndarray, rng: np.random.Generator, sigma2: np.ndarray | None,
             trials: np.ndarray | None, weights: np.ndarray | None) -> np.ndarray:
    """Predictions of ``kind`` from the linear predictor ``eta`` (chain, draw, obs): eta itself
    (``"linear"``), the inverse link (``"mean"``) or a response drawn from the family (``"response"``)."""
    if kind == "linear":
        return eta
    if kind == "mean":
        return inverse_link(family, eta)
    return draw_response(family, eta, rng, sigma2=sigma2, trials=trials, weights=weights)


def summarize(draws: xr.DataArray, hdi_prob: float = HDI_PROB, index: pd.Index | None = None) -> pd.DataFrame:
    """mean, sd and the ``hdi_prob`` HDI of each ``obs`` of (chain, draw, obs) draws."""
    flat = np.asarray(draws.transpose("chain", "draw", "obs").values, dtype=float)
    flat = flat.reshape(-1, flat.shape[-1])
    lo, hi = hdi(flat, hdi_prob)
    lo_name, hi_name = hdi_columns(hdi_prob)
    sd = flat.std(axis=0, ddof=1) if flat.shape[0] > 1 else np.full(flat.shape[1], np.nan)
    return pd.DataFrame({"mean": flat.mean(axis=0), "sd": sd, lo_name: lo, hi_name: hi},
                        index=index if index is not None else pd.RangeIndex(flat.shape[1], name="obs"))


# -- new data -------------------------------------------------------------------------------

@dataclass
class NewDesign:
    """The model's arrays for new rows (in the rows' own order)."""

    X: np.ndarray  # (n, p)
    Z: np.ndarray  # (n, r)
    offset: np.ndarray  # (n,)
    group: np.ndarray  # (n,) index of the fitted group, -1 for an unseen one (or no groups)
    new_group: np.ndarray  # (n,) index among the unseen groups, -1 for a seen one
    new_labels: list[str]  # the unseen groups, in order of first appearance
    labels: list[str] | None  # every row's group key, when group effects are used
    trials: np.ndarray | None  # binomial trials of the rows, when the new data give them
    index: pd.Index


def _rhs_variables(rhs: str) -> set[str]:
    try:
        return data_variables(model_description(rhs))
    except Exception:  # pragma: no cover - the fitted formula parsed
        return set()


def _trials_name(response: str) -> str | None:
    m = re.fullmatch(r"\s*p\((.*),(.*)\)\s*", response)
    return m.group(2).strip() if m else None


def _is_number(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def _conform(name: str, new: pd.Series, train: pd.Series) -> pd.Series:
    """``new`` with the fitted column's type, or a clear error (unknown levels, wrong type)."""
    if isinstance(train.dtype, pd.CategoricalDtype) or not (_is_number(train) or pd.api.types.is_bool_dtype(train)):
        levels = list(train.cat.categories) if isinstance(train.dtype, pd.CategoricalDtype) else list(pd.unique(train))
        by_key = {label_key(v): v for v in levels}
        keys = new.map(label_key)
        unknown = [k for k in pd.unique(keys) if k not in by_key]
        if unknown:
            shown = ", ".join(sorted(map(str, levels))[:12]) + (", ..." if len(levels) > 12 else "")
            raise ModelError(
                f"column {name!r} of the new data has level {unknown[0]!r} not seen in fitting "
                f"(levels: {shown}); predictions can use only the fitted levels")
        values = keys.map(by_key)
        if isinstance(train.dtype, pd.CategoricalDtype):
            return pd.Series(pd.Categorical(values, categories=train.cat.categories, ordered=train.cat.ordered), index=new.index)
        return values.astype(object)
    if _is_number(train) and not _is_number(new):
        if pd.api.types.is_bool_dtype(new):
            return new.astype(float)
        converted = pd.to_numeric(new, errors="coerce")
        if converted.isna().any():
            bad = new[converted.isna()].iloc[0]
            raise ModelError(f"column {name!r} is numeric in the fitted data but the new data have {bad!r}")
        return converted
    return new


def new_design(fit: Fit, newdata: Any, include_group_effects: bool = True, offset: Any = None,
               trials: Any = None) -> NewDesign:
    """Evaluate the fit's formula on ``newdata`` with the fitted transformations."""
    data = read_data(newdata)
    design = fit.design
    if design is None:
        raise ModelError("this fit has no stored training data, so new data cannot be transformed like the fitted data")
    if data.shape[0] == 0:
        raise ModelError("the new data have no rows")
    spec = design.spec
    fixed, varying = design.formulae_fixed, design.formulae_varying
    needed = sorted(_rhs_variables(spec.fixed_rhs()) | _rhs_variables(spec.varying_rhs()))
    group_cols = spec.group_columns
    columns = needed + ([c for c in group_cols if c not in needed] if include_group_effects else [])
    missing = [c for c in columns if c not in data.columns]
    if missing:
        cols = ", ".join(map(str, data.columns[:12])) + (", ..." if data.shape[1] > 12 else "")
        hint = " (or predict at the population level: include_group_effects=False, --no-group-effects)" if missing[0] in group_cols else ""
        raise ModelError(f"column {missing[0]!r} needed by the formula is not in the new data (columns are: {cols}){hint}")
    used = data[columns]
    bad = used.isna().any(axis=1).to_numpy().copy()
    for name in columns:
        if _is_number(used[name]):
            bad |= ~np.isfinite(used[name].to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        cols = [c for c in columns if used[c].isna().any()]
        raise ModelError(f"{int(bad.sum())} rows of the new data have missing or infinite values in "
                         f"{', '.join(cols) or 'used columns'}; predictions need complete rows")
    frame = design.frame
    conformed = pd.DataFrame({c: _conform(c, data[c], frame[c]) for c in needed}, index=data.index)
    n = data.shape[0]
    try:
        if fixed.common is not None:
            fnew = fixed.common.evaluate_new_data(conformed)
            F = np.asarray(fnew.design_matrix, dtype=float).reshape(n, -1)
            fixed_names = _column_labels(fnew)
        else:
            F, fixed_names = np.empty((n, 0)), []
        vnew = varying.common.evaluate_new_data(conformed)
        X = np.asarray(vnew.design_matrix, dtype=float).reshape(n, -1)
        varying_names = _column_labels(vnew)
    except ModelError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot evaluate formula {spec.formula!r} on the new data: {detail}") from None
    if varying_names != list(design.varying_terms):
        raise ModelError(f"the new data give varying terms {varying_names}, not the fitted {list(design.varying_terms)}")
    where = {name: i for i, name in enumerate(fixed_names)}
    Z = F[:, [where[t] for t in design.fixed_terms]] if design.fixed_terms else np.empty((n, 0))
    off = F[:, [i for i, name in enumerate(fixed_names) if name.startswith("offset(")]].sum(axis=1)
    off = off + _external_offset(fit, data, offset)

    group = np.full(n, -1, dtype=np.int64)
    new_group = np.full(n, -1, dtype=np.int64)
    new_labels: list[str] = []
    labels = None
    if include_group_effects:
        fitted = {label_key(v): j for j, v in enumerate(fit.posterior["group"].values)}
        labels = row_labels(data, group_cols)
        new_index: dict[str, int] = {}
        for i, key in enumerate(labels):
            j = fitted.get(key)
            if j is not None:
                group[i] = j
            else:
                new_group[i] = new_index.setdefault(key, len(new_index))
        new_labels = list(new_index)
    return NewDesign(X=X, Z=Z, offset=off, group=group, new_group=new_group, new_labels=new_labels,
                     labels=labels, trials=_new_trials(fit, data, trials), index=data.index)


def _external_offset(fit: Fit, data: pd.DataFrame, offset: Any) -> np.ndarray | float:
    """The part of the offset that came from ``offset=`` at fit time, for the new rows."""
    if offset is not None:
        if isinstance(offset, str):
            if offset not in data.columns:
                raise ModelError(f"offset column {offset!r} is not in the new data")
            values = pd.to_numeric(data[offset], errors="coerce").to_numpy(dtype=float)
        else:
            values = np.asarray(offset, dtype=float)
            if values.shape not in ((), (data.shape[0],)):
                raise ModelError(f"offset must be one number or one per new row ({data.shape[0]}), got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ModelError("offset must be finite numbers, e.g. np.log(exposure)")
        return values
    if fit_uses_external_offset(fit):
        raise ModelError("this model was fitted with an offset= argument (not an offset(...) term of the formula); "
                         "pass offset= for the new rows (a column name or one value per row)")
    return 0.0


def fit_uses_external_offset(fit: Fit) -> bool:
    """Whether the fitted offset differs from the formula's own ``offset(...)`` terms."""
    cd = fit.group("constant_data")
    if cd is None:  # a Dask fit: Gaussian, no offset
        return False
    stored = cd["offset"].values if "offset" in cd else np.zeros(1)
    if not np.any(stored != 0):
        return False
    design = fit.design
    if design.formulae_fixed.common is None:
        return True
    F = design.formulae_fixed.common.evaluate_new_data(design.frame)
    names = _column_labels(F)
    formula_off = np.asarray(F.design_matrix, dtype=float)[:, [i for i, s in enumerate(names) if s.startswith("offset(")]].sum(axis=1)
    return not np.allclose(formula_off, stored)


def _new_trials(fit: Fit, data: pd.DataFrame, trials: Any) -> np.ndarray | None:
    if fit.family != "binomial":
        return None
    if trials is None:
        name = _trials_name(fit.design.spec.response)
        if name is None:
            return None
        if name in data.columns:
            trials = data[name]
        else:  # an expression, as cbind(successes, failures) gives: (successes) + (failures)
            try:
                trials = data.eval(name, engine="python")
            except Exception:
                return None
    values = np.broadcast_to(np.asarray(trials, dtype=float), (data.shape[0],)) if not isinstance(trials, str) else (
        data[trials].to_numpy(dtype=float) if trials in data.columns else None)
    if values is None:
        raise ModelError(f"trials column {trials!r} is not in the new data")
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values != np.round(values)):
        raise ModelError("trials must be non-negative integers")
    return np.asarray(values, dtype=float)


def _new_weights(data: pd.DataFrame, weights: Any) -> np.ndarray:
    """The new rows' precision weights: a column of the new data or one value per row (or one for all)."""
    if isinstance(weights, str):
        if weights not in data.columns:
            raise ModelError(f"weights column {weights!r} is not in the new data")
        values = pd.to_numeric(data[weights], errors="coerce").to_numpy(dtype=float)
    else:
        try:
            values = np.asarray(weights, dtype=float)
        except (TypeError, ValueError):
            raise ModelError("weights must be positive numbers") from None
        if values.shape not in ((), (data.shape[0],)):
            raise ModelError(f"weights must be one number or one per new row ({data.shape[0]}), got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ModelError("weights must be finite positive numbers (precision weights: variance sigma2 / w_i)")
    return np.broadcast_to(values, (data.shape[0],))


# -- predictions ----------------------------------------------------------------------------

def _cholesky(Sigma: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.cholesky(Sigma)
    except np.linalg.LinAlgError:  # a numerically singular draw: symmetric square root instead
        w, v = np.linalg.eigh(Sigma)
        return v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]


def new_group_effects(theta: np.ndarray, Sigma: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(chain, draw, k, p) effects of k unseen groups, beta = theta + chol(Sigma) u per draw."""
    c, d, p = theta.shape
    u = rng.standard_normal((c, d, k, p))
    return theta[:, :, None, :] + np.einsum("cdkl,cdul->cduk", _cholesky(Sigma), u)


def prediction_kind(kind: str) -> str:
    """``kind`` checked, aliases (:data:`KIND_ALIASES`) read as their kind."""
    kind = KIND_ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ModelError(f"kind must be one of {', '.join(KINDS)} (or lme4's 'link' for 'linear'), not {kind!r}")
    return kind


#: lme4's ``predict(type = ...)``: "link" the linear predictor, "response" the inverse link
#: of it (here ``kind="mean"``; ``kind="response"`` draws new responses, brms' posterior_predict)
LME4_TYPES = {"link": "linear", "response": "mean"}


def lme4_type(kind: str, type: str | None) -> str:
    """The ``kind`` that lme4's ``type`` means (:data:`LME4_TYPES`), or ``kind`` without one."""
    if type is None:
        return kind
    if kind != "mean":
        raise ModelError(f"give kind= or lme4's type=, not both (kind={kind!r}, type={type!r})")
    if type not in LME4_TYPES:
        raise ModelError(f"type is lme4's 'link' or 'response' (kind='linear' or 'mean'), not {type!r}; "
                         "kind='response' draws new responses")
    return LME4_TYPES[type]


def refuse_new_levels(out: xr.DataArray, group_factor: str | None = None) -> None:
    """With ``allow_new_levels=False`` (lme4's default): refuse in one line rows of levels not
    seen in fitting, as the prediction's coordinates mark them (``new_group``, ``<factor>_new``)."""
    for name in out.coords:
        if name == "new_group" or str(name).endswith("_new"):
            new = np.asarray(out.coords[name].values, dtype=bool)
            if new.any():
                factor = repr(group_factor or "the grouping factor") if name == "new_group" else repr(str(name)[:-len("_new")])
                labels = out.coords["group" if name == "new_group" else f"{str(name)[:-len('_new')]}_level"].values[new]
                shown = ", ".join(repr(str(x)) for x in dict.fromkeys(labels.tolist()))
                raise ModelError(f"the new data have levels of {factor} not seen in fitting ({shown}); "
                                 "allow_new_levels=True (the default) draws their effects from MVN(theta, Sigma), "
                                 "include_group_effects=False predicts at the population level")


def one_factor_re_form(fit: Fit, re_form: Any, include_group_effects: bool) -> tuple[Any, bool]:
    """lme4's ``re.form`` of a fit with one grouping factor as ``include_group_effects``: ``"~0"``,
    ``"NA"`` or NaN (R's NA) leave its group effects out, a formula or list naming its factor
    keeps them, another factor is refused (:func:`multilevel.predict_crossed.resolve_re_form`);
    ``(None, include)`` then. Fits with several factors keep ``re_form``."""
    if re_form is None or fit.several_terms:
        return re_form, include_group_effects
    from .predict_crossed import resolve_re_form

    return None, bool(resolve_re_form(fit, re_form, include_group_effects))


def predict(fit: Fit, newdata: Any = None, kind: str = "mean", include_group_effects: bool = True,
            draws: int | None = None, seed: Any = None, summary: bool = False, hdi_prob: float = HDI_PROB,
            offset: Any = None, trials: Any = None, weights: Any = None,
            re_form: Any = None, allow_new_levels: bool = True,
            type: str | None = None) -> xr.DataArray | pd.DataFrame:
    """Posterior draws of predictions for the rows of ``newdata`` (see the module docstring),
    or with ``newdata=None`` the fitted values of the rows used in fitting (:func:`fitted`).

    Returns a DataArray (chain, draw, obs), ``obs`` the new rows in order (coordinates
    ``row``: the data's index labels; ``group`` and ``new_group`` with group effects), or
    with ``summary=True`` a DataFrame indexed like ``newdata`` with columns mean, sd and the
    ``hdi_prob`` HDI. ``draws``: None for all draws, or this many evenly spaced per chain.
    ``seed`` seeds the new-group effects and the response draws. ``offset``: for models
    fitted with ``offset=``, the new rows' offset (column name or values). ``trials``:
    binomial ``kind="response"``, the new rows' trials when the data lack the trials column.
    ``weights``: Gaussian ``kind="response"``, the new rows' precision weights (column name or
    one value per row; default 1, variance sigma2); the other kinds do not depend on them.
    ``re_form``: which grouping factors' group effects to include (lme4's ``re.form``: None
    all, a list of factor names, ``"~0"``, ``"NA"`` or NaN none, or ``"~(1 | s)"``;
    :mod:`multilevel.predict_crossed`); with one factor, ``"~0"`` is ``include_group_effects=False``.
    ``allow_new_levels=False`` (lme4's default) refuses rows of levels not seen in fitting;
    ``type`` is lme4's spelling: ``"link"`` is ``kind="linear"``, ``"response"`` ``kind="mean"``.

    ``newdata`` a Dask DataFrame (any fit, ``summary=True``): a Dask DataFrame, lazy, of the
    per-row summaries, each partition predicted as a pandas frame is, with random numbers
    spawned from ``seed`` per partition
    (:func:`multilevel.distributed.posterior.predict_partitions`).
    """
    kind = prediction_kind(lme4_type(kind, type))
    crossed = fit.several_terms
    re_form, include_group_effects = one_factor_re_form(fit, re_form, include_group_effects)
    if newdata is None:
        if offset is not None or trials is not None or weights is not None:
            raise ModelError("offset=, trials= and weights= describe new rows; the fitted rows use their own, "
                             "so pass newdata or drop them")
        return fitted(fit, kind=kind, include_group_effects=include_group_effects, draws=draws, seed=seed,
                      summary=summary, hdi_prob=hdi_prob, re_form=re_form)
    family = check_family(fit.family)
    if weights is not None and not family.is_gaussian:
        raise ModelError(f"weights apply to the gaussian family only, not {family.name}")
    from .distributed.posterior import is_dask_frame

    if is_dask_frame(newdata):  # partition by partition: a Dask DataFrame of per-row summaries
        from .distributed.posterior import predict_partitions

        return predict_partitions(fit, newdata, seed, summary, hdi_prob, kind=kind,
                                  include_group_effects=include_group_effects, draws=draws, offset=offset,
                                  trials=trials, weights=weights, re_form=re_form,
                                  allow_new_levels=allow_new_levels)
    newdata = read_data(newdata)
    w = _new_weights(newdata, weights) if weights is not None else None
    if crossed:
        from .predict_crossed import as_array, predict_crossed, resolve_re_form

        factors = resolve_re_form(fit, re_form, include_group_effects)
        new_trials = _response_trials(fit, kind, _new_trials(fit, newdata, trials))
        external = _external_offset(fit, newdata, offset)
        rng = make_rng(seed)
        idx = draw_positions(fit.posterior.sizes["draw"], draws)
        eta, coords = predict_crossed(fit, newdata, idx, factors, rng, _conform)
        eta += external
        values = on_scale(kind, family, eta, rng, dispersion(fit.posterior, family, idx, kind), new_trials, w)
        out = as_array(values, fit, idx, newdata.index, kind, factors, coords)
        if not allow_new_levels:
            refuse_new_levels(out)
        return summarize(out, hdi_prob, index=newdata.index) if summary else out
    nd = new_design(fit, newdata, include_group_effects=include_group_effects, offset=offset, trials=trials)
    _response_trials(fit, kind, nd.trials)
    rng = make_rng(seed)
    post = fit.posterior
    idx = draw_positions(post.sizes["draw"], draws)
    theta = post["theta"].values[:, idx]
    n = nd.X.shape[0]
    eta = np.broadcast_to(nd.offset, (theta.shape[0], idx.shape[0], n)).astype(float).copy()
    if nd.Z.shape[1]:
        eta += np.einsum("ir,cdr->cdi", nd.Z, post["alpha"].values[:, idx])
    if not include_group_effects:
        eta += np.einsum("ik,cdk->cdi", nd.X, theta)
    else:
        # term by term, so that temporaries stay the size of the output (chain, draw, rows)
        seen = np.flatnonzero(nd.group >= 0)
        if seen.size:
            beta = post["beta"].values[:, idx]
            for k in range(nd.X.shape[1]):
                eta[..., seen] += nd.X[seen, k] * beta[:, :, nd.group[seen], k]
        if nd.new_labels:
            unseen = np.flatnonzero(nd.group < 0)
            b_new = new_group_effects(theta, post["Sigma"].values[:, idx], len(nd.new_labels), rng)
            for k in range(nd.X.shape[1]):
                eta[..., unseen] += nd.X[unseen, k] * b_new[:, :, nd.new_group[unseen], k]
    values = on_scale(kind, family, eta, rng, dispersion(post, family, idx, kind), nd.trials, w)
    coords: dict[str, Any] = {"chain": post["chain"].values, "draw": post["draw"].values[idx], "obs": np.arange(n)}
    coords["row"] = ("obs", index_values(nd.index))
    if nd.labels is not None:
        coords["group"] = ("obs", np.asarray(nd.labels, dtype=str))
        coords["new_group"] = ("obs", nd.group < 0)
    out = xr.DataArray(values, dims=("chain", "draw", "obs"), coords=coords, name=kind,
                       attrs={"kind": kind, "include_group_effects": int(include_group_effects), "family": family.name})
    if not allow_new_levels:
        refuse_new_levels(out, fit.attrs.get("group_factor"))
    if summary:
        return summarize(out, hdi_prob, index=nd.index)
    return out


def _response_trials(fit: Fit, kind: str, trials: np.ndarray | None) -> np.ndarray | None:
    """``trials``, refused in one line when binomial responses are drawn for new rows without them."""
    if kind == "response" and fit.family == "binomial" and trials is None:
        name = _trials_name(fit.design.spec.response)
        where = f"a column {name!r} in the new data" if re.fullmatch(r"\w+", name or "") else f"the columns of {name!r}"
        raise ModelError(f"kind='response' of the binomial family needs the new rows' trials: {where} or trials=")
    return trials


def fitted(fit: Fit, kind: str = "mean", include_group_effects: bool = True, draws: int | None = None,
           seed: Any = None, summary: bool = False, hdi_prob: float = HDI_PROB,
           re_form: Any = None) -> xr.DataArray | pd.DataFrame:
    """Predictions (as :func:`predict`) for the rows used in fitting, from the stored design
    (the formula is not evaluated again): with group effects the linear predictor is
    :meth:`Fit.linear_predictor`, without them x_i' theta + z_i' alpha + offset_i.

    Rows are in the order of their index labels (coordinate ``row``), which is the data's own
    order whenever its index increases (as a default RangeIndex does); rows dropped for
    missing values are absent. ``summary=True`` gives a DataFrame indexed by the row labels.

    A Dask fit (``engine="dask"``) reads its rows again, partition by partition: ``summary=True``
    only, a lazy Dask DataFrame of the kept rows' summaries in data order, the same as
    ``predict(newdata)`` of those rows as a Dask DataFrame with the same seed
    (:func:`multilevel.distributed.posterior.fitted_partitions`); ``kind="response"`` gives
    per-row summaries of replicated responses. A Dask fit loaded from a file has no handle
    on its rows and refuses: pass the data again as ``newdata``.
    """
    kind = prediction_kind(kind)
    re_form, include_group_effects = one_factor_re_form(fit, re_form, include_group_effects)
    if fit.partitioned:  # the rows stay in their partitions: a Dask DataFrame of per-row summaries
        from .distributed.posterior import fitted_partitions

        return fitted_partitions(fit, seed, summary, hdi_prob, kind=kind, include_group_effects=include_group_effects,
                                 draws=draws, re_form=re_form)
    family = check_family(fit.family)
    rng = make_rng(seed)
    post = fit.posterior
    idx = draw_positions(post.sizes["draw"], draws)
    fit.require_rows("predict() without new data")
    cd = fit.group("constant_data")
    if "F" in cd:  # several grouping factors: rows in the data's order
        from .predict_crossed import as_array, fitted_crossed, resolve_re_form

        factors = resolve_re_form(fit, re_form, include_group_effects)
        eta, rows = fitted_crossed(fit, idx, factors)
        values = on_scale(kind, family, eta, rng, dispersion(post, family, idx, kind), cd["trials"].values if "trials" in cd else None,
                          cd["weights"].values if "weights" in cd else None)
        out = as_array(values, fit, idx, rows, kind, factors, {})
        return summarize(out, hdi_prob, index=pd.Index(rows, name="row")) if summary else out
    if include_group_effects:
        eta = fit.linear_predictor(idx)
    else:
        eta = np.einsum("ik,cdk->cdi", cd["X"].values, post["theta"].values[:, idx])
        if cd["Z"].shape[1]:
            eta += np.einsum("ir,cdr->cdi", cd["Z"].values, post["alpha"].values[:, idx])
        if "offset" in cd:
            eta += cd["offset"].values
    order = np.argsort(cd["row_label"].values, kind="stable")  # the design sorted the rows by group
    eta = eta[..., order]
    values = on_scale(kind, family, eta, rng, dispersion(post, family, idx, kind), cd["trials"].values[order] if "trials" in cd else None,
                      cd["weights"].values[order] if "weights" in cd else None)
    rows = cd["row_label"].values[order]
    coords: dict[str, Any] = {"chain": post["chain"].values, "draw": post["draw"].values[idx],
                              "obs": np.arange(rows.shape[0]), "row": ("obs", rows)}
    if include_group_effects:
        keys = np.asarray([label_key(v) for v in post["group"].values], dtype=str)
        coords["group"] = ("obs", keys[cd["group_index"].values[order]])
        coords["new_group"] = ("obs", np.zeros(rows.shape[0], dtype=bool))
    out = xr.DataArray(values, dims=("chain", "draw", "obs"), coords=coords, name=kind,
                       attrs={"kind": kind, "include_group_effects": int(include_group_effects), "family": family.name})
    if summary:
        return summarize(out, hdi_prob, index=pd.Index(rows, name="row"))
    return out


def posterior_predictive(fit: Fit, seed: Any = None, draws: int | None = None, chunk: int = 100) -> xr.DataArray:
    """Replicated responses y_rep (chain, draw, obs) for the observed rows, one per posterior
    draw (``draws``: this many evenly spaced per chain), drawn from the family with the
    draw's group effects; ``obs`` as in ``observed_data`` (rows sorted by group)."""
    family = check_family(fit.family)
    rng = make_rng(seed)
    post = fit.posterior
    idx = draw_positions(post.sizes["draw"], draws)
    fit.require_rows("posterior_predictive()")
    cd = fit.group("constant_data")
    y = fit.group("observed_data")["y"].values
    trials = cd["trials"].values if "trials" in cd else None
    weights = cd["weights"].values if "weights" in cd else None
    out = np.empty((post.sizes["chain"], idx.shape[0], y.shape[0]), dtype=float if family.is_gaussian else np.int64)
    # Fit.linear_predictor gathers (chain, draws, rows, terms): keep that under ~200 MB
    per_draw = post.sizes["chain"] * y.shape[0] * max(post.sizes.get("term", 1), 1)
    chunk = max(1, min(chunk, 25_000_000 // max(per_draw, 1)))
    for start in range(0, idx.shape[0], chunk):
        sel = idx[start:start + chunk]
        eta = fit.linear_predictor(sel)
        sigma2 = dispersion(post, family, sel)
        out[:, start:start + sel.shape[0]] = draw_response(family, eta, rng, sigma2=sigma2, trials=trials,
                                                           weights=weights)
    return xr.DataArray(out, dims=("chain", "draw", "obs"), name="y",
                        coords={"chain": post["chain"].values, "draw": post["draw"].values[idx], "obs": np.arange(y.shape[0])})


__all__ = ["KINDS", "KIND_ALIASES", "prediction_kind", "predict", "fitted", "posterior_predictive", "new_design", "summarize", "hdi", "make_rng"]
