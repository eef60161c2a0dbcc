r"""Negative binomial (NB2) models with one or several grouping factors: Polya-Gamma augmented
Gibbs sampling of the location effects, a Metropolis step for the dispersion phi.

Model (log link, :class:`multilevel.design.CrossedDesign`)::

    y_i ~ NB(mu_i, phi),   Var(y_i) = mu_i + mu_i^2 / phi,   log mu_i = eta_i = offset_i + F_i a + sum_k Z_ki b_k
    b_kj ~ MVN(0, Sigma_k),   a ~ MVN(m0, Pi_a^-1),   Sigma_k[block] ~ IW(eta_kb, S0_k[block]),
    1 / sqrt(phi) ~ Exponential(phi_rate)   (:func:`multilevel.priors.log_prior_phi`)

Augmentation (Zhou, Li, Dunson and Carin 2012; Polson, Scott and Windle 2013). With r = phi and
psi_i = eta_i - log r,

    NB(y | mu, r) = Gamma(y + r) / (Gamma(r) y!) (e^psi)^y / (1 + e^psi)^(y + r),

the binomial likelihood in psi with n_i = y_i + r "trials" times terms in r only. Given r the
Polya-Gamma sweep of :mod:`multilevel.samplers.polya_gamma` applies unchanged with

    n_i = y_i + r,   kappa_i = y_i - n_i / 2 = (y_i - r) / 2,   offset_i -> offset_i - log r:

omega_i ~ PG(y_i + r, psi_i), then one Gaussian crossed update of (u, Sigma) with pseudo-response
z_i = kappa_i / omega_i - offset_i + log r and precision weights omega_i.

phi | u: :data:`PHI_STEPS` random-walk Metropolis steps on log phi, target sum_i log NB(y_i | exp(eta_i), phi) +
log p(log phi) (:func:`nb_phi_loglik`, one pass over the rows for the current and the proposed
phi each); its step size adapts in warm-up (Robbins-Monro towards acceptance 0.44, gain
(i + 1)^-0.6, :meth:`NegBinomialGibbs.warmup_step`) and is frozen after, so the kept draws come
from a fixed kernel. Both moves leave p(u, Sigma, phi | y) invariant.

Each sweep reads the rows 3 + PHI_STEPS times: eta, the weighted statistics, eta after the
update, the phi steps; the Polya-Gamma draws (non-integer n_i = y_i + phi) cost the most.
Recorded: ``phi``, the full NB log-likelihood ``loglik`` (constants included) and
``accept_phi`` (the share of the sweep's phi steps accepted).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit
from scipy.special import gammaln

from ..priors import dispersion_moments, log_prior_phi
from .polya_gamma import PolyaGammaGibbs

#: the acceptance rate the phi step's size adapts to (one-dimensional random walk)
PHI_TARGET = 0.44
#: Metropolis steps on log phi per sweep (each one pass over the rows). Measured on
#: tests/data/negbin.csv (828 rows, 2 chains x 2000 draws, one core): phi's bulk ESS 737 with one
#: step, 2279 with three, 2826 with six, at 9.9, 10.4 and 12.2 CPU s; four balances the two.
PHI_STEPS = 4


class NegBinomialState(NamedTuple):
    """:class:`~multilevel.samplers.polya_gamma.PolyaGammaState` and log phi, the log of the phi
    steps' size and the share of the last sweep's phi steps accepted."""

    t: np.ndarray
    b: np.ndarray
    Sigma: np.ndarray
    log_phi: float
    log_step: float
    accept_phi: float


@njit(cache=True)
def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0.0 else math.log1p(math.exp(x))


@njit(cache=True)
def nb_phi_loglik(y, eta, values, counts, log_phis):
    """sum_i log NB(y_i | exp(eta_i), phi) at each phi = exp(log_phis[k]), without log y_i!
    (constant in phi), in one pass over the rows: log Gamma(y + phi) - log Gamma(phi) + phi log
    phi + y eta - (y + phi) (log phi + softplus(eta - log phi)). The log Gamma terms are summed
    over the distinct responses ``values`` (``counts`` rows each: :func:`distinct_counts`), not
    the rows."""
    K = log_phis.shape[0]
    out = np.zeros(K)
    phis = np.exp(log_phis)
    for k in range(K):
        lg = math.lgamma(phis[k])
        for u in range(values.shape[0]):
            out[k] += counts[u] * (math.lgamma(values[u] + phis[k]) - lg)
    for i in range(eta.shape[0]):
        yi, e = y[i], eta[i]
        for k in range(K):
            lp, r = log_phis[k], phis[k]
            out[k] += r * lp + yi * e - (yi + r) * (lp + _softplus(e - lp))
    return out


def distinct_counts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``y`` and how many rows hold each (floats), for :func:`nb_phi_loglik`."""
    values, counts = np.unique(np.asarray(y, dtype=float), return_counts=True)
    return values, counts.astype(float)


def moment_phi(y: np.ndarray, mu: np.ndarray) -> float:
    """The moment estimate sum mu^2 / sum((y - mu)^2 - mu) of phi, in [0.05, 1000] (1000 without
    overdispersion)."""
    return phi_of_moments(*dispersion_moments(y, mu))


def phi_of_moments(s_mu2: float, excess: float) -> float:
    """:func:`moment_phi` from the sums of :func:`multilevel.priors.dispersion_moments` (over all rows)."""
    return float(np.clip(s_mu2 / excess, 0.05, 1e3)) if excess > 0 else 1e3


class NegBinomialGibbs(PolyaGammaGibbs):
    """The kernel (module docstring): ``init``, ``step``, ``warmup_step``, ``record`` over
    :class:`NegBinomialState`. Parameters as :class:`~multilevel.samplers.polya_gamma.PolyaGammaGibbs`;
    ``priors.phi_rate`` is the rate of phi's prior."""

    State = NegBinomialState

    def __init__(self, design: Any, layout: Any, priors: Any, a_start: np.ndarray):
        super().__init__(design, layout, priors, a_start)
        self.phi_rate = float(priors.phi_rate)
        self.phi_steps = PHI_STEPS
        eta0 = self.offset + np.asarray(design.F, dtype=float) @ np.asarray(a_start, dtype=float)
        self.phi_start = moment_phi(self.y, np.exp(np.minimum(eta0, 700.0)))
        self.log_y_factorial = float(np.sum(gammaln(self.y + 1.0)))
        self.y_values, self.y_counts = distinct_counts(self.y)

    def log_target_phi(self, eta: np.ndarray, log_phi_a: float, log_phi_b: float) -> tuple[float, float]:
        """log p(y | eta, phi) + log p(log phi) at log phi = ``log_phi_a`` and ``log_phi_b``, up to
        one constant."""
        la, lb = nb_phi_loglik(self.y, eta, self.y_values, self.y_counts, np.array([log_phi_a, log_phi_b]))
        return la + log_prior_phi(log_phi_a, self.phi_rate), lb + log_prior_phi(log_phi_b, self.phi_rate)

    def init(self, rng: np.random.Generator) -> NegBinomialState:
        """The Polya-Gamma start, phi at the pooled moment estimate times a factor in [0.5, 2]."""
        base = super().init(rng)
        log_phi = float(np.log(self.phi_start) + rng.uniform(-np.log(2.0), np.log(2.0)))
        return NegBinomialState(base.t, base.b, base.Sigma, log_phi, float(np.log(0.3)), 0.0)

    def step(self, state: NegBinomialState, rng: np.random.Generator) -> NegBinomialState:
        """One sweep: the augmented location update given phi, then phi's Metropolis steps."""
        r, log_r = float(np.exp(state.log_phi)), state.log_phi
        n = self.y + r
        omega = self.draw_omega(self.eta(state.t, state.b) - log_r, rng, n)
        stats, groups = self.statistics(omega, 0.5 * (self.y - r), self.offset - log_r)
        t, b, Sigma, _, _ = self.inner.sweep(rng, stats, groups, state.t, state.b, state.Sigma)
        eta, step, accepted = self.eta(t, b), float(np.exp(state.log_step)), 0
        for _ in range(self.phi_steps):
            proposal = log_r + step * rng.standard_normal()
            current, proposed = self.log_target_phi(eta, log_r, proposal)
            if np.log(rng.uniform()) < proposed - current:
                log_r, accepted = proposal, accepted + 1
        return NegBinomialState(t, b, Sigma, log_r, state.log_step, accepted / self.phi_steps)

    def warmup_step(self, state: NegBinomialState, rng: np.random.Generator, i: int, n_warmup: int
                    ) -> NegBinomialState:
        """A sweep, then the log step size moves by (i + 1)^-0.6 (share accepted - 0.44), within [-10, 3]."""
        state = self.step(state, rng)
        log_step = state.log_step + (i + 1.0) ** -0.6 * (state.accept_phi - PHI_TARGET)
        return state._replace(log_step=float(np.clip(log_step, -10.0, 3.0)))

    def loglik(self, t: np.ndarray, b: np.ndarray, log_phi: float = 0.0) -> float:
        """sum_i log NB(y_i | exp(eta_i), phi), normalising constants included."""
        return float(nb_phi_loglik(self.y, self.eta(t, b), self.y_values, self.y_counts, np.array([log_phi]))[0]
                     - self.log_y_factorial)

    def record(self, state: NegBinomialState) -> dict[str, np.ndarray]:
        """theta, alpha, per factor Sigma and beta, ``phi``, ``loglik`` and ``accept_phi``."""
        out = self.inner.location_record(state)
        out["phi"] = np.float64(np.exp(state.log_phi))
        out["loglik"] = np.float64(self.loglik(state.t, state.b, state.log_phi))
        out["accept_phi"] = np.float64(state.accept_phi)
        return out


__all__ = ["NegBinomialGibbs", "NegBinomialState", "PHI_STEPS", "PHI_TARGET", "distinct_counts", "moment_phi",
           "nb_phi_loglik", "phi_of_moments"]
