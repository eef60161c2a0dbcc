r"""Gibbs sampler of the hierarchical linear model (specification, first half).

Model, rows i of group j, p varying terms, r fixed-only terms::

    y_ij = x_ij' beta_j + z_ij' alpha + e_ij,   e_ij ~ N(0, sigma2)
    beta_j ~ MVN(theta, Sigma),  theta_k = 0 where term k has no population mean

One sweep draws each block from its full conditional, using only the sufficient
statistics (:mod:`multilevel.suffstats`), so it costs O(m p^2 + p^3):

* beta_j | .  ~ MVN(V_j (Sigma^-1 theta + X_j'(y_j - Z_j alpha) / sigma2), V_j),
  V_j = (Sigma^-1 + X_j'X_j / sigma2)^-1, all m groups in one batched Cholesky;
* alpha | .   ~ MVN(A (Lambda_a^-1 a0 + Z'(y - X beta) / sigma2), A),
  A = (Lambda_a^-1 + Z'Z / sigma2)^-1, with Z'(y - X beta) = Z'y - sum_j X_j'Z_j' beta_j;
* theta | .   ~ MVN(mu_m, Lambda_m) on its free components f,
  Lambda_m = (Lambda0^-1 + m [Sigma^-1]_ff)^-1,
  mu_m = Lambda_m (Lambda0^-1 mu0 + [Sigma^-1 sum_j beta_j]_f);
* Sigma | .   ~ inverse-Wishart(eta0 + m, [S0 + sum_j (beta_j - theta)(beta_j - theta)']^-1);
* sigma2 | .  ~ inverse-gamma((nu0 + N) / 2, (nu0 sigma0_sq + SSR) / 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..distributions import check_factorisations, inverse_gamma, inverse_wishart, mvn_from_precision
from ..linalg import BETA_PRECISION, gaussian_beta_draw
from ..priors import Priors
from ..suffstats import GaussianStats, residual_sum_of_squares


BLOCKS = ("beta", "alpha", "theta", "Sigma", "sigma2")


class GibbsState(NamedTuple):
    """State of the Gaussian Gibbs chain. ``Sigma_inv`` is kept with ``Sigma``, drawn together."""

    beta: np.ndarray  # (m, p)
    alpha: np.ndarray  # (r,)
    theta: np.ndarray  # (p,)
    Sigma: np.ndarray  # (p, p)
    Sigma_inv: np.ndarray  # (p, p)
    sigma2: float


def draw_beta(stats: GaussianStats, state: GibbsState, rng: np.random.Generator) -> np.ndarray:
    """All groups' beta_j from their full conditional at once (one compiled pass over the
    groups: :func:`multilevel.linalg.gaussian_beta_draw`); a precision that is not positive
    definite is jittered there, with a warning here, or named in a FloatingPointError."""
    s2 = float(state.sigma2)
    z = rng.standard_normal(stats.Xty.shape)
    beta, report = gaussian_beta_draw(stats.XtX, stats.Xty, stats.XtZ, state.alpha, state.Sigma_inv, state.theta, s2, z)
    if report[0]:
        check_factorisations((report,), ((BETA_PRECISION, True),))
    return beta


def draw_alpha(
    stats: GaussianStats, prior_prec: np.ndarray, prior_shift: np.ndarray, beta: np.ndarray, sigma2: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fixed-only effects alpha from their Gaussian full conditional."""
    Zt_resid = stats.Zty - np.einsum("jkr,jk->r", stats.XtZ, beta)
    P = prior_prec + stats.ZtZ / sigma2
    rhs = prior_shift + Zt_resid / sigma2
    return mvn_from_precision(P, rhs, rng.standard_normal(rhs.shape), "alpha (fixed-only effects)")


def draw_theta(
    free: np.ndarray, prior_prec: np.ndarray, prior_shift: np.ndarray, beta: np.ndarray, Sigma_inv: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Population means theta (free components) given the beta_j and Sigma; zeros elsewhere."""
    theta = np.zeros(beta.shape[1])
    if prior_prec.shape[0]:
        m = beta.shape[0]
        P = prior_prec + m * Sigma_inv[np.ix_(free, free)]
        rhs = prior_shift + (Sigma_inv @ beta.sum(axis=0))[free]
        theta[free] = mvn_from_precision(P, rhs, rng.standard_normal(rhs.shape), "theta")
    return theta


def draw_Sigma(
    eta0: float, S0: np.ndarray, beta: np.ndarray, theta: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sigma from inverse-Wishart(eta0 + m, [S0 + S_theta]^-1); returns (Sigma, Sigma^-1)."""
    dev = beta - theta
    return inverse_wishart(eta0 + beta.shape[0], S0 + dev.T @ dev, rng)


def initial_values(priors: Priors, theta_free: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A dispersed start: theta and alpha from their priors, Sigma = S0 / (eta0 - p - 1) (its
    prior mean; S0 when that is not defined), sigma2 = sigma0_sq times a log-normal factor."""
    p = priors.S0.shape[0]
    theta = np.zeros(p)
    if priors.mu0.shape[0]:
        theta[theta_free] = rng.multivariate_normal(priors.mu0, priors.Lambda0)
    alpha = rng.multivariate_normal(priors.alpha_mean, priors.alpha_cov) if priors.alpha_mean.shape[0] else np.zeros(0)
    denom = priors.eta0 - p - 1
    Sigma = priors.S0 / denom if denom > 0 else priors.S0.copy()
    return theta, alpha, Sigma, float(priors.sigma0_sq * np.exp(0.5 * rng.standard_normal()))


@dataclass(frozen=True)
class GaussianGibbs:
    """The Gaussian model's Gibbs kernel: constants fixed at construction, ``step`` pure.

    ``step(state, rng)`` returns the next state; it never mutates its input.
    """

    State = GibbsState

    stats: GaussianStats
    priors: Priors
    theta_free: np.ndarray
    #: the blocks each sweep updates; the others stay at their initial values (a block
    #: held fixed makes the sweep sample the conditional posterior given it, which has a
    #: closed form that tests compare against)
    update: frozenset[str] = frozenset(BLOCKS)
    #: starting values overriding ``init``'s, e.g. {"Sigma": S, "sigma2": s2} for held blocks
    start: dict | None = None

    def __post_init__(self) -> None:
        pr = self.priors
        L0_prec = np.linalg.inv(pr.Lambda0) if pr.Lambda0.shape[0] else np.zeros((0, 0))
        A_prec = np.linalg.inv(pr.alpha_cov) if pr.alpha_cov.shape[0] else np.zeros((0, 0))
        object.__setattr__(self, "_theta_prec", L0_prec)
        object.__setattr__(self, "_theta_shift", L0_prec @ pr.mu0)
        object.__setattr__(self, "_alpha_prec", A_prec)
        object.__setattr__(self, "_alpha_shift", A_prec @ pr.alpha_mean)
        object.__setattr__(self, "_n_obs", int(self.stats.n.sum()))

    def init(self, rng: np.random.Generator) -> GibbsState:
        """A dispersed starting point: theta and alpha from their priors, Sigma = S0 / (eta0 - p - 1)
        (or S0 when that is not defined), sigma2 = sigma0_sq scaled by a log-normal factor;
        beta_j start at theta and are drawn first in each sweep."""
        theta, alpha, Sigma, sigma2 = initial_values(self.priors, self.theta_free, rng)
        m = self.stats.n.shape[0]
        given = dict(self.start or {})
        theta = np.asarray(given.get("theta", theta), dtype=float)
        Sigma = np.asarray(given.get("Sigma", Sigma), dtype=float)
        return GibbsState(
            beta=np.asarray(given.get("beta", np.tile(theta, (m, 1))), dtype=float),
            alpha=np.asarray(given.get("alpha", alpha), dtype=float),
            theta=theta,
            Sigma=Sigma,
            Sigma_inv=np.linalg.inv(Sigma),
            sigma2=float(given.get("sigma2", sigma2)),
        )

    def step(self, state: GibbsState, rng: np.random.Generator) -> GibbsState:
        """One Gibbs sweep: beta, alpha, theta, Sigma, sigma2."""
        stats, pr, update = self.stats, self.priors, self.update
        beta, alpha, theta = state.beta, state.alpha, state.theta
        Sigma, Sigma_inv, sigma2 = state.Sigma, state.Sigma_inv, state.sigma2
        if "beta" in update:
            beta = draw_beta(stats, state, rng)
        if alpha.shape[0] and "alpha" in update:
            alpha = draw_alpha(stats, self._alpha_prec, self._alpha_shift, beta, sigma2, rng)
        if "theta" in update:
            theta = draw_theta(self.theta_free, self._theta_prec, self._theta_shift, beta, Sigma_inv, rng)
        if "Sigma" in update:
            Sigma, Sigma_inv = draw_Sigma(pr.eta0, pr.S0, beta, theta, rng)
        if "sigma2" in update:
            ssr = residual_sum_of_squares(stats, beta, alpha)
            sigma2 = inverse_gamma(0.5 * (pr.nu0 + self._n_obs), 0.5 * (pr.nu0 * pr.sigma0_sq + ssr), rng)
            if not np.isfinite(sigma2) or sigma2 <= 0:
                raise FloatingPointError(f"sigma2 drew {sigma2!r} (residual sum of squares {ssr!r})")
        return GibbsState(beta, alpha, theta, Sigma, Sigma_inv, sigma2)

    def loglik(self, state: GibbsState) -> float:
        """Total log-likelihood sum_ij log N(y_ij | x_ij' beta_j + z_ij' alpha, sigma2 / w_ij) (w = 1 unweighted):
        -(N log(2 pi sigma2) - sum log w + SSR_w / sigma2) / 2, SSR_w the weighted SSR."""
        ssr = residual_sum_of_squares(self.stats, state.beta, state.alpha)
        return -0.5 * (self._n_obs * np.log(2 * np.pi * state.sigma2) - self.stats.logw + ssr / state.sigma2)

    def record(self, state: GibbsState) -> dict[str, np.ndarray]:
        """What is kept of each draw: the parameters and the total log-likelihood."""
        return {
            "theta": state.theta,
            "Sigma": state.Sigma,
            "sigma2": np.float64(state.sigma2),
            "beta": state.beta,
            "alpha": state.alpha,
            "loglik": np.float64(self.loglik(state)),
        }
