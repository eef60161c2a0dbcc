r"""Gibbs sampler of the hierarchical linear model with interweaving (Yu and Meng 2011).

The specification's centred sweep (:mod:`multilevel.samplers.gibbs`) with theta and Sigma
each drawn a second time in the non-centred parametrisation gamma_j = beta_j - theta
(ancillarity-sufficiency interweaving), at O(m p^2) cost from the sufficient statistics:

* theta, non-centred: with the gamma_j held fixed, y_j - Z_j alpha - X_j gamma_j =
  X_j theta + e_j, so theta_f ~ MVN(P^-1 b, P^-1) with
  P = Lambda0^-1 + [sum_j X_j'X_j]_ff / sigma2 and
  b = Lambda0^-1 mu0 + [sum_j X_j'(y_j - Z_j alpha) - X_j'X_j gamma_j]_f / sigma2;
  then beta_j = gamma_j + theta.
* Sigma, non-centred: ``sigma_steps`` Metropolis steps with the eta_j = L^-1 (beta_j - theta)
  held fixed (Sigma = L L'), on the coordinates Sigma = R C C' R' (log C_kk, C_kl; R fixed
  after warm-up), beta*_j = theta + L* eta_j; ratio = exp(-(SSR* - SSR) / (2 sigma2)) x
  inverse-Wishart prior ratio x Jacobian of the coordinates.

The centred draws move theta and Sigma well when the groups are informative, the
non-centred ones when they are not. The default Gaussian sampler
(:mod:`multilevel.samplers.collapsed`) integrates the beta_j out instead, which measured
better still (docs/benchmarks.md); this kernel is ``sampler="interweaving"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..distributions import mvn_from_precision
from ..linalg import sigma_coordinates, sigma_from_coordinates
from ..suffstats import residual_sum_of_squares
from .gibbs import BLOCKS, GaussianGibbs, GibbsState, draw_Sigma

SIGMA_TARGET = 0.3


class InterweavingState(NamedTuple):
    beta: np.ndarray
    alpha: np.ndarray
    theta: np.ndarray
    Sigma: np.ndarray
    Sigma_inv: np.ndarray
    sigma2: float
    R: np.ndarray  # (p, p) reference factor of the Sigma coordinates
    log_step: float
    accept_Sigma: float


@dataclass(frozen=True)
class InterweavingGibbs:
    """Centred Gibbs interwoven with non-centred draws of theta and Sigma (module docstring)."""

    State = InterweavingState

    centred: GaussianGibbs
    sigma_steps: int = 3

    def __post_init__(self) -> None:
        st = self.centred.stats
        without = frozenset(BLOCKS) - {"Sigma", "sigma2"}
        object.__setattr__(self, "_first", GaussianGibbs(st, self.centred.priors, self.centred.theta_free, update=without))
        object.__setattr__(self, "_last", GaussianGibbs(st, self.centred.priors, self.centred.theta_free,
                                                       update=frozenset({"sigma2"})))
        object.__setattr__(self, "_XtX_sum", st.XtX.sum(axis=0))
        object.__setattr__(self, "_Xty_sum", st.Xty.sum(axis=0))
        object.__setattr__(self, "_XtZ_sum", st.XtZ.sum(axis=0))

    @property
    def stats(self):
        return self.centred.stats

    @property
    def priors(self):
        return self.centred.priors

    def theta_noncentred(self, beta: np.ndarray, theta: np.ndarray, alpha: np.ndarray, sigma2: float,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        free = self.centred.theta_free
        if not free.any():
            return beta, theta
        gamma = beta - theta
        cross = self._Xty_sum - (self._XtZ_sum @ alpha if alpha.shape[0] else 0.0) - np.einsum("jkl,jl->k", self.stats.XtX, gamma)
        P = self.centred._theta_prec + self._XtX_sum[np.ix_(free, free)] / sigma2
        rhs = self.centred._theta_shift + cross[free] / sigma2
        new = np.zeros_like(theta)
        new[free] = mvn_from_precision(P, rhs, rng.standard_normal(rhs.shape), "theta (non-centred)")
        return gamma + new, new

    def log_prior_Sigma(self, Sigma_inv: np.ndarray, logdet: float) -> float:
        p = Sigma_inv.shape[0]
        pr = self.priors
        return -0.5 * (pr.eta0 + p + 1) * logdet - 0.5 * float(np.sum(pr.S0 * Sigma_inv))

    def Sigma_noncentred(self, state: InterweavingState, beta: np.ndarray, theta: np.ndarray, alpha: np.ndarray,
                         Sigma: np.ndarray, Sigma_inv: np.ndarray, sigma2: float, rng: np.random.Generator):
        R = state.R
        v = sigma_coordinates(Sigma, R)
        L, _, _, logdet, log_jac = sigma_from_coordinates(v, R)
        eta = np.linalg.solve(L, (beta - theta).T)
        current = -0.5 * residual_sum_of_squares(self.stats, beta, alpha) / sigma2 + self.log_prior_Sigma(Sigma_inv, logdet) + log_jac
        accepted = 0
        step = np.exp(state.log_step)
        for _ in range(self.sigma_steps):
            proposal = v + step * rng.standard_normal(v.shape[0])
            L_new, S_new, Si_new, logdet_new, log_jac_new = sigma_from_coordinates(proposal, R)
            beta_new = theta + (L_new @ eta).T
            value = (-0.5 * residual_sum_of_squares(self.stats, beta_new, alpha) / sigma2
                     + self.log_prior_Sigma(Si_new, logdet_new) + log_jac_new)
            if np.log(rng.uniform()) < value - current:
                v, current, beta, Sigma, Sigma_inv = proposal, value, beta_new, S_new, Si_new
                accepted += 1
        return beta, Sigma, Sigma_inv, accepted / max(self.sigma_steps, 1)

    def init(self, rng: np.random.Generator) -> InterweavingState:
        s = self.centred.init(rng)
        p = s.Sigma.shape[0]
        return InterweavingState(*s, R=np.linalg.cholesky(s.Sigma), log_step=float(np.log(0.5 / np.sqrt(p * (p + 1) / 2))),
                                 accept_Sigma=0.0)

    def step(self, state: InterweavingState, rng: np.random.Generator) -> InterweavingState:
        """Centred beta, alpha, theta; theta non-centred; Sigma centred then non-centred; sigma2."""
        pr = self.priors
        s = self._first.step(GibbsState(*state[:6]), rng)
        beta, theta = self.theta_noncentred(s.beta, s.theta, s.alpha, s.sigma2, rng)
        Sigma, Sigma_inv = draw_Sigma(pr.eta0, pr.S0, beta, theta, rng)
        beta, Sigma, Sigma_inv, accept = self.Sigma_noncentred(state, beta, theta, s.alpha, Sigma, Sigma_inv, s.sigma2, rng)
        view = GibbsState(beta, s.alpha, theta, Sigma, Sigma_inv, s.sigma2)
        sigma2 = self._last.step(view, rng).sigma2
        return InterweavingState(beta, s.alpha, theta, Sigma, Sigma_inv, sigma2, state.R, state.log_step, accept)

    def warmup_step(self, state: InterweavingState, rng: np.random.Generator, i: int, n_warmup: int) -> InterweavingState:
        state = self.step(state, rng)
        log_step = state.log_step + (i + 1.0) ** -0.6 * (state.accept_Sigma - SIGMA_TARGET)
        R = state.R
        if i + 1 in (max(n_warmup // 4, 1), max(n_warmup // 2, 1)):
            R = np.linalg.cholesky(state.Sigma)
        return state._replace(log_step=float(np.clip(log_step, -8.0, 3.0)), R=R)

    def record(self, state: InterweavingState) -> dict[str, np.ndarray]:
        out = self.centred.record(GibbsState(*state[:6]))
        out["accept_Sigma"] = np.float64(state.accept_Sigma)
        return out
