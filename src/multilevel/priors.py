r"""Priors of the hierarchical model: the specification's defaults, overrides, validation.

The model (specification, generalised to fixed-only terms alpha)::

    theta ~ MVN(mu0, Lambda0)                    population means of the varying terms
    Sigma ~ inverse-Wishart(eta0, S0^-1)         E[Sigma] = S0 / (eta0 - p - 1)
    sigma2 ~ inverse-gamma(nu0 / 2, nu0 sigma0_sq / 2)
    alpha ~ MVN(alpha_mean, alpha_cov)           fixed-only effects

theta covers only the varying terms that also stand in the fixed part; a varying term
absent from it (``(0 + x | g)`` without ``x``) has its mean fixed at 0.

Data-informed defaults, as in the specification's running example:

* each group with more rows than varying terms (n_j > p) and a well-conditioned
  X_j'X_j gets its own least-squares fit b_j of y_j - Z_j a_pool on X_j, where a_pool
  is the pooled least-squares fit of the fixed-only effects;
* mu0 = mean of the b_j, Lambda0 = S0 = their sample covariance, eta0 = p + 2, nu0 = 1,
  sigma0_sq = the mean of the within-group residual variances RSS_j / (n_j - p);
* fallback, when fewer than p + 2 groups have their own fit or the covariance of the b_j
  is not positive definite: mu0 = the pooled fit, Lambda0 = S0 = diag(var(y) / var(x_k))
  (var(y) for a constant column such as the intercept), and sigma0_sq = the pooled
  residual variance when no group has its own fit (var(y) when the pooled fit has no
  residual degrees of freedom, or fits to rounding error); the fallback used is recorded;
* alpha_mean = a_pool, alpha_cov = N sigma0_sq (Z'Z)^-1: a unit-information prior.

With Gaussian precision weights w_i the fits are weighted least squares, RSS_j the weighted
sums sum_i w_i r_i^2 (estimates of sigma2 itself: w_i r_i^2 has mean about sigma2), and
alpha_cov = N sigma0_sq (Z'WZ)^-1; the fallback's var(y) and var(x_k) stay unweighted.

GLMs (Poisson, binomial, Bernoulli) take the same rules with each group's own
maximum-likelihood GLM fit (:mod:`multilevel.glmfit`; a group is left out when it has no
more rows than terms, does not converge, or drifts more than 10 from the pooled fit on
the link scale, the sign of separation), alpha_cov = N times the pooled fit's inverse
Fisher information (unit information), and the fallback Lambda0 = S0 = diag(1 / var(x_k))
(1 for the intercept): a unit change on the link scale per standard deviation of x. When the
pooled fit itself does not converge (separation: its MLE does not exist), it is refitted as
the mode under weakly-informative normal penalties, sd 2.5 per standard deviation of each
predictor (Gelman, Jakulin, Pittau and Su 2008) and 10 for the intercept, and its information
includes them; the fallback records this.
nu0 and sigma0_sq do not apply to them.

The negative binomial's dispersion phi (Var(y) = mu + mu^2 / phi) has the penalised-complexity
prior of Simpson et al. (2017) on the gamma mixing distribution's coefficient of variation:
1 / sqrt(phi) ~ Exponential(phi_rate), default phi_rate = 1 (:func:`log_prior_phi`). It shrinks
towards the Poisson (phi -> infinity) only as much as the data allow: a prior median of
1 / sqrt(phi) of 0.69 (phi about 2.1), P(phi < 0.25) = e^-2 = 0.14, P(phi > 100) = 0.10, so
both strong overdispersion and near-Poisson data stay plausible. Stan's prior-choice wiki
advises a prior on 1 / sqrt(phi) for this reason; brms's gamma(0.01, 0.01) on phi piles its
mass near 0 and at huge values and Gamma(2, 0.1) keeps phi mostly above 2.

Models with several grouping factors take their defaults from :func:`default_crossed_priors`
(Gaussian) and :func:`default_crossed_glm_priors` (binomial, Bernoulli: on the logit scale),
also when a one-factor binomial or Bernoulli model is fitted by their Polya-Gamma sampler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from .distributions import check_spd
from .errors import ModelError

if TYPE_CHECKING:
    from .design import Design
    from .families import Family


@dataclass(frozen=True)
class Priors:
    """Hyperparameters; leave any as ``None`` to take its default.

    Parameters
    ----------
    mu0 : (q,) prior mean of theta, q = varying terms that have a population mean.
    Lambda0 : (q, q) prior covariance of theta.
    eta0 : inverse-Wishart degrees of freedom of Sigma, > p - 1; with several grouping
        factors, a dict keyed by factor name (``{"s": 3.0}``).
    S0 : (p, p) inverse-Wishart scale matrix of Sigma; with several grouping factors, a dict
        keyed by factor name of each factor's (q_k, q_k) scale (``{"s": [[0.1]]}``).
    nu0 : prior degrees of freedom of sigma2, > 0 (Gaussian family).
    sigma0_sq : prior scale of sigma2, > 0 (Gaussian family).
    alpha_mean : (r,) prior mean of the fixed-only effects.
    alpha_cov : (r, r) prior covariance of the fixed-only effects.
    phi_rate : negative binomial: rate of the exponential prior on 1 / sqrt(phi), > 0 (default 1).
    """

    mu0: Any = None
    Lambda0: Any = None
    eta0: float | None = None
    S0: Any = None
    nu0: float | None = None
    sigma0_sq: float | None = None
    alpha_mean: Any = None
    alpha_cov: Any = None
    fallback: str | None = None
    phi_rate: float | None = None

    def to_json(self) -> str:
        """The priors as JSON (arrays as nested lists), for the results' attributes."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):  # per grouping factor (models with several factors)
                value = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in value.items()}
            out[f.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return json.dumps(out)

    @classmethod
    def from_json(cls, text: str) -> "Priors":
        raw = json.loads(text)

        def value(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: value(x) for k, x in v.items()}
            return np.asarray(v, dtype=float) if isinstance(v, list) else v

        return cls(**{k: value(v) for k, v in raw.items()})


def as_priors(priors: Priors | dict | None) -> Priors:
    """Accept a :class:`Priors`, a dict of its fields, or ``None``."""
    if priors is None:
        return Priors()
    if isinstance(priors, Priors):
        return priors
    if isinstance(priors, dict):
        names = {f.name for f in fields(Priors)} - {"fallback"}
        unknown = sorted(set(priors) - names)
        if unknown:
            raise ModelError(f"unknown prior {unknown[0]!r}; priors are: {', '.join(sorted(names))}")
        return Priors(**priors)
    raise ModelError(f"priors must be a multilevel.Priors or a dict, not {type(priors).__name__}")


def default_priors(design: Design, est: Any, family: Family | None = None) -> Priors:
    """The specification's data-informed defaults, with the documented fallback.

    ``est`` holds the pooled and per-group fits: :class:`~multilevel.suffstats.LeastSquares`
    for the Gaussian family, :class:`~multilevel.glmfit.GLMEstimates` for GLMs.
    """
    gaussian = family is None or family.is_gaussian
    p = design.X.shape[1]
    r = design.Z.shape[1]
    free = design.theta_free
    n = design.group_sizes
    own = est.own
    fallback = None
    cov = None
    if own.sum() >= p + 2:
        b = est.b_group[own]
        cov = np.atleast_2d(np.cov(b, rowvar=False))
        try:
            np.linalg.cholesky(cov)
            centre = b.mean(axis=0)
        except np.linalg.LinAlgError:
            cov = None
    if cov is None:
        fallback = (
            f"only {int(own.sum())} of {design.n_groups} groups have their own fit "
            f"(need {p + 2} with a positive definite covariance): theta and Sigma priors from the pooled fit"
        )
        vx = np.var(design.X, axis=0)
        varying = vx > 1e-12 * max(vx.max(), 1e-300)
        scale = (float(np.var(design.y)) or 1.0) if gaussian else 1.0
        cov = np.diag(np.where(varying, scale / np.where(varying, vx, 1.0), scale))
        centre = est.b_pool
    sigma0_sq = nu0 = None
    if gaussian:
        nu0 = 1.0
        var_y = float(np.var(design.y)) or 1.0
        if own.any():
            sigma0_sq = float(np.mean(est.rss_group[own] / (n[own] - p)))
        elif design.n_obs > p + r:
            sigma0_sq = est.rss_pool / (design.n_obs - p - r)
        else:  # the pooled fit is exact: its residuals are rounding error
            sigma0_sq = var_y
        if not sigma0_sq > 1e-12 * var_y:  # an exact fit to rounding error says nothing of sigma2
            sigma0_sq = var_y
    if not r:
        alpha_cov = np.zeros((0, 0))
    elif gaussian:
        Zw = design.Z if design.weights is None else design.Z * design.weights[:, None]
        alpha_cov = design.n_obs * sigma0_sq * np.linalg.pinv(design.Z.T @ Zw)
    else:
        alpha_cov = design.n_obs * np.linalg.pinv(est.info_pool)[p:, p:]
    alpha_cov = 0.5 * (alpha_cov + alpha_cov.T)
    if not gaussian and not est.converged:
        fallback = "; ".join(filter(None, [fallback, (
            "the pooled fit did not converge (separation: the data pin the response at a bound), so it was refitted "
            "with weakly-informative normal penalties (sd 2.5 per standard deviation of each predictor)")]))
    return Priors(
        mu0=centre[free],
        Lambda0=cov[np.ix_(free, free)],
        eta0=float(p + 2),
        S0=cov,
        nu0=nu0,
        sigma0_sq=sigma0_sq,
        alpha_mean=est.a_pool.copy(),
        alpha_cov=alpha_cov,
        fallback=fallback,
    )


def _positive(value: Any, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ModelError(f"prior {name} must be a positive number, got {value!r}") from None
    if not np.isfinite(x) or x <= 0:
        raise ModelError(f"prior {name} must be a positive number, got {value!r}")
    return x


def _vector(value: Any, name: str, size: int) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, dtype=float))
    if v.shape != (size,):
        raise ModelError(f"prior {name} must be a vector of length {size}, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ModelError(f"prior {name} has non-finite entries")
    return v


def resolve_priors(user: Priors | dict | None, design: Design, est: Any, family: Family | None = None) -> Priors:
    """Fill the user's priors with the defaults and validate every one."""
    user = as_priors(user)
    gaussian = family is None or family.is_gaussian
    defaults = default_priors(design, est, family)
    merged = replace(
        defaults,
        **{f.name: getattr(user, f.name) for f in fields(Priors) if f.name != "fallback" and getattr(user, f.name) is not None},
    )
    p = design.X.shape[1]
    q = int(design.theta_free.sum())
    r = design.Z.shape[1]
    eta0 = float(merged.eta0)
    if not np.isfinite(eta0) or eta0 <= p - 1:
        raise ModelError(f"prior eta0 must exceed p - 1 = {p - 1} (p = {p} varying terms), got {merged.eta0!r}")
    uses_fallback = all(getattr(user, k) is None for k in ("mu0", "Lambda0", "S0"))
    return Priors(
        mu0=_vector(merged.mu0, "mu0", q),
        Lambda0=check_spd(merged.Lambda0, "Lambda0", q) if q else np.zeros((0, 0)),
        eta0=eta0,
        S0=check_spd(merged.S0, "S0", p),
        nu0=_positive(merged.nu0, "nu0") if gaussian else None,
        sigma0_sq=_positive(merged.sigma0_sq, "sigma0_sq") if gaussian else None,
        alpha_mean=_vector(merged.alpha_mean, "alpha_mean", r),
        alpha_cov=check_spd(merged.alpha_cov, "alpha_cov", r) if r else np.zeros((0, 0)),
        fallback=defaults.fallback if uses_fallback else None,
        phi_rate=_phi_rate(user.phi_rate, None, family),
    )


# -- several grouping factors -------------------------------------------------------------------

def _per_level_fits(ZtZ: np.ndarray, Ztr: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, int]:
    """Each level's least-squares fit of the residuals on the factor's covariates Z_k from its
    (weighted) Z_j'Z_j (J, q, q) and Z_j'r (J, q), for the levels with more rows ``n`` than
    terms and a well-conditioned Z_j'Z_j; returns the fits (levels with one, q) and how many
    levels had one."""
    q = ZtZ.shape[1]
    eig = np.linalg.eigvalsh(ZtZ)
    own = (n > q) & (eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300))
    if not own.any():
        return np.zeros((0, q)), 0
    fits = np.linalg.solve(ZtZ[own], Ztr[own][..., None])[..., 0]
    return fits, int(own.sum())


def _factor_scale(f: Any, fits: np.ndarray, scale: float, fallback: str, notes: list[str],
                  vz: np.ndarray | None = None) -> np.ndarray:
    """S0_k of factor ``f``: the covariance of its levels' own fits ``fits`` (levels with one, q)
    when at least q + 2 levels have one and it is positive definite; else diag(scale / var(z_kc))
    (``scale`` for a constant column; ``vz`` the columns' variances, else computed from f.Z),
    with a note ending in ``fallback``. Zero off its blocks."""
    count = fits.shape[0]
    S = None
    if count >= f.q + 2:
        S = np.atleast_2d(np.cov(fits, rowvar=False))
        try:
            np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            S = None
    if S is None:
        vz = np.var(f.Z, axis=0) if vz is None else vz
        varying = vz > 1e-12 * max(vz.max(), 1e-300)
        S = np.diag(np.where(varying, scale / np.where(varying, vz, 1.0), scale))
        notes.append(f"factor {f.name!r}: only {count} of {f.n_levels} levels have their own fit (need "
                     f"{f.q + 2} with a positive definite covariance): {fallback}")
    return np.where(f.block_mask(), S, 0.0)


def default_crossed_priors(design: Any, statistics: Any) -> Priors:
    r"""Data-informed defaults for a model with several grouping factors (Gaussian family),
    read from the model's statistics (:func:`multilevel.blockstats.crossed_statistics`; no row
    is read here, so a partitioned design gives the same defaults):

    * fixed effects a (theta and alpha terms): the pooled (weighted) least-squares fit a_ls of
      y on F (the statistics' reference point), with the unit-information covariance
      N s2 (F'WF)^-1, s2 = RSS / (N - p) of that fit; mu0/Lambda0 are its theta block,
      alpha_mean/alpha_cov its alpha block;
    * per factor k with q_k terms: Sigma_k ~ IW(eta0_k = q_k + 2, S0_k), E[Sigma_k] = S0_k,
      where S0_k is the covariance of the per-level least-squares fits of the pooled residuals
      y - F a_ls on the factor's covariates Z_k (levels with more rows than terms); fallback,
      when fewer than q_k + 2 levels have a fit or their covariance is not positive definite:
      S0_k = diag(var(r) / var(z_kc)) (var(r) for a constant column), recorded in ``fallback``.
      Off the factor's blocks (``||`` terms) S0_k is 0, and each block gets the marginal of
      IW(eta0_k, S0_k) on it, IW(eta0_k - q_k + q_b, S0_k[block]);
    * sigma2 ~ IG(nu0 / 2, nu0 sigma0_sq / 2), nu0 = 1, sigma0_sq = s2 (an upper bound: the
      pooled residuals hold the group effects too; with nu0 = 1 the prior is weak).
    """
    from .blockstats import level_blocks

    stats, sums, resid = statistics.stats, statistics.sums, statistics.resid
    layout = statistics.layout
    n, p = sums.n_obs, stats.p
    a_ls = stats.u_ref_t[:p]
    rss = resid.rtr
    var_y = float(sums.y.variance) or 1.0
    s2 = rss / (n - p) if n > p else var_y
    if not s2 > 1e-12 * var_y:
        s2 = var_y
    cov = n * s2 * np.linalg.pinv(stats.G[:p, :p]) if p else np.zeros((0, 0))
    cov = 0.5 * (cov + cov.T)
    th, al = design.theta_index, design.alpha_index
    eta0, S0, notes = {}, {}, []
    var_r = float(resid.r.variance) or var_y
    for k, f in enumerate(design.factors):
        ZtZ, Ztr = level_blocks(stats, layout, k)
        fits = _per_level_fits(ZtZ, Ztr, sums.counts[k])[0]
        S0[f.name] = _factor_scale(f, fits, var_r, "S0 from the pooled residual variance", notes,
                                   vz=np.atleast_1d(sums.z[k].variance))
        eta0[f.name] = float(f.q + 2)
    return Priors(
        mu0=a_ls[th], Lambda0=cov[np.ix_(th, th)], eta0=eta0, S0=S0, nu0=1.0, sigma0_sq=s2,
        alpha_mean=a_ls[al], alpha_cov=cov[np.ix_(al, al)] if al.size else np.zeros((0, 0)),
        fallback="; ".join(notes) or None,
    )


class RowSource:
    """What the GLM defaults are read from (:func:`default_crossed_glm_priors`), here a
    :class:`~multilevel.design.CrossedDesign`'s rows in memory: the rows, the pooled fit, each
    factor's levels' own fits and the variances of its covariates."""

    def __init__(self, design: Any):
        self.design = design
        self.n_obs = int(design.F.shape[0])

    def pooled_glm(self, family: Family) -> tuple[np.ndarray, np.ndarray, bool]:
        """:func:`multilevel.glmfit.pooled_glm` of y on F with the offset."""
        from .glmfit import pooled_glm

        d = self.design
        return pooled_glm(family, d.F, np.asarray(d.y, dtype=float), d.trials, d.offset)

    def level_fits(self, family: Family, k: int, a_ml: np.ndarray) -> np.ndarray:
        """Factor k's levels' own fits of y on Z_k given offset + F a_ml, those that count."""
        from .glmfit import level_fits

        d, f = self.design, self.design.factors[k]
        fits, own = level_fits(family, f.Z, f.index, f.n_levels, np.asarray(d.y, dtype=float), d.trials,
                               d.offset + d.F @ a_ml)
        return fits[own]

    def z_variance(self, k: int) -> np.ndarray:
        """The variances of factor k's covariates over the rows."""
        return np.var(self.design.factors[k].Z, axis=0)

    def negbinomial_information(self, a_ml: np.ndarray) -> np.ndarray:
        """:func:`_negbinomial_information` at eta = offset + F a_ml."""
        d = self.design
        return _negbinomial_information(d.F, np.asarray(d.y, dtype=float), d.offset + d.F @ a_ml)


def default_crossed_glm_priors(design: Any, family: Family, source: Any = None) -> Priors:
    r"""Data-informed defaults for a GLM with several grouping factors (binomial, Bernoulli,
    Poisson, negative binomial), on the link scale (the logit of binomial and Bernoulli), as
    :func:`default_crossed_priors` does for the Gaussian family (the negative binomial's fits are
    Poisson fits, :func:`multilevel.families.fitting_family`, its unit information NB2's,
    :func:`_negbinomial_information`, and phi_rate = :data:`PHI_RATE`):

    * fixed effects a: the pooled ML fit a_ml of y on F (with the offset), with the unit-information
      covariance N I(a_ml)^-1 (I the pooled fit's Fisher information); when the pooled fit does
      not converge (separation), the mode under weakly-informative normal penalties (sd 2.5 per
      standard deviation of each predictor, 10 for the intercept; Gelman et al. 2008) and its
      information with them, recorded in ``fallback``;
    * per factor k: Sigma_k ~ IW(eta0_k = q_k + 2, S0_k), E[Sigma_k] = S0_k, with S0_k the covariance
      of the levels' own ML fits of y on Z_k given the pooled linear predictor (offset + F a_ml),
      counting the levels with more rows than terms whose fit converges within 10 of 0 on the
      link scale (a level with only successes or only failures has no finite fit); fallback,
      when fewer than q_k + 2 levels have a fit or their covariance is not positive definite:
      S0_k = diag(1 / var(z_kc)) (1 for a constant column): a unit change of the logit per
      standard deviation of the covariate, the GLM fallback of one-term models;
    * no sigma2 (nu0 and sigma0_sq are None).

    ``source`` gives the fits (:class:`RowSource`, the default, from the design's rows; the
    sharded sampler's from its shards, :class:`multilevel.samplers.sharded.ShardSource`).
    """
    from .families import fitting_family

    source = RowSource(design) if source is None else source
    N, p = source.n_obs, design.F.shape[1]
    notes = []
    negbinomial, family = family.name == "negbinomial", fitting_family(family)
    if p:
        a_ml, info, converged = source.pooled_glm(family)
        if negbinomial:
            info = source.negbinomial_information(a_ml)
        if not converged:
            notes.append("the pooled fit did not converge (separation: the data pin the response at a bound), so it "
                         "was refitted with weakly-informative normal penalties (sd 2.5 per standard deviation of "
                         "each predictor)")
        cov = N * np.linalg.pinv(info)
        cov = 0.5 * (cov + cov.T)
    else:
        a_ml, cov = np.zeros(0), np.zeros((0, 0))
    eta0, S0 = {}, {}
    for k, f in enumerate(design.factors):
        S0[f.name] = _factor_scale(f, source.level_fits(family, k, a_ml), 1.0, "S0 of a unit change on the link scale",
                                   notes, vz=source.z_variance(k))
        eta0[f.name] = float(f.q + 2)
    th, al = design.theta_index, design.alpha_index
    return Priors(
        mu0=a_ml[th], Lambda0=cov[np.ix_(th, th)], eta0=eta0, S0=S0, nu0=None, sigma0_sq=None,
        alpha_mean=a_ml[al], alpha_cov=cov[np.ix_(al, al)] if al.size else np.zeros((0, 0)),
        fallback="; ".join(notes) or None, phi_rate=PHI_RATE if negbinomial else None,
    )


def _per_factor(value: Any, name: str, factors: list[str]) -> dict[str, Any]:
    """A per-factor prior given as a dict keyed by factor name (None: all defaults); with one
    factor (a one-term model fitted by a several-factor sampler, or ``(x || g)``) also as the
    value itself, as one-term models take it."""
    if value is None:
        return {}
    if not isinstance(value, dict) and len(factors) == 1:
        return {factors[0]: value}
    if not isinstance(value, dict):
        raise ModelError(f"prior {name} of a model with several grouping factors is one per factor: give a dict "
                         f"keyed by factor, e.g. {name}={{{factors[0]!r}: ...}} (factors: {', '.join(factors)})")
    unknown = [k for k in value if k not in factors]
    if unknown:
        raise ModelError(f"prior {name} names factor {unknown[0]!r}, which the formula does not have "
                         f"(factors: {', '.join(factors)})")
    return dict(value)


#: default rate of the exponential prior on 1 / sqrt(phi) (negative binomial)
PHI_RATE = 1.0


def log_prior_phi(log_phi: float, rate: float) -> float:
    """log p(log phi) under 1 / sqrt(phi) ~ Exponential(rate), up to a constant: with
    c = exp(-log phi / 2), p(log phi) = rate exp(-rate c) |dc / dlog phi| = rate exp(-rate c) c / 2,
    so log p = -rate c - log phi / 2 + const."""
    return -rate * np.exp(-0.5 * log_phi) - 0.5 * log_phi


def _negbinomial_information(F: np.ndarray, y: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """F' W F with the NB2 Fisher weights w = mu / (1 + mu / phi_m) at the Poisson fit's eta, phi_m
    the moment estimate sum mu^2 / sum((y - mu)^2 - mu) (capped at 1e3; 1e3 when there is no
    overdispersion): the pooled Poisson information, which ignores overdispersion, would make the
    unit-information prior too narrow."""
    mu = np.exp(np.minimum(eta, 700.0))
    return negbinomial_information(F, mu, *dispersion_moments(y, mu))


def dispersion_moments(y: np.ndarray, mu: np.ndarray) -> tuple[float, float]:
    """sum mu^2 and sum((y - mu)^2 - mu) over the rows: the moment estimate of the negative
    binomial's phi is their ratio (where the second is positive); sums, so shards add them."""
    return float(np.sum(mu**2)), float(np.sum((y - mu) ** 2 - mu))


def negbinomial_information(F: np.ndarray, mu: np.ndarray, s_mu2: float, excess: float) -> np.ndarray:
    """F' W F with w = mu / (1 + mu / phi_m), phi_m = s_mu2 / excess capped at 1e3 (1e3 when
    excess <= 0; the sums of :func:`dispersion_moments` over all rows)."""
    phi_m = min(s_mu2 / excess, 1e3) if excess > 0 else 1e3
    w = mu / (1.0 + mu / phi_m)
    return F.T @ (F * w[:, None])


def resolve_crossed_priors(user: Priors | dict | None, design: Any, family: Family | None = None,
                           statistics: Any = None, source: Any = None) -> Priors:
    """Fill the user's priors of a several-factor model with :func:`default_crossed_priors`
    (GLMs: :func:`default_crossed_glm_priors`) and validate every one. ``eta0`` and ``S0``
    are dicts keyed by factor name (``{"s": [[0.1]], "d": [[0.3]]}``); factors left out take
    their defaults. GLMs have no nu0 and sigma0_sq. ``statistics``: the Gaussian model's
    (:func:`multilevel.blockstats.crossed_statistics`), which its defaults are read from; a GLM's
    ``source``: where its defaults' fits come from (:class:`RowSource` by default)."""
    user = as_priors(user)
    gaussian = family is None or family.is_gaussian
    defaults = (default_crossed_priors(design, statistics) if gaussian
                else default_crossed_glm_priors(design, family, source))
    names = [f.name for f in design.factors]
    eta_user, S_user = _per_factor(user.eta0, "eta0", names), _per_factor(user.S0, "S0", names)
    eta0, S0 = {}, {}
    for f in design.factors:
        S = check_spd(S_user[f.name], f"S0[{f.name!r}]", f.q) if f.name in S_user else defaults.S0[f.name]
        if f.correlated or f.q > 1:
            off_block = np.abs(np.where(f.block_mask(), 0.0, S))
            if f.name in S_user and np.any(off_block > 0):
                raise ModelError(f"prior S0[{f.name!r}] is non-zero between uncorrelated terms of {f.name!r}; "
                                 "set those entries to 0 (the terms' covariances are not modelled)")
        eta = float(eta_user.get(f.name, defaults.eta0[f.name]))
        if not np.isfinite(eta) or eta <= f.q - 1:
            raise ModelError(f"prior eta0[{f.name!r}] must exceed q - 1 = {f.q - 1} ({f.q} term{'s' if f.q > 1 else ''}), got {eta!r}")
        eta0[f.name], S0[f.name] = eta, np.asarray(S, dtype=float)
    q, r = design.theta_index.size, design.alpha_index.size
    merged = {k: (getattr(user, k) if getattr(user, k) is not None else getattr(defaults, k))
              for k in ("mu0", "Lambda0", "nu0", "sigma0_sq", "alpha_mean", "alpha_cov")}
    uses_fallback = user.S0 is None or set(S_user) != set(names)
    return Priors(
        mu0=_vector(merged["mu0"], "mu0", q),
        Lambda0=check_spd(merged["Lambda0"], "Lambda0", q) if q else np.zeros((0, 0)),
        eta0=eta0, S0=S0,
        nu0=_positive(merged["nu0"], "nu0") if gaussian else None,
        sigma0_sq=_positive(merged["sigma0_sq"], "sigma0_sq") if gaussian else None,
        alpha_mean=_vector(merged["alpha_mean"], "alpha_mean", r),
        alpha_cov=check_spd(merged["alpha_cov"], "alpha_cov", r) if r else np.zeros((0, 0)),
        fallback=defaults.fallback if uses_fallback else None,
        phi_rate=_phi_rate(user.phi_rate, defaults.phi_rate, family),
    )


def _phi_rate(user: Any, default: float | None, family: Family | None) -> float | None:
    """The negative binomial's phi_rate (the user's, validated, or the default); other
    families refuse one in one line."""
    if family is None or family.name != "negbinomial":
        if user is not None:
            raise ModelError(f"prior phi_rate applies to the negbinomial family, not {family.name if family else 'gaussian'}")
        return None
    return _positive(user if user is not None else default, "phi_rate")
