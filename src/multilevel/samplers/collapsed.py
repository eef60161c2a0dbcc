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

with r_j = y_j - X_j theta - Z_j alpha. With precision weights (V_j = sigma2 W_j^-1 + X_j Sigma X_j')
the same formulas hold with X_j'W_jX_j, X_j'W_jr_j in place of X_j'X_j, X_j'r_j (the statistics
are weighted, :mod:`multilevel.suffstats`), and log det V_j gains -sum_i log w_i, constant
in Sigma, theta and alpha, so "const" absorbs it. One sweep (a partially collapsed Gibbs sampler,
van Dyk and Park 2008; the order matters):

1. Sigma: a few random-walk Metropolis steps on p(Sigma | theta, alpha, sigma2, y)
   (beta integrated out), in the coordinates v = (log C_kk, C_kl) of Sigma = R C C' R' with
   C lower triangular: R a reference factor set during warm-up (from the warm-up mean of
   Sigma), the proposal's per-coordinate scales from the warm-up spread of v, and its step
   size adapted towards acceptance 0.3; all frozen after warm-up. The number of steps is
   chosen in warm-up too (:meth:`CollapsedGibbs.choose_sigma_steps`): many when the groups
   inform their beta_j weakly (then centred Gibbs moves Sigma slowly and these steps carry
   it), one when they inform them well (then they would only cost time).
2. (theta, alpha) jointly from p(theta, alpha | Sigma, sigma2, y), beta integrated out:
   Gaussian, so fixed-only effects are blocked with the population means.
3. beta_j | theta, alpha, Sigma, sigma2 for all groups at once, as in the centred sampler.
4. Sigma | beta, theta from its inverse-Wishart full conditional (the centred draw).
5. sigma2 | beta, alpha from its inverse-gamma full conditional.

The sweep runs as one compiled call (:func:`multilevel.linalg.collapsed_sweep`) on random
numbers drawn beforehand from the chain's NumPy Generator (:meth:`CollapsedGibbs.draw_inputs`).
A precision matrix that is not positive definite (a group's P_j, or that of step 2) is retried
there with a small relative jitter on its diagonal, P + jitter * mean(|diag P|) * I for jitter
in :data:`multilevel.linalg.JITTERS`, and :meth:`CollapsedGibbs.step` warns that it was; past
the largest jitter, or with an inverse-Wishart scale that is not positive definite, the step
raises :class:`FloatingPointError` naming the matrix. The same sweep step by step in NumPy,
from the same random inputs, is the tests' reference (``tests/reference_sweeps.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..distributions import check_factorisations, weak_information_share
from ..linalg import COLLAPSED_FACTORISATIONS, collapsed_sweep, sigma_coordinates
from ..priors import Priors
from ..suffstats import GaussianStats, residual_sum_of_squares
from .gibbs import initial_values

SIGMA_TARGET = 0.3
#: most Sigma steps per sweep, and the number used before warm-up chooses (sampler default)
MAX_SIGMA_STEPS, START_SIGMA_STEPS = 8, 3


class CollapsedState(NamedTuple):
    beta: np.ndarray  # (m, p)
    alpha: np.ndarray  # (r,)
    theta: np.ndarray  # (p,)
    Sigma: np.ndarray  # (p, p)
    Sigma_inv: np.ndarray  # (p, p)
    sigma2: float
    R: np.ndarray  # (p, p) reference Cholesky factor of the Sigma proposal's coordinates
    log_step: float  # log step size of the Sigma random walk
    v_scale: np.ndarray  # (p (p + 1) / 2,) per-coordinate scale of the Sigma proposal
    Sigma_sum: np.ndarray  # (p, p) warm-up running sum of Sigma, for R
    v_sum: np.ndarray  # (p (p + 1) / 2,) warm-up running sums of the coordinates v and of v^2, for v_scale
    v_sq: np.ndarray
    n_sum: int
    accept_Sigma: float  # share of this sweep's Sigma steps accepted
    ssr: float  # residual sum of squares at (beta, alpha)
    n_steps: int  # Sigma Metropolis steps per sweep


class SweepInputs(NamedTuple):
    """The random numbers of one collapsed sweep (see :func:`multilevel.linalg.collapsed_sweep`)."""

    mh_normals: np.ndarray  # (n_steps, p (p + 1) / 2) Sigma random-walk increments
    log_u: np.ndarray  # (n_steps,) log uniforms of the Metropolis tests
    ta_normals: np.ndarray  # (q + r,) for (theta_free, alpha)
    beta_normals: np.ndarray  # (m, p)
    gammas: np.ndarray  # (p + 1,) Gamma((eta0 + m - k) / 2), k < p, then Gamma((nu0 + N) / 2)
    iw_normals: np.ndarray  # (p (p - 1) / 2,) Bartlett's lower entries


@dataclass(frozen=True)
class CollapsedGibbs:
    """The default Gaussian kernel: centred Gibbs with theta, alpha and Sigma also moved
    with the group effects integrated out (see the module docstring)."""

    State = CollapsedState

    stats: GaussianStats
    priors: Priors
    theta_free: np.ndarray
    sigma_steps: int | None = None  # Sigma steps per sweep; None: chosen in warm-up

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
        m = self.stats.n.shape[0]
        object.__setattr__(self, "_free_index", np.flatnonzero(free).astype(np.int64))
        object.__setattr__(self, "_sigma_rate0", 0.5 * pr.nu0 * pr.sigma0_sq)
        object.__setattr__(self, "_input_shape", (p * (p + 1) // 2, q + r, m, p))
        object.__setattr__(self, "_gamma_shapes", np.append(0.5 * (pr.eta0 + m - np.arange(p)), 0.5 * (pr.nu0 + self._n_obs)))

    # -- random inputs of a sweep -------------------------------------------------------
    def draw_inputs(self, rng: np.random.Generator, n_steps: int) -> SweepInputs:
        """All random numbers of one sweep with ``n_steps`` Sigma steps, in three Generator calls."""
        d, q_r, m, p = self._input_shape
        k = n_steps
        a = k * d
        b = a + q_r
        c = b + m * p
        normals = rng.standard_normal(c + p * (p - 1) // 2)
        log_u = np.log(rng.uniform(size=k))
        gammas = rng.standard_gamma(self._gamma_shapes)
        return SweepInputs(normals[:a].reshape(k, d), log_u, normals[a:b], normals[b:c].reshape(m, p), gammas,
                           normals[c:])

    # -- the kernel -----------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> CollapsedState:
        theta, alpha, Sigma, sigma2 = initial_values(self.priors, self.theta_free, rng)
        p, m = Sigma.shape[0], self.stats.n.shape[0]
        d = p * (p + 1) // 2
        beta = np.tile(theta, (m, 1))
        return CollapsedState(
            beta=beta, alpha=alpha, theta=theta, Sigma=Sigma, Sigma_inv=np.linalg.inv(Sigma),
            sigma2=sigma2, R=np.linalg.cholesky(Sigma),
            log_step=float(np.log(1.0 / np.sqrt(d))), v_scale=np.ones(d), Sigma_sum=np.zeros((p, p)),
            v_sum=np.zeros(d), v_sq=np.zeros(d), n_sum=0,
            accept_Sigma=0.0, ssr=residual_sum_of_squares(self.stats, beta, alpha),
            n_steps=START_SIGMA_STEPS if self.sigma_steps is None else self.sigma_steps,
        )

    def choose_sigma_steps(self, Sigma: np.ndarray, sigma2: float) -> int:
        """Sigma steps per sweep: ceil(MAX_SIGMA_STEPS * f), at least 1, with f the share of
        Sigma's variance the groups leave in their effects
        (:func:`multilevel.distributions.weak_information_share`, H_j = X_j'X_j / sigma2)."""
        f = weak_information_share(Sigma, self.stats.XtX / sigma2)
        return int(np.clip(np.ceil(MAX_SIGMA_STEPS * f), 1, MAX_SIGMA_STEPS))

    def step(self, state: CollapsedState, rng: np.random.Generator) -> CollapsedState:
        """One sweep: Sigma (collapsed Metropolis), (theta, alpha) collapsed, beta, Sigma, sigma2,
        in one compiled call (:func:`multilevel.linalg.collapsed_sweep`); a precision it had to
        jitter is warned about, one that failed raises FloatingPointError
        (:func:`multilevel.distributions.check_factorisations`)."""
        st, u = self.stats, self.draw_inputs(rng, state.n_steps)
        out = collapsed_sweep(st.XtX, st.Xty, st.XtZ, st.ZtZ, st.Zty, st.b_ref, st.a_ref, float(st.rtr), st.Xtr,
                              st.Ztr, self._free_index, self._prec, self._shift, self._S0, float(self.priors.eta0),
                              self._sigma_rate0, state.theta, state.alpha, state.Sigma, float(state.sigma2), state.R,
                              float(np.exp(state.log_step)), state.v_scale, u.mh_normals, u.log_u, u.ta_normals, u.beta_normals,
                              u.gammas, u.iw_normals)
        beta, alpha, theta, Sigma, Sigma_inv, sigma2, ssr, accepted, report, level = out
        if level:
            check_factorisations(report, COLLAPSED_FACTORISATIONS)
        if not np.isfinite(sigma2) or sigma2 <= 0:
            raise FloatingPointError(f"sigma2 drew {sigma2!r} (residual sum of squares {ssr!r})")
        return state._replace(beta=beta, alpha=alpha, theta=theta, Sigma=Sigma, Sigma_inv=Sigma_inv,
                              sigma2=float(sigma2), accept_Sigma=accepted / max(state.n_steps, 1), ssr=float(ssr))

    def warmup_step(self, state: CollapsedState, rng: np.random.Generator, i: int, n_warmup: int) -> CollapsedState:
        """A sweep, then adaptation of the Sigma proposal, frozen after warm-up:

        * the step size, all through warm-up, by Robbins-Monro (gain (i + 1)^-0.6) towards
          acceptance 0.3;
        * at half of warm-up, the reference factor R = chol(mean of Sigma over the second
          quarter), which makes the coordinates v about 0 and their scales comparable;
        * at three quarters, the per-coordinate scales = the standard deviations of v over the
          third quarter (R fixed meanwhile), and the step size reset to 2.38 / sqrt(dim v);
        * at a quarter and at half of warm-up, unless the kernel fixes it, the number of steps
          (:meth:`choose_sigma_steps` at the current Sigma and sigma2).
        """
        state = self.step(state, rng)
        log_step = state.log_step + (i + 1.0) ** -0.6 * (state.accept_Sigma - SIGMA_TARGET)
        R, v_scale = state.R, state.v_scale
        Sigma_sum, v_sum, v_sq, n_sum = state.Sigma_sum, state.v_sum, state.v_sq, state.n_sum + 1
        quarter, half, three_quarters = (max(k * n_warmup // 4, 1) for k in (1, 2, 3))
        n_steps = state.n_steps
        if self.sigma_steps is None and i + 1 in (quarter, half):
            n_steps = self.choose_sigma_steps(state.Sigma, state.sigma2)
        if i + 1 <= half:
            Sigma_sum = Sigma_sum + state.Sigma
        elif i + 1 <= three_quarters:
            v = sigma_coordinates(state.Sigma, R)
            v_sum, v_sq = v_sum + v, v_sq + v * v
        if n_warmup >= 8 and i + 1 == half:
            mean = Sigma_sum / n_sum
            try:
                R = np.linalg.cholesky(0.5 * (mean + mean.T))
            except np.linalg.LinAlgError:
                pass
            n_sum = 0
        elif n_warmup >= 8 and i + 1 == three_quarters:
            var = v_sq / n_sum - (v_sum / n_sum) ** 2
            if np.all(np.isfinite(var)) and np.all(var > 0):
                v_scale = np.sqrt(var)
                log_step = float(np.log(2.38 / np.sqrt(v_scale.shape[0])))
            n_sum = 0
        elif i + 1 == quarter:
            Sigma_sum, n_sum = np.zeros_like(Sigma_sum), 0  # the first quarter only settles in
        return state._replace(log_step=float(np.clip(log_step, -8.0, 3.0)), R=R, v_scale=v_scale, Sigma_sum=Sigma_sum,
                              v_sum=v_sum, v_sq=v_sq, n_sum=n_sum, n_steps=n_steps)

    def record(self, state: CollapsedState) -> dict[str, np.ndarray]:
        ssr = state.ssr
        return {
            "theta": state.theta,
            "Sigma": state.Sigma,
            "sigma2": np.float64(state.sigma2),
            "beta": state.beta,
            "alpha": state.alpha,
            "loglik": np.float64(-0.5 * (self._n_obs * np.log(2 * np.pi * state.sigma2) - self.stats.logw
                                         + ssr / state.sigma2)),
            "accept_Sigma": np.float64(state.accept_Sigma),
        }
