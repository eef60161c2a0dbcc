"""Fit: the result of a fit, an ArviZ InferenceData with summaries, report and NetCDF I/O."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .convert import az, dataset_to_frame
from .errors import ModelError
from .families import check_family, pointwise_loglik
from .priors import Priors

HDI_PROB = 0.94
RHAT_MAX = 1.01
ESS_MIN = 400


def _some(names: list) -> str:
    """The first ten names, and how many more."""
    return ", ".join(map(str, names[:10])) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


class Fit:
    """A fitted multilevel model.

    ``idata`` is an ArviZ InferenceData: ``az.summary(fit.idata)``, ``az.plot_trace``
    and ``az.loo`` work on it directly. See :mod:`multilevel.convert` for its variables.
    """

    def __init__(self, idata: az.InferenceData, design: Any = None):
        self.idata = idata
        self._design = design

    @property
    def design(self) -> Any:
        """The model's :class:`~multilevel.design.Design`, rebuilt from the stored training
        data after loading, so that new data get the same transformations."""
        if self._design is None and "training_data" in self.idata.groups():
            from .design import build_design
            from .formula import parse_formula

            from .convert import OFFSET_COLUMN, WEIGHTS_COLUMN
            from .families import family_response

            frame = dataset_to_frame(self.idata.training_data)
            offset = frame.pop(OFFSET_COLUMN).to_numpy() if OFFSET_COLUMN in frame else None
            weights = frame.pop(WEIGHTS_COLUMN).to_numpy() if WEIGHTS_COLUMN in frame else None
            spec = parse_formula(self.formula)
            design = build_design(spec, frame, na_action="raise", offset=offset, weights=weights)
            design.y, design.trials = family_response(check_family(self.family), design.y, spec.response,
                                                      design.response_kind, design.response_levels)
            self._design = design
        return self._design

    # -- attributes ---------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.idata.posterior.attrs)

    @property
    def formula(self) -> str:
        return str(self.attrs["formula"])

    @property
    def family(self) -> str:
        return str(self.attrs.get("family", "gaussian"))

    @property
    def priors(self) -> Priors:
        return Priors.from_json(self.attrs["priors"])

    @property
    def posterior(self) -> xr.Dataset:
        return self.idata.posterior

    @property
    def zero_mean_terms(self) -> list[str]:
        return json.loads(self.attrs.get("zero_mean_terms", "[]"))

    # -- summaries ----------------------------------------------------------------
    def population_var_names(self) -> list[str]:
        names = ["theta", "alpha", "Sigma", "sigma2"]
        post = self.posterior
        return [n for n in names if n in post and post[n].size > 0]

    def summary(self, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
        """Posterior summary of the population-level parameters.

        Rows ``theta[<term>]`` (terms with a population mean), ``alpha[<term>]``,
        ``Sigma[<term>, <term>]`` (lower triangle) and ``sigma2``; columns mean, sd, the
        HDI bounds, MCSE, ess_bulk, ess_tail and r_hat.
        """
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # constant theta of zero-mean terms, dropped below
            table = az.summary(self.idata, var_names=self.population_var_names(), hdi_prob=hdi_prob)
        return table.loc[[i for i in table.index if self._keep_row(i)]]

    def _keep_row(self, name: str) -> bool:
        if name.startswith("theta["):
            return name[6:-1] not in self.zero_mean_terms
        if name.startswith("Sigma["):
            a, b = (t.strip() for t in name[6:-1].split(","))
            terms = list(self.posterior["term"].values)
            return terms.index(a) >= terms.index(b)
        return True

    def group_level(self, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
        """sd(term) and cor(term, term) of the group effects, as in lme4 and brms reports."""
        Sigma = self.posterior["Sigma"]
        terms = list(self.posterior["term"].values)
        sd = np.sqrt(xr.apply_ufunc(np.diagonal, Sigma, input_core_dims=[["term", "term_"]], output_core_dims=[["term"]], kwargs={"axis1": -2, "axis2": -1}))
        data = {f"sd({t})": sd.sel(term=t) for t in terms}
        for i, a in enumerate(terms):
            for b in terms[i + 1:]:
                data[f"cor({a},{b})"] = Sigma.sel(term=a, term_=b) / (sd.sel(term=a) * sd.sel(term=b))
        ds = xr.Dataset({k: v.drop_vars([c for c in v.coords if c not in ("chain", "draw")]) for k, v in data.items()})
        return az.summary(ds, hdi_prob=hdi_prob)

    def diagnostics_warnings(self, table: pd.DataFrame | None = None) -> list[str]:
        """Messages for parameters with r_hat > 1.01 or ess_bulk < 400."""
        table = self.summary() if table is None else table
        out = []
        bad_rhat = table.index[table["r_hat"] > RHAT_MAX].tolist()
        if bad_rhat:
            out.append(f"r_hat > {RHAT_MAX} for {', '.join(bad_rhat)}: the chains have not mixed; run more draws")
        bad_ess = table.index[table["ess_bulk"] < ESS_MIN].tolist()
        if bad_ess:
            out.append(f"ess_bulk < {ESS_MIN} for {', '.join(bad_ess)}: estimates are noisy; run more draws")
        return out

    def acceptance(self) -> pd.DataFrame | None:
        """Metropolis acceptance rate of each group's beta_j, per chain (rows: groups), or None."""
        ss = self.idata.get("sample_stats")
        if ss is None or "accept_beta" not in ss:
            return None
        rate = ss["accept_beta"].mean("draw")
        return pd.DataFrame(rate.values.T, index=pd.Index(rate["group"].values, name="group"),
                            columns=[f"chain {c}" for c in rate["chain"].values])

    def acceptance_lines(self) -> list[str]:
        table = self.acceptance()
        if table is None:
            return []
        overall = table.mean(axis=1)
        lines = [f"Metropolis acceptance of beta_j: median {overall.median():.2f} over groups "
                 f"(range {overall.min():.2f} to {overall.max():.2f}; per chain {', '.join(f'{v:.2f}' for v in table.mean(axis=0))})"]
        ss = self.idata.sample_stats
        if "accept_alpha" in ss and self.posterior["alpha"].size:
            lines.append(f"Metropolis acceptance of alpha: {float(ss['accept_alpha'].mean()):.2f}")
        low = overall.index[overall < 0.05].tolist()
        widest = self._widest_beta_proposal()
        high = overall.index[(overall > 0.90) & ~widest].tolist()
        close = overall.index[(overall > 0.90) & widest].tolist()
        if close:
            lines.append(f"Acceptance above 90% in groups {_some(close)}: they draw beta_j independently from their "
                         "(widened) Laplace approximation, which is close; their draws mix well")
        for names, what in ((low, "below 5%"), (high, "above 90%")):
            if names:
                lines.append(f"Warning: acceptance {what} in groups {_some(names)}: their draws mix poorly")
        return [*lines, ""]

    def _widest_beta_proposal(self) -> np.ndarray:
        """Per group: whether the default (Laplace) proposal's angle reached pi / 2 in every chain.
        From there on the proposal is at least an independent draw from the group's (widened)
        Laplace approximation, so high acceptance is no sign of too small a step. False for
        fits whose scales are not angles (saved before the proposal took this form)."""
        n_groups = self.posterior.sizes.get("group", 0)
        a = self.attrs
        angles = a.get("proposal") == "laplace" and a.get("proposal_scale") == "angle"
        if not angles or "sampler_state" not in self.idata.groups():
            return np.zeros(n_groups, dtype=bool)
        log_scale = self.idata.sampler_state["log_scale"].values  # (chain, group): log of the angle
        if log_scale.shape[-1] != n_groups:
            return np.zeros(n_groups, dtype=bool)
        return np.all(log_scale >= np.log(0.5 * np.pi), axis=0)

    def report(self) -> str:
        """An lme4/brms-like text report of the fit."""
        a = self.attrs
        post = self.posterior
        n_groups = post.sizes.get("group", 0)
        lines = [
            f" Family: {self.family} ({check_family(self.family).link} link)",
            f"Formula: {self.formula}",
            f"   Data: {a.get('n_obs')} rows, {n_groups} groups of {a.get('group_factor')}"
            + (f", precision weights {a['weights']}" if a.get("weights") else ""),
            f"  Draws: {post.sizes['chain']} chains x {post.sizes['draw']} draws after {a.get('warmup')} warm-up sweeps"
            f" ({a.get('sampler')}, seed {a.get('seed')})",
            "",
        ]
        table = self.summary()
        cols = ["mean", "sd", table.columns[2], table.columns[3], "r_hat", "ess_bulk", "ess_tail"]
        labels = {"mean": "Estimate", "sd": "Est.Error"}

        def block(title: str, rows: pd.DataFrame) -> None:
            if len(rows):
                lines.append(title)
                shown = rows[cols].rename(columns=labels).copy()
                for c in ("ess_bulk", "ess_tail"):
                    shown[c] = shown[c].map(lambda v: "nan" if v != v else f"{v:.0f}")
                lines.append(shown.to_string(float_format=lambda x: f"{x:.3f}"))
                lines.append("")

        def strip(prefix: str, rows: pd.DataFrame) -> pd.DataFrame:
            return rows.rename(index=lambda s: s[len(prefix) + 1:-1])

        block(f"Group-level effects ({a.get('group_factor')}):", self.group_level())
        fixed = pd.concat([
            strip("theta", table.loc[[i for i in table.index if i.startswith("theta[")]]),
            strip("alpha", table.loc[[i for i in table.index if i.startswith("alpha[")]]),
        ])
        block("Population-level effects:", fixed)
        block("Group-effect covariance Sigma:", table.loc[[i for i in table.index if i.startswith("Sigma[")]])
        block("Residual variance:", table.loc[[i for i in table.index if i == "sigma2"]])
        lines.extend(self.acceptance_lines())
        for msg in self.diagnostics_warnings(table):
            lines.append(f"Warning: {msg}")
        return "\n".join(lines).rstrip() + "\n"

    def __str__(self) -> str:
        return self.report()

    def __repr__(self) -> str:
        return f"<multilevel.Fit {self.family}: {self.formula!r}, {self.posterior.sizes['chain']} chains x {self.posterior.sizes['draw']} draws>"

    # -- resuming -------------------------------------------------------------------
    def chain_draws(self, state_type: Any) -> Any:
        """The run behind this fit (draws and chains' states), for :func:`multilevel.resume`."""
        from .convert import sampler_state_from_dataset
        from .run import ChainDraws

        if "sampler_state" not in self.idata.groups():
            raise ModelError("this fit has no sampler state to resume from (saved by an older version?)")
        ss = self.idata.sampler_state
        draws = {k: self.posterior[k].values for k in self.posterior.data_vars}
        if "sample_stats" in self.idata.groups():
            draws.update({k: self.idata.sample_stats[k].values for k in self.idata.sample_stats.data_vars})
        return ChainDraws(draws, int(self.attrs["seed"]), float(self.attrs.get("sampling_seconds", 0.0)),
                          sampler_state_from_dataset(ss, state_type), int(ss.attrs["warmup"]),
                          int(ss.attrs["target_draws"]), False)

    # -- log-likelihood -------------------------------------------------------------
    def linear_predictor(self, draws: slice = slice(None)) -> np.ndarray:
        """eta (chain, draw, obs) = x_i' beta_g[i] + z_i' alpha for the observed rows."""
        cd = self.idata.constant_data
        X, Z, g = cd["X"].values, cd["Z"].values, cd["group_index"].values
        beta = self.posterior["beta"].values[:, draws]
        eta = np.zeros((beta.shape[0], beta.shape[1], X.shape[0]))
        for k in range(X.shape[1]):  # one term at a time: temporaries (chain, draw, obs), never x terms
            eta += X[:, k] * beta[:, :, g, k]
        if "offset" in cd:
            eta += cd["offset"].values
        if Z.shape[1]:
            eta += np.einsum("ir,cdr->cdi", Z, self.posterior["alpha"].values[:, draws])
        return eta

    def log_likelihood(self, chunk: int | None = None) -> xr.DataArray:
        """Pointwise log-likelihood (chain, draw, obs): stored, or computed from the draws in
        chunks of ``chunk`` draws (default: about 2e7 values a chunk) so temporaries stay small."""
        if "log_likelihood" in self.idata.groups():
            return self.idata.log_likelihood["y"]
        y = self.idata.observed_data["y"].values
        cd = self.idata.constant_data
        trials = cd["trials"].values if "trials" in cd else np.ones_like(y)
        family = check_family(self.family)
        n_chain, n_draw = self.posterior.sizes["chain"], self.posterior.sizes["draw"]
        out = np.empty((n_chain, n_draw, y.shape[0]))
        chunk = chunk or max(1, int(2e7 // (n_chain * max(y.shape[0], 1))))
        sigma2 = self.posterior["sigma2"].values if family.is_gaussian else None
        weights = cd["weights"].values if "weights" in cd else None
        for start in range(0, n_draw, chunk):
            sl = slice(start, min(start + chunk, n_draw))
            s2 = sigma2[:, sl, None] if sigma2 is not None else None
            out[:, sl] = pointwise_loglik(family, y, trials, self.linear_predictor(sl), s2, weights)
        return xr.DataArray(out, dims=("chain", "draw", "obs"),
                            coords={"chain": self.posterior["chain"], "draw": self.posterior["draw"], "obs": np.arange(y.shape[0])}, name="y")

    # -- I/O ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the fit to NetCDF at ``path`` (atomically: temporary file, then rename)."""
        path = Path(path)
        check_writable(path, overwrite)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self.idata.to_netcdf(tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    # -- predictions, checks, comparison and plots (multilevel.predict, .comparison, .plots) ------
    def predict(self, newdata: Any, kind: str = "mean", include_group_effects: bool = True, draws: int | None = None,
                seed: Any = None, summary: bool = False, hdi_prob: float = HDI_PROB, offset: Any = None,
                trials: Any = None, weights: Any = None) -> xr.DataArray | pd.DataFrame:
        """Posterior draws (chain, draw, obs) of predictions for the rows of ``newdata``.

        ``kind``: ``"linear"`` predictor, ``"mean"`` (inverse link; the success probability
        for binomial and bernoulli) or ``"response"`` (a new response drawn from the family).
        Rows of groups seen in fitting use their beta_j draws; a group never seen gets a new
        beta ~ MVN(theta, Sigma) per posterior draw (from ``seed``); ``include_group_effects=False``
        predicts at beta = theta. ``summary=True`` returns a DataFrame (mean, sd, HDI) instead.
        ``weights``: Gaussian ``kind="response"``, the new rows' precision weights (column name or
        values; default 1: variance sigma2). See :func:`multilevel.predict.predict`.
        """
        from .predict import predict

        return predict(self, newdata, kind=kind, include_group_effects=include_group_effects, draws=draws, seed=seed,
                       summary=summary, hdi_prob=hdi_prob, offset=offset, trials=trials, weights=weights)

    def posterior_predictive(self, seed: Any = None) -> xr.DataArray:
        """Draw a replicated response for every observed row and posterior draw, store it as
        ``y`` in the ``posterior_predictive`` group of ``idata`` (replacing any) and return it."""
        from .predict import posterior_predictive

        y_rep = posterior_predictive(self, seed=seed)
        if "posterior_predictive" in self.idata.groups():
            del self.idata["posterior_predictive"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.idata.add_groups(posterior_predictive=y_rep.to_dataset(name="y"))
        return self.idata.posterior_predictive["y"]

    def loo(self, pointwise: bool | None = None, **kwargs: Any) -> Any:
        """PSIS leave-one-out cross-validation by ArviZ (``az.loo``) from :meth:`log_likelihood`."""
        from .comparison import loo

        return loo(self, pointwise=pointwise, **kwargs)

    def waic(self, pointwise: bool | None = None, **kwargs: Any) -> Any:
        """WAIC by ArviZ (``az.waic``) from :meth:`log_likelihood`."""
        from .comparison import waic

        return waic(self, pointwise=pointwise, **kwargs)

    def plot(self, kind: str = "trace", **kwargs: Any) -> Any:
        """The matplotlib Figure of plot ``kind``: trace, rank, caterpillar, shrinkage, ppc or pairs."""
        from .plots import plot

        return plot(self, kind, **kwargs)

    def plot_trace(self, **kwargs: Any) -> Any:
        """Trace plots of the population parameters (ArviZ); returns the Figure."""
        return self.plot("trace", **kwargs)

    def plot_rank(self, **kwargs: Any) -> Any:
        """Rank plots of the population parameters (ArviZ); returns the Figure."""
        return self.plot("rank", **kwargs)

    def plot_caterpillar(self, **kwargs: Any) -> Any:
        """Every group's coefficients with 94% HDIs, sorted, against theta; returns the Figure."""
        return self.plot("caterpillar", **kwargs)

    def plot_shrinkage(self, **kwargs: Any) -> Any:
        """Groups' own estimates against their posterior means, pulled towards theta; returns the Figure."""
        return self.plot("shrinkage", **kwargs)

    def plot_ppc(self, **kwargs: Any) -> Any:
        """Posterior predictive check suited to the family; returns the Figure."""
        return self.plot("ppc", **kwargs)

    def plot_pairs(self, **kwargs: Any) -> Any:
        """Pair plot of the population parameters (ArviZ); returns the Figure."""
        return self.plot("pairs", **kwargs)


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse an output path before any work: existing (without ``overwrite``) or unwritable."""
    if path.exists() and not overwrite:
        raise ModelError(f"output file {str(path)!r} exists; choose another name or pass overwrite (--overwrite)")
    if path.is_dir():
        raise ModelError(f"output path {str(path)!r} is a directory; give a file name such as fit.nc")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ModelError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ModelError(f"cannot write {str(path)!r}: folder {str(parent)!r} is not writable")


def load(path: str | os.PathLike) -> Fit:
    """Read a fit written by :meth:`Fit.save`."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"fit file {str(path)!r} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = az.from_netcdf(path)
    except Exception as exc:
        raise ModelError(f"cannot read {str(path)!r} as a saved fit: {type(exc).__name__}") from None
    if "posterior" not in idata.groups() or "formula" not in idata.posterior.attrs:
        raise ModelError(f"{str(path)!r} is not a fit saved by multilevel")
    return Fit(idata)
