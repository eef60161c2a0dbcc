"""Fit: the result of a fit, an ArviZ InferenceData with summaries, report and NetCDF I/O."""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .convert import dataset_to_frame
from .diagnostics import summary as summarize
from .errors import ModelError, require_fit_file
from .families import check_family, loglik_by_draws

if TYPE_CHECKING:  # the priors' module loads the compiled kernels' (numba): only when a fit's priors are read
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
    and ``az.loo`` (after :meth:`add_log_likelihood`) work on it directly. See
    :mod:`multilevel.convert` for its variables. A fit holds its groups as xarray Datasets
    and makes the InferenceData of them on first use of ``idata`` (importing ArviZ then):
    fitting, printing and saving a fit never import ArviZ.
    """

    def __init__(self, groups: Any, design: Any = None):
        if isinstance(groups, Mapping):
            self._groups: dict[str, xr.Dataset] | None = dict(groups)
            self._idata = None
        else:  # an InferenceData
            self._groups, self._idata = None, groups
        self._design = design

    @property
    def idata(self) -> Any:
        """The ArviZ InferenceData of the fit (made on first use; from then on it is the fit's data)."""
        if self._idata is None:
            from .convert import to_inference_data

            self._idata, self._groups = to_inference_data(self._groups), None
        return self._idata

    def group_names(self) -> list[str]:
        """The names of the fit's groups (posterior, sample_stats, constant_data, ...)."""
        return list(self._groups) if self._idata is None else list(self._idata.groups())

    def group(self, name: str) -> xr.Dataset | None:
        """The fit's group ``name`` (an xarray Dataset), or None."""
        if self._idata is None:
            return self._groups.get(name)
        return self._idata[name] if name in self._idata.groups() else None

    def set_group(self, name: str, ds: xr.Dataset) -> None:
        """Add group ``name`` to the fit, replacing any group of that name."""
        if self._idata is None:
            self._groups[name] = ds
            return
        if name in self._idata.groups():
            del self._idata[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._idata.add_groups({name: ds})

    @property
    def several_terms(self) -> bool:
        """Whether the fit has the layout of several random-effects terms (per-factor variables)."""
        cd = self.group("constant_data")
        return (cd is not None and "F" in cd) or self.partitioned

    @property
    def partitioned(self) -> bool:
        """Whether the fit was made with ``engine="dask"``: its rows stay in their partitions (an
        ``observed_data`` group holds at most a sample of them, :meth:`posterior_predictive`)."""
        return self.attrs.get("engine") == "dask"

    def require_rows(self, what: str) -> None:
        """Refuse ``what`` in one line when the fitted rows are not in the fit (``engine="dask"``)."""
        if self.group("observed_data") is None or self.partitioned:
            raise ModelError(f"{what} needs the fitted rows in memory, which a fit made with engine='dask' leaves in "
                             f"{self.attrs.get('data_source')}; use the partition-by-partition methods "
                             "(predict, posterior_predictive, loo) or predict(newdata)")

    @property
    def design(self) -> Any:
        """The model's :class:`~multilevel.design.Design`, rebuilt from the stored training
        data after loading, so that new data get the same transformations (a Dask fit's from
        its stored coding: :func:`multilevel.distributed.design.restore_design`). A fit saved
        when ``bs()`` was ``formulae``'s basis (before ``bs_basis`` was recorded) is refused: its
        coefficients are of other columns than today's ``bs()``, R's."""
        if self._design is None and self.attrs.get("bs_basis") != "R" and re.search(r"(?<![\w.])bs\s*\(", self.formula):
            raise ModelError("this fit was saved when bs() was formulae's centred B-spline basis, not R's as now: its "
                             "coefficients are of other columns, so new data cannot be coded for it; fit the model "
                             "again (its summary and draws are unchanged)")
        if self._design is None and self.group("training_data") is None and self.attrs.get("engine") == "dask":
            from .distributed.design import CODING_GROUP, restore_design
            from .formula import parse_formula

            if self.group(CODING_GROUP) is None:
                raise ModelError(f"this fit was made with engine='dask' and saved without its {CODING_GROUP} group: "
                                 "new data cannot be coded as the fitted rows were; fit the model again")
            self._design = restore_design(parse_formula(self.formula), self.group(CODING_GROUP),
                                          int(self.attrs.get("n_obs", 0)), str(self.attrs.get("data_source")),
                                          str(self.family))
        if self._design is None and self.group("training_data") is not None:
            from .design import build_design
            from .formula import parse_formula

            from .convert import OFFSET_COLUMN, WEIGHTS_COLUMN
            from .families import family_response

            frame = dataset_to_frame(self.group("training_data"))
            offset = frame.pop(OFFSET_COLUMN).to_numpy() if OFFSET_COLUMN in frame else None
            weights = frame.pop(WEIGHTS_COLUMN).to_numpy() if WEIGHTS_COLUMN in frame else None
            spec = parse_formula(self.formula)
            design = build_design(spec, frame, na_action="raise", offset=offset, weights=weights,
                                  gaussian=check_family(self.family).is_gaussian,
                                  crossed="F" in self.group("constant_data"))
            design.y, design.trials = family_response(check_family(self.family), design.y, spec.response,
                                                      design.response_kind, design.response_levels)
            self._design = design
        return self._design

    # -- attributes ---------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.posterior.attrs)

    @property
    def formula(self) -> str:
        return str(self.attrs["formula"])

    @property
    def family(self) -> str:
        return str(self.attrs.get("family", "gaussian"))

    @property
    def priors(self) -> Priors:
        from .priors import Priors

        return Priors.from_json(self.attrs["priors"])

    @property
    def posterior(self) -> xr.Dataset:
        return self.group("posterior")

    @property
    def zero_mean_terms(self) -> list[str]:
        return json.loads(self.attrs.get("zero_mean_terms", "[]"))

    # -- summaries ----------------------------------------------------------------
    def summary(self, hdi_prob: float = HDI_PROB, round_to: int | None = None) -> pd.DataFrame:
        """Posterior summary of the population-level parameters, at full precision unless
        ``round_to`` (decimals) is given.

        Rows ``theta[<term>]`` (terms with a population mean), ``alpha[<term>]``,
        ``Sigma[<term>, <term>]`` (lower triangle) and ``sigma2``; columns mean, sd, the
        HDI bounds, mcse_mean, mcse_sd, ess_bulk, ess_tail and r_hat, as ``az.summary``
        computes them (:mod:`multilevel.diagnostics`).
        """
        from .comparison import population_dataset

        ds = population_dataset(self)
        return _rounded(summarize({k: v.values for k, v in ds.data_vars.items()}, hdi_prob), round_to)

    def group_level(self, hdi_prob: float = HDI_PROB, round_to: int | None = None,
                    factor: str | None = None) -> pd.DataFrame:
        """sd(term) and cor(term, term) of the group effects, as in lme4 and brms reports; with
        several grouping factors, of ``factor`` (default: the first). Correlations between
        uncorrelated terms (``||``) are 0 by the model and left out."""
        name = self.sigma_variables().get(factor) if factor is not None else next(iter(self.sigma_variables().values()))
        if name is None:
            raise ModelError(f"the fit has no grouping factor {factor!r}; its factors are: "
                             f"{', '.join(self.sigma_variables())}")
        da = self.posterior[name]
        Sigma = da.values
        terms = [str(t) for t in da[da.dims[-1]].values]
        sd = np.sqrt(np.diagonal(Sigma, axis1=-2, axis2=-1))
        data = {f"sd({t})": sd[..., k] for k, t in enumerate(terms)}
        for i, a in enumerate(terms):
            for j in range(i + 1, len(terms)):
                if np.any(Sigma[..., i, j]):
                    data[f"cor({a},{terms[j]})"] = Sigma[..., i, j] / (sd[..., i] * sd[..., j])
        return _rounded(summarize(data, hdi_prob), round_to)

    def sigma_variables(self) -> dict[str, str]:
        """{grouping factor: its covariance variable in the posterior}: ``Sigma`` for a
        one-factor fit, ``Sigma_<factor>`` per factor otherwise."""
        post = self.posterior
        if "Sigma" in post:
            return {str(self.attrs.get("group_factor", "group")): "Sigma"}
        return {str(v)[len("Sigma_"):]: str(v) for v in post.data_vars if str(v).startswith("Sigma_")}

    def beta_variables(self) -> dict[str, str]:
        """{grouping factor: its per-group variable}, those the posterior holds (none when
        saved with ``group_draws=False``)."""
        post = self.posterior
        return {f: ("beta" if v == "Sigma" else "beta_" + v[len("Sigma_"):]) for f, v in self.sigma_variables().items()
                if ("beta" if v == "Sigma" else "beta_" + v[len("Sigma_"):]) in post}

    def residual(self, hdi_prob: float = HDI_PROB, round_to: int | None = None) -> pd.DataFrame:
        """Residual variance ``sigma2`` and sd ``sigma`` (Gaussian family), the dispersion ``phi``
        (negative binomial: Var(y) = mu + mu^2 / phi); empty otherwise."""
        if "phi" in self.posterior:
            return _rounded(summarize({"phi": self.posterior["phi"].values}, hdi_prob), round_to)
        if "sigma2" not in self.posterior:
            return summarize({}, hdi_prob)
        sigma2 = self.posterior["sigma2"].values
        return _rounded(summarize({"sigma2": sigma2, "sigma": np.sqrt(sigma2)}, hdi_prob), round_to)

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
        ss = self.group("sample_stats")
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
        ss = self.group("sample_stats")
        if "accept_alpha" in ss and "alpha" in self.posterior:
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
        if not angles or self.group("sampler_state") is None:
            return np.zeros(n_groups, dtype=bool)
        log_scale = self.group("sampler_state")["log_scale"].values  # (chain, group): log of the angle
        if log_scale.shape[-1] != n_groups:
            return np.zeros(n_groups, dtype=bool)
        return np.all(log_scale >= np.log(0.5 * np.pi), axis=0)

    def _predictor_lines(self) -> list[str]:
        """The report's block on how each predictor was read, from the design (a fit saved before
        the block was kept with it; the formula parser imported only then)."""
        from .design import predictor_lines

        return predictor_lines(self.design)

    def report(self) -> str:
        """An lme4/brms-like text report of the fit."""
        a = self.attrs
        post = self.posterior
        n_groups = a.get("n_groups", post.sizes.get("group", 0))
        factors = self.sigma_variables()
        if len(factors) > 1:
            counts = json.loads(n_groups) if isinstance(n_groups, str) else {}
            data_line = f"   Data: {a.get('n_obs')} rows; levels: " + ", ".join(
                f"{f} {counts.get(f, '?')}" for f in factors)
        else:  # a one-factor fit of a several-factor sampler stores {factor: levels}
            count = next(iter(json.loads(n_groups).values())) if isinstance(n_groups, str) else n_groups
            data_line = f"   Data: {a.get('n_obs')} rows, {count} groups of {a.get('group_factor')}"
        lines = [
            f" Family: {self.family} ({check_family(self.family).link} link)",
            f"Formula: {self.formula}",
            data_line
            + (f", precision weights {a['weights']}" if a.get("weights") else "")
            + (f" ({a['engine']}: {a.get('partitions')} partitions of {a.get('data_source')})" if a.get("engine") else ""),
            *(a["predictors"].splitlines() if "predictors" in a else self._predictor_lines()),
            f"  Draws: {post.sizes['chain']} chains x {post.sizes['draw']} draws after {a.get('warmup')} warm-up sweeps"
            f" ({a.get('sampler')}, seed {a.get('seed')})",
            "",
        ]
        table = self.summary()

        def block(title: str, rows: pd.DataFrame) -> None:
            if len(rows):
                lines.extend([title, format_table(rows), ""])

        def strip(prefix: str, rows: pd.DataFrame) -> pd.DataFrame:
            return rows.rename(index=lambda s: s[len(prefix) + 1:-1])

        for f in factors:
            block(f"Group-level effects ({f}):", self.group_level(factor=f))
        fixed = pd.concat([
            strip("theta", table.loc[[i for i in table.index if i.startswith("theta[")]]),
            strip("alpha", table.loc[[i for i in table.index if i.startswith("alpha[")]]),
        ])
        block("Population-level effects:", fixed)
        for f, name in factors.items():
            title = "Group-effect covariance Sigma:" if name == "Sigma" else f"Group-effect covariance Sigma ({f}):"
            block(title, table.loc[[i for i in table.index if i.startswith(f"{name}[")]])
        block("Dispersion (Var(y) = mu + mu^2 / phi):" if "phi" in post else "Residual variance and sd:",
              self.residual())
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

        ss = self.group("sampler_state")
        if ss is None:
            raise ModelError("this fit has no sampler state to resume from (saved by an older version?)")
        post = self.posterior
        if not self.beta_variables():
            raise ModelError("this fit was saved without its per-group draws (group_draws=False) and cannot be "
                             "resumed; fit the model again")
        draws = {k: post[k].values for k in post.data_vars}
        if "alpha" not in draws:  # left out of the posterior when empty; the kernel records it
            draws["alpha"] = np.empty((post.sizes["chain"], post.sizes["draw"], 0))
        stats = self.group("sample_stats")
        if stats is not None:
            draws.update({k: stats[k].values for k in stats.data_vars})
        return ChainDraws(draws, int(self.attrs["seed"]), float(self.attrs.get("sampling_seconds", 0.0)),
                          sampler_state_from_dataset(ss, state_type), int(ss.attrs["warmup"]),
                          int(ss.attrs["target_draws"]), False)

    # -- log-likelihood -------------------------------------------------------------
    def linear_predictor(self, draws: slice = slice(None)) -> np.ndarray:
        """eta (chain, draw, obs) = x_i' beta_g[i] + z_i' alpha + offset_i for the observed rows
        (one compiled pass over rows per draw, :func:`multilevel.glmlik.row_linear_predictor`)."""
        from .glmlik import row_linear_predictor

        self.require_rows("the linear predictor of the fitted rows")
        cd = self.group("constant_data")
        post = self.posterior
        if len(self.beta_variables()) < len(self.sigma_variables()):
            raise ModelError("this fit was saved without its per-group draws (group_draws=False): the observed rows' "
                             "predictions need them; fit the model again")
        if "F" in cd:  # several random-effects terms
            return self._crossed_linear_predictor(draws)
        X, Z, g = cd["X"].values, cd["Z"].values, cd["group_index"].values
        beta = post["beta"].values[:, draws]
        n_chain, n_draw = beta.shape[:2]
        eta = np.empty((n_chain, n_draw, X.shape[0]))
        row_linear_predictor(np.ascontiguousarray(X, dtype=float), np.ascontiguousarray(g, dtype=np.int64),
                             np.ascontiguousarray(beta.reshape(n_chain * n_draw, *beta.shape[2:]), dtype=float),
                             eta.reshape(n_chain * n_draw, X.shape[0]))
        if "offset" in cd:
            eta += cd["offset"].values
        if Z.shape[1] and "alpha" in post:
            eta += np.einsum("ir,cdr->cdi", Z, post["alpha"].values[:, draws], optimize=True)
        return eta

    def _crossed_linear_predictor(self, draws: Any) -> np.ndarray:
        """eta = F a + sum_k Z_k b_k[index_k] of a fit with several terms
        (:func:`multilevel.predict_crossed.fitted_crossed`)."""
        from .predict_crossed import fitted_crossed

        idx = np.arange(self.posterior.sizes["draw"])[draws]
        return fitted_crossed(self, idx, list(self.sigma_variables()))[0]

    def log_likelihood(self, chunk: int | None = None) -> xr.DataArray:
        """Pointwise log-likelihood (chain, draw, obs): stored, or computed from the draws in
        chunks of ``chunk`` draws (default: about 2e7 values a chunk) so temporaries stay small;
        of a Dask fit, partition by partition over its data (rows in data order;
        :func:`multilevel.distributed.posterior.log_likelihood`)."""
        stored = self.group("log_likelihood")
        if stored is not None:
            return stored["y"]
        if self.partitioned:
            from .distributed.posterior import log_likelihood

            return log_likelihood(self)
        self.require_rows("the log-likelihood")
        y = self.group("observed_data")["y"].values
        cd = self.group("constant_data")
        trials = cd["trials"].values if "trials" in cd else np.ones_like(y)
        family = check_family(self.family)
        n_chain, n_draw = self.posterior.sizes["chain"], self.posterior.sizes["draw"]
        sigma2 = self.posterior[family.dispersion].values if family.dispersion else None
        weights = cd["weights"].values if "weights" in cd else None
        out = loglik_by_draws(family, y, trials, self.linear_predictor, n_chain, n_draw, sigma2, weights, chunk)
        return xr.DataArray(out, dims=("chain", "draw", "obs"),
                            coords={"chain": self.posterior["chain"], "draw": self.posterior["draw"], "obs": np.arange(y.shape[0])}, name="y")

    def attach(self, data: Any) -> "Fit":
        """Give a Dask fit loaded from a file its rows again (the data it was fitted on: a Dask
        DataFrame, or a Parquet or CSV path, directory or glob), so that what reads them
        partition by partition works as in the session that made the fit: ``loo()``,
        ``waic()``, ``compare()``, ``predict()`` and ``fitted()`` of the fitted rows,
        ``residuals()`` and ``posterior_predictive()``. One learning pass
        checks that they are the fitted rows (:func:`multilevel.distributed.design.reattach_design`).
        Returns the fit."""
        if not self.partitioned:
            raise ModelError("attach() gives a Dask fit its rows again; this fit keeps its rows in memory")
        from .distributed.design import reattach_design

        self._design = reattach_design(self, data)
        return self

    def add_log_likelihood(self) -> "Fit":
        """Compute the pointwise log-likelihood (in chunks) and store it in the fit's
        ``log_likelihood`` group, so that ``az.loo(fit.idata)`` and ``az.waic(fit.idata)`` work
        and :meth:`save` writes it. It is chains x draws x rows numbers (230 MB for 4 x 1000
        draws of 7,185 rows), which is why a fit does not store it unless asked
        (``fit(..., log_likelihood=True)``, CLI ``--log-likelihood``). Returns the fit."""
        if self.group("log_likelihood") is None:
            self.set_group("log_likelihood", self.log_likelihood().to_dataset())
        return self

    # -- I/O ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False, group_draws: bool = True,
             partial: bool = False) -> Path:
        """Write the fit to NetCDF at ``path``, atomically (a temporary file, then a rename).

        ``group_draws=False`` leaves out the per-group draws ``beta`` (chains x draws x groups
        x terms numbers, most of a large fit's file): the saved fit still has its summary,
        population parameters and plots of them, but not per-group results, predictions for
        seen groups or resuming. Integer and label arrays are compressed; draws are not
        (random doubles do not compress), so saving costs little more than writing the bytes.

        If a part of the fit cannot be written, nothing is written and a :class:`ModelError`
        says why; the fit in memory is unchanged. With ``partial=True`` the parts that can be
        written are (when the posterior is one of them), and the error names the parts left out.
        """
        from .convert import write_groups

        path = Path(path)
        check_writable(path, overwrite)
        groups = {name: self.group(name) for name in self.group_names()}
        group_vars = list(self.beta_variables().values())
        if not group_draws and group_vars:
            groups["posterior"] = groups["posterior"].drop_vars(group_vars)
            groups["posterior"].attrs["group_draws"] = "left out"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            failed = write_groups(groups, tmp, partial)
            if "posterior" in failed:
                raise ModelError(f"cannot save the fit to {str(path)!r}: {failed['posterior']}; the fit is unchanged "
                                 "in memory")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except OSError as exc:
            raise ModelError(f"cannot write {str(path)!r}: {exc.strerror or exc}; the fit is unchanged in memory") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if failed:
            parts = "; ".join(f"{name}: {why}" for name, why in failed.items())
            raise ModelError(f"saved the fit to {str(path)!r} without {', '.join(failed)} ({parts})")
        return path

    # -- lme4-style accessors (multilevel.accessors) -------------------------------------
    def update(self, formula: str | None = None, data: Any = None, **kwargs: Any) -> "Fit":
        """lme4's ``update()``: the model fitted again with its formula changed by R's rules
        (``". ~ . + x"``), other data or settings (:func:`multilevel.api.update`)."""
        from .api import update

        return update(self, formula, data, **kwargs)

    def fixef(self, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
        """Population-level effects (lme4's ``fixef``): index term; mean, sd and HDI."""
        from .accessors import fixef

        return fixef(self, hdi_prob)

    def ranef(self, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
        """Groups' deviations beta_j - theta (lme4's ``ranef``): index (factor, group, term)."""
        from .accessors import ranef

        return ranef(self, hdi_prob)

    def coef(self, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
        """Groups' coefficients, fixed-only terms included (lme4's ``coef``): index (factor, group, term)."""
        from .accessors import coef

        return coef(self, hdi_prob)

    def VarCorr(self, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
        """sds and correlations per grouping factor and the residual sd (lme4's ``VarCorr``):
        index (factor, kind, term, term2)."""
        from .accessors import VarCorr

        return VarCorr(self, hdi_prob)

    def confint(self, level: float = 0.95, method: str = "eti") -> pd.DataFrame:
        """Credible intervals of the variance components, sigma and the fixed effects in lme4's
        ``confint`` layout (columns ``2.5 %``, ``97.5 %``; :func:`multilevel.accessors.confint`)."""
        from .accessors import confint

        return confint(self, level, method)

    def fitted(self) -> pd.Series:
        """Each fitted row's posterior mean of mu_i (lme4's ``fitted``), indexed by row label."""
        from .accessors import fitted

        return fitted(self)

    def residuals(self, type: str = "response") -> pd.Series:  # noqa: A002 (lme4's argument name)
        """Each fitted row's residual at its posterior mean mu_i, ``"response"`` or ``"pearson"``
        (lme4's ``residuals``; :func:`multilevel.accessors.residuals`)."""
        from .accessors import residuals

        return residuals(self, type)

    def nobs(self) -> int:
        """The number of rows fitted (lme4's ``nobs``)."""
        from .accessors import nobs

        return nobs(self)

    def ngrps(self) -> pd.Series:
        """The number of levels of each grouping factor (lme4's ``ngrps``)."""
        from .accessors import ngrps

        return ngrps(self)

    def sigma(self) -> float:
        """The residual sd's posterior mean (lme4's ``sigma``; 1.0 for GLMs, as lme4)."""
        from .accessors import sigma

        return sigma(self)

    # -- predictions, checks, comparison and plots (multilevel.predict, .comparison, .plots) ------
    def predict(self, newdata: Any = None, kind: str = "mean", include_group_effects: bool = True,
                draws: int | None = None, seed: Any = None, summary: bool = False, hdi_prob: float = HDI_PROB,
                offset: Any = None, trials: Any = None, weights: Any = None,
                re_form: Any = None, allow_new_levels: bool = True,
                type: str | None = None) -> xr.DataArray | pd.DataFrame:
        """Posterior draws (chain, draw, obs) of predictions for the rows of ``newdata``.

        ``kind``: ``"linear"`` predictor, ``"mean"`` (inverse link; the success probability
        for binomial and bernoulli) or ``"response"`` (a new response drawn from the family).
        Rows of groups seen in fitting use their beta_j draws; a group never seen gets a new
        beta ~ MVN(theta, Sigma) per posterior draw (from ``seed``); ``include_group_effects=False``
        predicts at beta = theta. ``summary=True`` returns a DataFrame (mean, sd, HDI) instead.
        ``newdata=None``: the fitted values of the rows used in fitting, in the order of their
        index labels (a Dask fit's: a lazy Dask DataFrame of their summaries, read again partition
        by partition). ``weights``: Gaussian ``kind="response"``, the new rows' precision weights
        (column name or values; default 1: variance sigma2). lme4's spellings: ``type="link"`` or
        ``"response"`` (``kind="linear"`` or ``"mean"``), ``re_form``, and ``allow_new_levels=False``
        to refuse levels not seen in fitting. See :func:`multilevel.predict.predict`.
        """
        from .predict import predict

        return predict(self, newdata, kind=kind, include_group_effects=include_group_effects, draws=draws, seed=seed,
                       summary=summary, hdi_prob=hdi_prob, offset=offset, trials=trials, weights=weights,
                       re_form=re_form, allow_new_levels=allow_new_levels, type=type)

    def posterior_predictive(self, seed: Any = None, rows: int | None = None) -> xr.DataArray:
        """Draw a replicated response for every observed row and posterior draw, store it as
        ``y`` in the ``posterior_predictive`` group of ``idata`` (replacing any) and return it.

        A Dask fit (``engine="dask"``) cannot hold chains x draws x rows numbers: it replicates
        a simple random sample of ``rows`` of its fitted rows (default 1,000; all when there are
        no more), chosen partition by partition from ``seed``, and stores their responses in
        ``observed_data`` beside, so that ``az.plot_ppc(fit.idata)`` and :meth:`plot_ppc`
        compare like with like; both groups' attributes say how the rows were sampled
        (:mod:`multilevel.distributed.replicates`). Per-row summaries of replicated responses
        of every fitted row: ``fit.predict(kind="response", summary=True)``, a Dask DataFrame.
        """
        if self.partitioned:
            from .distributed.replicates import PPC_ROWS, replicate_sample

            observed, y_rep = replicate_sample(self, seed=seed, rows=PPC_ROWS if rows is None else rows)
            self.set_group("observed_data", observed)
            self.set_group("posterior_predictive", y_rep.to_dataset(name="y").assign_attrs(observed.attrs))
            return self.group("posterior_predictive")["y"]
        if rows is not None:
            raise ModelError("rows= sets the sample of a Dask fit's posterior predictive check; an in-memory fit "
                             "replicates every row: leave it out")
        from .predict import posterior_predictive

        y_rep = posterior_predictive(self, seed=seed)
        self.set_group("posterior_predictive", y_rep.to_dataset(name="y"))
        return self.group("posterior_predictive")["y"]

    def loo(self, pointwise: bool | None = None, **kwargs: Any) -> Any:
        """PSIS leave-one-out cross-validation from :meth:`log_likelihood`: the numbers ``az.loo``
        gives, in its ``ELPDData`` (:func:`multilevel.comparison.loo`; keywords ``reff``, ``scale``)."""
        from .comparison import loo

        return loo(self, pointwise=pointwise, **kwargs)

    def waic(self, pointwise: bool | None = None, **kwargs: Any) -> Any:
        """WAIC from :meth:`log_likelihood`: the numbers ``az.waic`` gives, in its ``ELPDData``
        (:func:`multilevel.comparison.waic`; keyword ``scale``)."""
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


def _rounded(table: pd.DataFrame, round_to: int | None) -> pd.DataFrame:
    if round_to is None:
        return table
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 0:
        raise ModelError(f"round_to must be a number of decimals (a non-negative integer) or None, got {round_to!r}")
    return table.round(round_to)


#: significant digits of a row's posterior sd in the report; its other values get as many decimals
REPORT_DIGITS = 2


def row_decimals(mean: float, sd: float, digits: int = REPORT_DIGITS) -> int:
    """Decimals that show ``sd`` to ``digits`` significant digits (or ``mean`` to digits + 1
    when sd is 0 or not finite), between 0 and 12: a row's precision follows its own scale,
    as brms prints, so that a variance of 2e-5 does not show as 0.000."""
    scale, want = (sd, digits) if np.isfinite(sd) and sd > 0 else (abs(mean), digits + 1)
    if not np.isfinite(scale) or scale == 0:
        return 3
    return int(np.clip(want - 1 - np.floor(np.log10(scale)), 0, 12))


def format_table(rows: pd.DataFrame) -> str:
    """Rows of a summary as the report prints them: Estimate, Est.Error and the HDI bounds
    with :func:`row_decimals` decimals per row, r_hat with 3 and the ESS as whole numbers."""
    lo, hi = rows.columns[2], rows.columns[3]
    out = {}
    for name, r in rows.iterrows():
        d = row_decimals(r["mean"], r["sd"])
        out[name] = {"Estimate": f"{r['mean']:.{d}f}", "Est.Error": f"{r['sd']:.{d}f}",
                     lo: f"{r[lo]:.{d}f}", hi: f"{r[hi]:.{d}f}",
                     "r_hat": "nan" if r["r_hat"] != r["r_hat"] else f"{r['r_hat']:.3f}",
                     "ess_bulk": "nan" if r["ess_bulk"] != r["ess_bulk"] else f"{r['ess_bulk']:.0f}",
                     "ess_tail": "nan" if r["ess_tail"] != r["ess_tail"] else f"{r['ess_tail']:.0f}"}
    return pd.DataFrame.from_dict(out, orient="index").to_string()


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
    """Read a fit written by :meth:`Fit.save` (every group into memory; the file is closed)."""
    from .convert import read_groups

    require_fit_file(path)
    path = Path(path)
    try:
        groups = read_groups(path)
    except Exception as exc:
        raise ModelError(f"cannot read {str(path)!r} as a saved fit: {type(exc).__name__}") from None
    if "posterior" not in groups or "formula" not in groups["posterior"].attrs:
        raise ModelError(f"{str(path)!r} is not a fit saved by multilevel")
    return Fit(groups)
