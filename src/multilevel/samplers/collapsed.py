r"""Gibbs sampler of the hierarchical linear model with the group effects collapsed where it pays.

Same model and priors as :mod:`multilevel.samplers.gibbs` (the specification's centred
sampler). Centred Gibbs moves theta and Sigma slowly when the groups inform them weakly,
because each is drawn given all the beta_j. This kernel draws them with the beta_j
integrated out, y_j ~ N(X_j theta + Z_j alpha, sigma2 I + X_j Sigma X_j'), which the
sufficient statistics give in O(m p^3) through P_j = Sigma^-1 + X_j'X_j / sigma2:

    X_j' V_j^-1 X_j = Sigma^-1 - Sigma^-1 P_j^-1 Sigma^-1,
    X_j' V_j^-1 r_j = Sigma^-1 P_j^-1 X_j'r_j / sigma2,
    log p(y | theta, alpha, Sigma, sigma2) = const - sum_j [log det Sigma + log det P_j
                                              - (X_j'r_j)' P_j^-1 (X_j'r_j) / sigma2^2] / 2,

with r_j = y_j - X_j theta - Z_j alpha. One sweep (a partially collapsed Gibbs sampler,
van Dyk and Park 2008; the order matters):

1. Sigma: ``sigma_steps`` random-walk Metropolis steps on p(Sigma | theta, alpha, sigma2, y)
   (beta integrated out), in the coordinates Sigma = R C C' R' with C lower triangular,
   (log C_kk, C_kl): R a reference factor set during warm-up (from the warm-up mean of
   Sigma), the step size adapted towards acceptance 0.3; both frozen after warm-up.
2. (theta, alpha) jointly from p(theta, alpha | Sigma, sigma2, y), beta integrated out:
   Gaussian, so fixed-only effects are blocked with the population means.
3. beta_j | theta, alpha, Sigma, sigma2 for all groups at once, as in the centred sampler.
4. Sigma | beta, theta from its inverse-Wishart full conditional (the centred draw).
5. sigma2 | beta, alpha from its inverse-gamma full conditional.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..distributions import inverse_gamma, mvn_from_precision
from ..linalg import collapsed_information, sigma_coordinates, sigma_metropolis
from ..priors import Priors
from ..suffstats import GaussianStats, residual_sum_of_squares
from .gibbs import GibbsState, draw_beta, draw_Sigma, initial_values

SIGMA_TARGET = 0.3


class CollapsedState(NamedTuple):
    beta: np.ndarray  # (m, p)
    alpha: np.ndarray  # (r,)
    theta: np.ndarray  # (p,)
    Sigma: np.ndarray  # (p, p)
    Sigma_inv: np.ndarray  # (p, p)
    sigma2: float
    R: np.ndarray  # (p, p) reference Cholesky factor of the Sigma proposal's coordinates
    log_step: float  # log step size of the Sigma random walk
    Sigma_sum: np.ndarray  # (p, p) warm-up running sum of Sigma, for R
    n_sum: int
    accept_Sigma: float  # share of this sweep's Sigma steps accepted


@dataclass(frozen=True)
class CollapsedGibbs:
    """The default Gaussian kernel: centred Gibbs with theta, alpha and Sigma also moved
    with the group effects integrated out (see the module docstring)."""

    State = CollapsedState

    stats: GaussianStats
    priors: Priors
    theta_free: np.ndarray
    sigma_steps: int = 3

    def __post_init__(self) -> None:
        pr = self.priors
        p, r = pr.S0.shape[0], pr.alpha_mean.shape[0]
        free = self.theta_free
        q = int(free.sum())
        # joint prior of (theta_f, alpha): block diagonal
        prec = np.zeros((q + r, q + r))
        shift = np.zeros(q + r)
        if q:
            L0 = np.linalg.inv(pr.Lambda0)
            prec[:q, :q], shift[:q] = L0, L0 @ pr.mu0
        if r:
            A0 = np.linalg.inv(pr.alpha_cov)
            prec[q:, q:], shift[q:] = A0, A0 @ pr.alpha_mean
        object.__setattr__(self, "_prec", prec)
        object.__setattr__(self, "_shift", shift)
        object.__setattr__(self, "_n_obs", int(self.stats.n.sum()))
        object.__setattr__(self, "_S0", pr.S0)

    # -- steps ----------------------------------------------------------------------
    def residual_cross(self, theta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """U_j = X_j'(y_j - X_j theta - Z_j alpha) for all groups."""
        st = self.stats
        return st.Xty - st.XtX @ theta - (st.XtZ @ alpha if alpha.shape[0] else 0.0)

    def move_Sigma(self, state: CollapsedState, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """``sigma_steps`` Metropolis steps on Sigma with the beta_j integrated out
        (compiled: :func:`multilevel.linalg.sigma_metropolis`)."""
        U = self.residual_cross(state.theta, state.alpha)
        v = sigma_coordinates(state.Sigma, state.R)
        normals = rng.standard_normal((self.sigma_steps, v.shape[0]))
        log_u = np.log(rng.uniform(size=self.sigma_steps))
        Sigma, Sigma_inv, accepted = sigma_metropolis(v, state.R, U, self.stats.XtX, float(state.sigma2), self._S0,
                                                      float(self.priors.eta0), float(np.exp(state.log_step)), normals, log_u)
        return Sigma, Sigma_inv, accepted / max(self.sigma_steps, 1)

    def draw_theta_alpha(self, Sigma_inv: np.ndarray, sigma2: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(theta_f, alpha) | Sigma, sigma2, y with the beta_j integrated out (Gaussian)."""
        st, free = self.stats, self.theta_free
        p, r = Sigma_inv.shape[0], st.ZtZ.shape[0]
        q = int(free.sum())
        XVX, XVy, XVZ, ZVZ, ZVy, failed = collapsed_information(st.XtX, st.Xty, st.XtZ, Sigma_inv, float(sigma2))
        if failed >= 0:
            raise FloatingPointError(f"the precision of beta in group {failed} is not positive definite (collapsed step)")
        info = np.zeros((q + r, q + r))
        rhs = np.zeros(q + r)
        info[:q, :q] = XVX[np.ix_(free, free)]
        rhs[:q] = XVy[free]
        if r:
            info[q:, q:] = ZVZ + st.ZtZ / sigma2
            info[:q, q:] = XVZ[free]
            info[q:, :q] = XVZ[free].T
            rhs[q:] = ZVy + st.Zty / sigma2
        P = self._prec + 0.5 * (info + info.T)
        draw = mvn_from_precision(P, self._shift + rhs, rng.standard_normal(q + r), "theta and alpha (collapsed)")
        theta = np.zeros(p)
        theta[free] = draw[:q]
        return theta, draw[q:]

    # -- the kernel -----------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> CollapsedState:
        theta, alpha, Sigma, sigma2 = initial_values(self.priors, self.theta_free, rng)
        p, m = Sigma.shape[0], self.stats.n.shape[0]
        return CollapsedState(
            beta=np.tile(theta, (m, 1)), alpha=alpha, theta=theta, Sigma=Sigma, Sigma_inv=np.linalg.inv(Sigma),
            sigma2=sigma2, R=np.linalg.cholesky(Sigma),
            log_step=float(np.log(1.0 / np.sqrt(p * (p + 1) / 2))), Sigma_sum=np.zeros((p, p)), n_sum=0,
            accept_Sigma=0.0,
        )

    def step(self, state: CollapsedState, rng: np.random.Generator) -> CollapsedState:
        """One sweep: Sigma (collapsed Metropolis), (theta, alpha) collapsed, beta, Sigma, sigma2."""
        pr = self.priors
        Sigma, Sigma_inv, accept = self.move_Sigma(state, rng)
        theta, alpha = self.draw_theta_alpha(Sigma_inv, state.sigma2, rng)
        view = GibbsState(state.beta, alpha, theta, Sigma, Sigma_inv, state.sigma2)
        beta = draw_beta(self.stats, view, rng)
        Sigma, Sigma_inv = draw_Sigma(pr.eta0, pr.S0, beta, theta, rng)
        ssr = residual_sum_of_squares(self.stats, beta, alpha)
        sigma2 = inverse_gamma(0.5 * (pr.nu0 + self._n_obs), 0.5 * (pr.nu0 * pr.sigma0_sq + ssr), rng)
        if not np.isfinite(sigma2) or sigma2 <= 0:
            raise FloatingPointError(f"sigma2 drew {sigma2!r} (residual sum of squares {ssr!r})")
        return state._replace(beta=beta, alpha=alpha, theta=theta, Sigma=Sigma, Sigma_inv=Sigma_inv, sigma2=sigma2,
                              accept_Sigma=accept)

    def warmup_step(self, state: CollapsedState, rng: np.random.Generator, i: int, n_warmup: int) -> CollapsedState:
        """A sweep, then adaptation of the Sigma step size (Robbins-Monro, gain (i + 1)^-0.6)
        and, at half and three quarters of warm-up, of the reference factor R (from the mean
        of Sigma over the warm-up's second quarter, then third)."""
        state = self.step(state, rng)
        log_step = state.log_step + (i + 1.0) ** -0.6 * (state.accept_Sigma - SIGMA_TARGET)
        Sigma_sum, n_sum, R = state.Sigma_sum + state.Sigma, state.n_sum + 1, state.R
        if i + 1 in (max(n_warmup // 2, 1), max(3 * n_warmup // 4, 1)) and n_warmup >= 8:
            mean = Sigma_sum / n_sum
            try:
                R = np.linalg.cholesky(0.5 * (mean + mean.T))
                Sigma_sum, n_sum = np.zeros_like(Sigma_sum), 0
            except np.linalg.LinAlgError:
                pass
        if i + 1 == max(n_warmup // 4, 1):
            Sigma_sum, n_sum = np.zeros_like(Sigma_sum), 0  # the first quarter only settles in
        return state._replace(log_step=float(np.clip(log_step, -8.0, 3.0)), R=R, Sigma_sum=Sigma_sum, n_sum=n_sum)

    def record(self, state: CollapsedState) -> dict[str, np.ndarray]:
        ssr = residual_sum_of_squares(self.stats, state.beta, state.alpha)
        return {
            "theta": state.theta,
            "Sigma": state.Sigma,
            "sigma2": np.float64(state.sigma2),
            "beta": state.beta,
            "alpha": state.alpha,
            "loglik": np.float64(-0.5 * (self._n_obs * np.log(2 * np.pi * state.sigma2) + ssr / state.sigma2)),
            "accept_Sigma": np.float64(state.accept_Sigma),
        }
