r"""Metropolis-within-Gibbs for hierarchical GLMs (specification, second half).

Model: eta_ij = x_ij' beta_j + z_ij' alpha + offset_ij, y_ij from the family with
canonical link, beta_j ~ MVN(theta, Sigma). One sweep:

* beta_j, all m groups at once: propose beta*_j, accept with probability
  min(1, exp(ll_j(beta*_j) - ll_j(beta_j) + log N(beta*_j | theta, Sigma) - log N(beta_j | theta, Sigma))),
  the ll_j from one fused pass over rows sorted by group;
* alpha (fixed-only effects) jointly with the beta_j (``alpha_steps`` moves per sweep, see
  :func:`default_alpha_steps`): alpha* = alpha + delta and
  beta*_j = beta_j - M_j delta, M_j = (Sigma^-1 + H_j)^-1 G_j the shift of beta_j's
  conditional mode when alpha moves (H_j = X_j'W_jX_j, G_j = X_j'W_jZ_j). The map has unit
  Jacobian and is its own reverse with -delta, so the ratio is the joint density ratio.
  The free part of theta moves with the beta_j's mean shift, theta* = theta - mean_j(M_j delta).
  A predictor constant within groups (confounded with the group effects) then moves
  freely instead of being held by the beta_j. delta is a Langevin step
  delta = (s_a^2 / 2) C g + s_a L_C z (g the gradient of the log density along the move,
  with the Metropolis-Hastings correction for the drift), C = L_C L_C' the inverse of
  A0^-1 plus alpha's information with the beta_j integrated out,
  sum_j (K_j - G_j' (Sigma^-1 + H_j)^-1 G_j), K_j = Z_j'W_jZ_j; s_a adapted in warm-up;
* theta | beta, Sigma by Gibbs as in the linear model, drawn jointly with the group-level
  columns of alpha in hierarchical centring (Gelfand, Sahu and Carlin 1995): a fixed-only
  column c with z_ic = w_jc x_i,t(c) in every group j (:func:`group_level_columns`: a
  group-level predictor, t the intercept, or a cross-level interaction, t a varying slope)
  moves into the group effects, b_j = beta_j + W_j alpha_c ~ MVN(theta + W_j alpha_c, Sigma),
  the likelihood depends on b_j alone, and (theta_f, alpha_c) | b, Sigma is Gaussian
  (:func:`multilevel.glmsweep.theta_alpha_gibbs`); the linear predictor does not change;
* Sigma | beta, theta: the inverse-Wishart Gibbs draw of the linear model;
* the partially non-centred moves (Papaspiliopoulos, Roberts and Skold 2007), when
  ``interweave``: after theta's draw and after Sigma's (``n_partial_steps`` of each), a random
  walk on theta, or on Sigma's coordinates Sigma = R C C' R' (log C_kk, C_kl; R fixed after
  warm-up), that holds e_j = L_j' (beta_j - mean_j) fixed, N(mean_j, (L_j L_j')^-1) the
  Laplace approximation of beta_j | y_j, theta, alpha, Sigma (L_j L_j' = Sigma^-1 + H_j,
  mean_j = (Sigma^-1 + H_j)^-1 (h_j + Sigma^-1 theta), h_j the linear coefficient of the
  Gaussian approximation of group j's log-likelihood, frozen after warm-up). Where that
  approximation is exact, theta and Sigma move with the beta_j integrated out; a group that
  says little about its effects gets the non-centred move (its beta_j follows theta and
  Sigma), one that says much the centred one (its beta_j stays). The maps are deterministic
  given the rest and their own reverse, so the ratio is the joint density ratio (with the
  Jacobian prod_j det L_j / det L*_j for Sigma) whatever the approximation's quality, which
  only sets the acceptance rate. The proposals' covariances (theta: its Laplace-marginal
  covariance; Sigma: per-coordinate scales from warm-up) and step sizes are frozen after
  warm-up.

Proposals for beta_j:

* ``"laplace"`` (default): a rotation about the Newton step, preconditioned by the group's Laplace
  precision P_j = Sigma^-1 + H_j (H_j = X_j' W_j X_j, its Fisher information): with
  mean_j = beta_j + P_j^-1 g(beta_j) (g the gradient of the log conditional density of beta_j),
  beta*_j = mean_j + cos(phi_j) (beta_j - mean_j) + kappa sin(phi_j) L_j'^-1 z, L_j L_j' = P_j,
  with the Metropolis-Hastings correction (the reverse proposal from beta*_j, through its own
  Newton step). With kappa = 1 it would be exact (always accepted) for a Gaussian conditional:
  for a small angle a Langevin step of size phi_j (Roberts and Rosenthal 1998), at pi / 2 an
  independent draw from the Laplace approximation, beyond it antithetic (Neal's
  overrelaxation); kappa = ``KAPPA`` > 1 widens it (an overdispersed proposal). The
  information (H_j, G_j, K_j and C) is re-evaluated during warm-up at the current state and
  the per-group angle adapted (Robbins-Monro on log phi_j) towards ``BETA_TARGET``, up to
  ``PHI_MAX``; all are frozen after warm-up, so the kept draws come from a Markov chain with a
  fixed proposal (given Sigma).
* ``"textbook"``: the specification's beta*_j ~ MVN(beta_j, delta Sigma) with one delta
  adapted in warm-up, then frozen.

Each non-centred move costs a pass over the rows, and pays when the groups leave much of
Sigma's variance in their effects (centred Gibbs then moves Sigma at a rate near
1 - (1 - f)^2, f that share). By default (``interweave=None``, ``sampler="auto"``) the kernel
decides at half of warm-up (:meth:`GLMMetropolis.choose_interweave`): on when, for some term
k, f = mean over groups of [(Sigma^-1 + H_j)^-1]_kk / Sigma_kk exceeds ``INTERWEAVE_SHARE``
(or ``INTERWEAVE_SHARE_SMALL_DATA`` on data of at most ``SMALL_DATA_ROWS`` rows, where a pass
costs less than a sweep's fixed cost), with ceil(``MAX_PARTIAL_STEPS`` f) theta and Sigma moves per sweep
(:meth:`GLMMetropolis.choose_partial_steps`). ``interweave=True`` (``sampler="interweaving"``)
keeps them on; ``False`` (``sampler="centred"``) leaves them out: theta and Sigma then come from
their Gibbs draws alone, as in the specification.

The sweep runs as one compiled call (:func:`multilevel.glmsweep.glm_sweep`) on random
numbers drawn beforehand from the chain's NumPy Generator (:meth:`GLMMetropolis.draw_inputs`).
A precision matrix that is not positive definite is retried there with a small relative jitter
on its diagonal, P + jitter * mean(|diag P|) * I for jitter in :data:`multilevel.linalg.JITTERS`:
a group's Sigma^-1 + H_j, which only shapes the proposals of beta_j, alpha and theta (the moves
stay exact with the jittered matrix), and the precision of theta's Gibbs draw (which the jitter
perturbs slightly). :meth:`GLMMetropolis.step` warns that a jitter was needed; past the largest,
or with an inverse-Wishart scale that is not positive definite, it raises
:class:`FloatingPointError` naming the matrix. The same sweep move by move in NumPy, from the
same random inputs, is the tests' reference (``tests/reference_sweeps.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..distributions import check_factorisations, weak_information_share
from ..glmlik import group_information, group_loglik_grad
from ..glmsweep import GLM_FACTORISATIONS, beta_step_sizes, glm_sweep
from ..linalg import sigma_coordinates, solve_spd_batch
from ..priors import Priors

PROPOSALS = ("laplace", "textbook")


def target_acceptance(p: int) -> float:
    """Target acceptance rate of a p-dimensional random walk: 0.44 in one dimension,
    falling towards the asymptotic 0.234 (Roberts, Gelman and Gilks 1997)."""
    return max(0.234, 0.44 - 0.07 * (p - 1))


#: the non-centred moves are made when the share of Sigma's variance left in some term of
#: beta_j given its group's data exceeds this (see ``GLMMetropolis.choose_interweave``), and on
#: data of at most ``SMALL_DATA_ROWS`` rows when it exceeds ``INTERWEAVE_SHARE_SMALL_DATA``
INTERWEAVE_SHARE, INTERWEAVE_SHARE_SMALL_DATA, SMALL_DATA_ROWS = 0.5, 0.1, 2500
#: most partially non-centred theta and Sigma moves per sweep (each) (see ``GLMMetropolis.choose_partial_steps``)
MAX_PARTIAL_STEPS = 6

#: target acceptance of the Langevin proposal of the joint alpha move (Roberts and Rosenthal 1998)
LANGEVIN_TARGET = 0.574
#: the Laplace proposal of beta_j (see :func:`multilevel.glmsweep.beta_step_sizes`): its angle adapts
#: towards the acceptance rate ``BETA_TARGET``, up to ``PHI_MAX`` (slightly past pi / 2, the
#: independent draw from the Laplace approximation: mildly antithetic, cos(PHI_MAX) = -0.31); its
#: noise is ``KAPPA`` times that of the move that is exact for a Gaussian conditional, an
#: overdispersed proposal, so that the conditional's tails are covered where they are heavier than
#: the approximation's (measured: epil's population min ESS per draw 0.62 with KAPPA = 1.3,
#: 0.56 with 1; the simulated set of ``benchmarks/glm.py`` the same within noise). A group whose
#: Laplace approximation is good takes the largest angle, its acceptance above the target
BETA_TARGET = LANGEVIN_TARGET
PHI_MAX = 0.6 * np.pi
KAPPA = 1.3


class GLMState(NamedTuple):
    beta: np.ndarray  # (m, p)
    alpha: np.ndarray  # (r,)
    theta: np.ndarray  # (p,)
    Sigma: np.ndarray  # (p, p)
    Sigma_inv: np.ndarray  # (p, p)
    ll: np.ndarray  # (m,) per-group log-likelihood at (beta_j, alpha)
    grad: np.ndarray  # (m, p + r) its gradient in beta_j, then group j's share of the gradient in alpha
    accept_beta: np.ndarray  # (m,) bool: last proposal accepted
    accept_alpha: float  # share of the sweep's joint alpha moves accepted
    log_scale: np.ndarray  # (m,) log phi_j, the angle ("laplace"), or (1,) log sqrt(delta) ("textbook")
    info: np.ndarray  # (m, p + r, p + r) Fisher information of (beta_j, alpha) per group, frozen after warm-up
    log_scale_alpha: float
    alpha_chol: np.ndarray  # (r, r) Cholesky factor of C, the alpha proposal's covariance
    log_scale_theta: float
    theta_chol: np.ndarray  # (q, q) Cholesky factor of the non-centred theta proposal's covariance
    accept_theta: float  # share of the sweep's non-centred theta moves accepted
    R: np.ndarray  # (p, p) reference factor of the non-centred Sigma move's coordinates
    log_step_Sigma: float
    accept_Sigma: float  # share of the sweep's non-centred Sigma moves accepted
    v_scale: np.ndarray  # (p (p + 1) / 2,) per-coordinate scale of the non-centred Sigma proposal
    v_sum: np.ndarray  # warm-up sums of the Sigma coordinates and their squares, for v_scale
    v_sq: np.ndarray
    n_v: int
    interweave: bool  # the non-centred theta and Sigma moves are made
    h_ref: np.ndarray  # (m, p) H_j beta_j + score_j where the information was last evaluated
    alpha_ref: np.ndarray  # (r,) alpha there
    n_partial_steps: int  # partially non-centred theta moves and Sigma moves per sweep (when ``interweave``)


class GLMSweepInputs(NamedTuple):
    """The random numbers of one sweep (see :func:`multilevel.glmsweep.glm_sweep`); ``u_*`` are log uniforms."""

    z_beta: np.ndarray  # (m, p)
    u_beta: np.ndarray  # (m,)
    z_alpha: np.ndarray  # (alpha_steps, r)
    u_alpha: np.ndarray  # (alpha_steps,)
    z_theta: np.ndarray  # (q + k,) centred Gibbs draw of theta and the k group-level columns of alpha
    z_theta_nc: np.ndarray  # (partial_steps, q) non-centred moves
    u_theta: np.ndarray  # (partial_steps,)
    gammas: np.ndarray  # (p,) Gamma((eta0 + m - k) / 2)
    iw_normals: np.ndarray  # (p (p - 1) / 2,)
    z_Sigma: np.ndarray  # (partial_steps, p (p + 1) / 2)
    u_Sigma: np.ndarray  # (partial_steps,)


@dataclass(frozen=True)
class GLMData:
    """The arrays a GLM sweep reads: rows sorted by group."""

    code: int
    X: np.ndarray
    Z: np.ndarray
    offset: np.ndarray
    y: np.ndarray
    n: np.ndarray
    starts: np.ndarray


#: joint alpha moves per sweep when a fixed-only predictor varies mostly between groups
CONFOUNDED_ALPHA_STEPS = 3


def default_alpha_steps(Z: np.ndarray, starts: np.ndarray) -> int:
    """Joint (alpha, beta, theta) moves per sweep: ``CONFOUNDED_ALPHA_STEPS`` when some
    fixed-only predictor has more than half of its variance between groups (a group-level
    predictor, confounded with the group effects: its coefficient then mixes slowest, epil's
    treatment for instance, and more moves pay), else 1 (each move is one more pass over
    the rows)."""
    if not Z.shape[1]:
        return 1
    sizes = np.diff(starts)
    means = np.add.reduceat(Z, starts[:-1], axis=0) / sizes[:, None]
    between = np.average((means - Z.mean(axis=0)) ** 2, axis=0, weights=sizes)
    total = Z.var(axis=0)
    shares = np.divide(between, total, out=np.zeros_like(total), where=total > 0)
    return CONFOUNDED_ALPHA_STEPS if np.any(shares > 0.5) else 1


def group_level_columns(X: np.ndarray, Z: np.ndarray, starts: np.ndarray, tol: float = 1e-9
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed-only columns c that, within every group j, are a multiple of one column t(c)
    of the group effects: z_ic = w_jc x_i,t(c) for the rows i of group j. A group-level
    predictor is one (t the intercept, w_jc its value in group j), and so is a cross-level
    interaction (t a varying slope). Their coefficients are confounded with the group effects,
    and :func:`multilevel.glmsweep.theta_alpha_gibbs` draws them with theta in hierarchical
    centring. Returns (cols (k,), terms (k,), weights w (m, k)); the first matching t is taken.
    """
    starts = np.asarray(starts)
    sizes = np.diff(starts)
    m, r, p = sizes.shape[0], Z.shape[1], X.shape[1]
    cols, terms, weights = [], [], []
    for c in range(r):
        zc = Z[:, c]
        for t in range(p):
            xt = X[:, t]
            sxx = np.add.reduceat(xt * xt, starts[:-1])
            w = np.divide(np.add.reduceat(zc * xt, starts[:-1]), sxx, out=np.zeros(m), where=sxx > 0)
            if np.max(np.abs(zc - np.repeat(w, sizes) * xt), initial=0.0) <= tol * max(1.0, float(np.max(np.abs(zc)))):
                cols.append(c)
                terms.append(t)
                weights.append(w)
                break
    return (np.asarray(cols, dtype=np.int64), np.asarray(terms, dtype=np.int64),
            np.ascontiguousarray(np.column_stack(weights)) if weights else np.zeros((m, 0)))


@dataclass(frozen=True)
class GLMMetropolis:
    """Metropolis-within-Gibbs kernel for Poisson, binomial and Bernoulli hierarchical models."""

    State = GLMState

    data: GLMData
    priors: Priors
    theta_free: np.ndarray
    proposal: str = "laplace"
    b_start: np.ndarray | None = None  # per-group fits: where H_j is first evaluated
    alpha_info: np.ndarray | None = None  # pooled Fisher information of alpha
    interweave: bool | None = None  # the non-centred theta and Sigma moves: on, off, or None (chosen in warm-up)
    alpha_steps: int = 1  # joint (alpha, beta, theta) moves per sweep (Model: :func:`default_alpha_steps`)
    partial_steps: int | None = None  # partially non-centred theta and Sigma moves per sweep (None: chosen in warm-up)

    def __post_init__(self) -> None:
        pr = self.priors
        L0_prec = np.linalg.inv(pr.Lambda0) if pr.Lambda0.shape[0] else np.zeros((0, 0))
        r = self.data.Z.shape[1]
        A_prec = np.linalg.inv(pr.alpha_cov) if r else np.zeros((0, 0))
        info = self.alpha_info if self.alpha_info is not None else np.zeros((r, r))
        object.__setattr__(self, "_theta_prec", L0_prec)
        object.__setattr__(self, "_theta_shift", L0_prec @ pr.mu0)
        object.__setattr__(self, "_alpha_prec", A_prec)
        object.__setattr__(self, "_alpha_chol0", np.linalg.cholesky(np.linalg.inv(A_prec + info)) if r else np.zeros((0, 0)))
        object.__setattr__(self, "_free_index", np.flatnonzero(self.theta_free).astype(np.int64))
        m, p = self.data.starts.shape[0] - 1, self.data.X.shape[1]
        level = group_level_columns(self.data.X, self.data.Z, self.data.starts)  # drawn with theta
        object.__setattr__(self, "group_level", level)
        object.__setattr__(self, "_gamma_shapes", 0.5 * (pr.eta0 + m - np.arange(p)))
        object.__setattr__(self, "_shape", (m, p))
        q, k = int(self.theta_free.sum()), level[0].shape[0]
        sizes = [m * p, self.alpha_steps * r, q + k, p * (p - 1) // 2]
        object.__setattr__(self, "_cuts", tuple(int(c) for c in np.cumsum(sizes)))
        object.__setattr__(self, "_step_sizes", [])  # see beta_step_sizes

    # -- pieces ---------------------------------------------------------------------
    def loglik_grad(self, beta: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        return group_loglik_grad(d.code, d.X, d.Z, d.offset, alpha, d.y, d.n, d.starts, beta)

    def information(self, beta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        d = self.data
        return group_information(d.code, d.X, d.Z, d.offset, alpha, d.n, d.starts, beta)

    def alpha_shift(self, info: np.ndarray, Sigma_inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """M_j = (Sigma^-1 + H_j)^-1 G_j (m, p, r), and G_j (m, p, r)."""
        p = Sigma_inv.shape[0]
        G = np.ascontiguousarray(info[:, :p, p:])
        M, failed = solve_spd_batch(np.ascontiguousarray(Sigma_inv + info[:, :p, :p]), G)
        if failed >= 0:
            raise FloatingPointError(f"the information of beta in group {failed} is not positive definite")
        return M, G

    def alpha_proposal_chol(self, info: np.ndarray, Sigma_inv: np.ndarray) -> np.ndarray:
        """Cholesky factor of C = (A0^-1 + sum_j [K_j - G_j' (Sigma^-1 + H_j)^-1 G_j])^-1."""
        r = self.data.Z.shape[1]
        if not r:
            return np.zeros((0, 0))
        p = Sigma_inv.shape[0]
        M, G = self.alpha_shift(info, Sigma_inv)
        marginal = info[:, p:, p:].sum(axis=0) - np.einsum("jkr,jks->rs", G, M)
        try:
            return np.linalg.cholesky(np.linalg.inv(self._alpha_prec + 0.5 * (marginal + marginal.T)))
        except np.linalg.LinAlgError:
            return self._alpha_chol0

    @staticmethod
    def _reference(info: np.ndarray, beta: np.ndarray, alpha: np.ndarray, grad: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(h_ref, alpha_ref): h_j = H_j beta_j + score_j, the linear coefficient of the Gaussian
        approximation of group j's log-likelihood at (beta_j, alpha)."""
        p = beta.shape[1]
        return np.einsum("jab,jb->ja", info[:, :p, :p], beta) + grad[:, :p], alpha.copy()

    def theta_proposal_chol(self, info: np.ndarray, Sigma_inv: np.ndarray) -> np.ndarray:
        """Cholesky factor of theta's covariance with the beta_j integrated out (Laplace),
        (Lambda0^-1 + sum_j [Sigma^-1 - Sigma^-1 (Sigma^-1 + H_j)^-1 Sigma^-1]_ff)^-1: the
        partially non-centred theta proposal."""
        free = self.theta_free
        p = free.shape[0]
        try:
            V = np.linalg.inv(Sigma_inv + info[:, :p, :p])
            H = (info.shape[0] * Sigma_inv - Sigma_inv @ V.sum(axis=0) @ Sigma_inv)[np.ix_(free, free)]
            return np.linalg.cholesky(np.linalg.inv(self._theta_prec + 0.5 * (H + H.T)))
        except np.linalg.LinAlgError:
            return np.linalg.cholesky(self.priors.Lambda0) if free.any() else np.zeros((0, 0))

    def beta_step_sizes(self, log_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(drift, noise) of the beta_j proposals for these log-scales
        (:func:`multilevel.glmsweep.beta_step_sizes`), kept for the last ``log_scale`` array seen:
        after warm-up it is the same array at every sweep, and its m cosines and sines need not be
        taken again. The array is held, so its identity cannot be reused by another."""
        cache = self._step_sizes
        if cache and cache[0] is log_scale:
            return cache[1], cache[2]
        drift, noise = beta_step_sizes(log_scale, PHI_MAX, KAPPA, self.proposal == "laplace")
        cache[:] = [log_scale, drift, noise]
        return drift, noise

    # -- random inputs of a sweep -------------------------------------------------------
    def draw_inputs(self, rng: np.random.Generator, n_partial: int) -> GLMSweepInputs:
        """All random numbers of one sweep with ``n_partial`` partially non-centred theta and Sigma
        moves, in three Generator calls."""
        m, p = self._shape
        a, b, c, d = self._cuts
        q, v = self._free_index.shape[0], p * (p + 1) // 2
        normals = rng.standard_normal(d + n_partial * (q + v))
        k = self.alpha_steps
        log_u = np.log(rng.uniform(size=m + k + 2 * n_partial))
        gammas = rng.standard_gamma(self._gamma_shapes)
        e = d + n_partial * q
        return GLMSweepInputs(normals[:a].reshape(m, p), log_u[:m], normals[a:b].reshape(k, -1), log_u[m:m + k],
                              normals[b:c], normals[d:e].reshape(n_partial, q), log_u[m + k:m + k + n_partial], gammas,
                              normals[c:d], normals[e:].reshape(n_partial, v), log_u[m + k + n_partial:])

    # -- the kernel -----------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> GLMState:
        """Start near the per-group fits (jittered), theta and alpha from their priors' means
        plus noise, Sigma at its prior scale."""
        pr = self.priors
        m, p = self.data.starts.shape[0] - 1, self.data.X.shape[1]
        theta = np.zeros(p)
        if pr.mu0.shape[0]:
            theta[self.theta_free] = rng.multivariate_normal(pr.mu0, 0.1 * pr.Lambda0)
        r = self.data.Z.shape[1]
        alpha = pr.alpha_mean + (self._alpha_chol0 @ rng.standard_normal(r) if r else 0.0)
        denom = pr.eta0 - p - 1
        Sigma = pr.S0 / denom if denom > 0 else pr.S0.copy()
        Sigma_inv = np.linalg.inv(Sigma)
        start = self.b_start if self.b_start is not None else np.tile(theta, (m, 1))
        sd = np.sqrt(np.diag(Sigma))
        beta = start + 0.1 * sd * rng.standard_normal((m, p))
        info = self.information(beta, alpha)
        ll, grad = self.loglik_grad(beta, alpha)
        n_scale = m if self.proposal == "laplace" else 1
        init_scale = np.log(1.0) if self.proposal == "laplace" else np.log(0.5)
        return GLMState(beta, alpha, theta, Sigma, Sigma_inv, ll, grad,
                        np.zeros(m, dtype=bool), 0.0, np.full(n_scale, init_scale), info,
                        0.0, self.alpha_proposal_chol(info, Sigma_inv),
                        float(np.log(2.38 / np.sqrt(max(int(self.theta_free.sum()), 1)))),
                        self.theta_proposal_chol(info, Sigma_inv), False, np.linalg.cholesky(Sigma),
                        float(np.log(0.5 / np.sqrt(p * (p + 1) / 2))), False, np.ones(p * (p + 1) // 2),
                        np.zeros(p * (p + 1) // 2), np.zeros(p * (p + 1) // 2), 0,
                        True if self.interweave is None else bool(self.interweave),
                        *self._reference(info, beta, alpha, grad),
                        self.partial_steps or 1)

    def step(self, state: GLMState, rng: np.random.Generator) -> GLMState:
        """One sweep with the proposal scales and information held fixed: one compiled call
        (:func:`multilevel.glmsweep.glm_sweep`); a precision it had to jitter is warned about, one
        that failed raises FloatingPointError (:func:`multilevel.distributions.check_factorisations`)."""
        u = self.draw_inputs(rng, state.n_partial_steps if state.interweave else 0)
        d, pr = self.data, self.priors
        out = glm_sweep(d.code, d.X, d.Z, d.offset, d.y, d.n, d.starts,
                        state.beta, state.alpha, state.theta, state.Sigma, state.Sigma_inv, state.ll, state.grad,
                        state.info, *self.beta_step_sizes(state.log_scale), float(np.exp(state.log_scale_alpha)),
                        state.alpha_chol,
                        float(np.exp(state.log_scale_theta)), state.theta_chol, state.R,
                        float(np.exp(state.log_step_Sigma)), state.v_scale,
                        self.proposal == "laplace", state.interweave, self._free_index, self._alpha_prec,
                        pr.alpha_mean, self._theta_prec, self._theta_shift, pr.mu0, pr.S0, float(pr.eta0),
                        *self.group_level, state.h_ref, state.alpha_ref, u.z_beta, u.u_beta, u.z_alpha, u.u_alpha,
                        u.z_theta, u.z_theta_nc, u.u_theta, u.gammas,
                        u.iw_normals, u.z_Sigma, u.u_Sigma)
        (beta, alpha, theta, Sigma, Sigma_inv, ll, grad, accept, accept_alpha, accept_theta, accept_Sigma, report,
         level) = out
        if level:
            check_factorisations(report, GLM_FACTORISATIONS)
        return state._replace(beta=beta, alpha=alpha, theta=theta, Sigma=Sigma, Sigma_inv=Sigma_inv, ll=ll, grad=grad,
                              accept_beta=accept, accept_alpha=float(accept_alpha), accept_theta=float(accept_theta),
                              accept_Sigma=float(accept_Sigma))

    def warmup_step(self, state: GLMState, rng: np.random.Generator, i: int, n_warmup: int) -> GLMState:
        """A sweep, then adaptation: log-scales move towards the target acceptance rate with
        step (i + 1)^-0.6; the Fisher information H_j (and the proposals built on it) and
        Sigma's reference factor R are re-evaluated at the current state at a quarter and a
        half of the warm-up; at three quarters the non-centred Sigma proposal takes
        per-coordinate scales from the spread of Sigma's coordinates over the third quarter
        (R fixed meanwhile), its step size reset to 2.38 / sqrt(dim)."""
        state = self.step(state, rng)
        gain = (i + 1.0) ** -0.6
        p = state.beta.shape[1]
        target = BETA_TARGET if self.proposal == "laplace" else target_acceptance(p)
        if self.proposal == "laplace":
            log_scale = state.log_scale + gain * (state.accept_beta - target)
        else:
            log_scale = state.log_scale + gain * (state.accept_beta.mean() - target)
        r = state.alpha.shape[0]
        log_scale_alpha = state.log_scale_alpha + (gain * (float(state.accept_alpha) - LANGEVIN_TARGET) if r else 0.0)
        q = int(self.theta_free.sum())
        log_scale_theta = state.log_scale_theta + (gain * (float(state.accept_theta) - target_acceptance(q)) if q else 0.0)
        log_step_Sigma = state.log_step_Sigma + gain * (float(state.accept_Sigma) - target_acceptance(p * (p + 1) // 2))
        info, alpha_chol, theta_chol, R = state.info, state.alpha_chol, state.theta_chol, state.R
        h_ref, alpha_ref, n_partial_steps = state.h_ref, state.alpha_ref, state.n_partial_steps
        v_scale, v_sum, v_sq, n_v = state.v_scale, state.v_sum, state.v_sq, state.n_v
        half, three_quarters = max(n_warmup // 2, 1), max(3 * n_warmup // 4, 1)
        interweave = state.interweave
        if interweave and half < i + 1 <= three_quarters and n_warmup >= 8:
            v = sigma_coordinates(state.Sigma, R)
            v_sum, v_sq, n_v = v_sum + v, v_sq + v * v, n_v + 1
            if i + 1 == three_quarters:
                var = v_sq / n_v - (v_sum / n_v) ** 2
                if np.all(np.isfinite(var)) and np.all(var > 0):
                    v_scale = np.sqrt(var)
                    log_step_Sigma = float(np.log(2.38 / np.sqrt(v.shape[0])))
        if i + 1 in (max(n_warmup // 4, 1), half):
            info = self.information(state.beta, state.alpha)
            alpha_chol = self.alpha_proposal_chol(info, state.Sigma_inv)
            theta_chol = self.theta_proposal_chol(info, state.Sigma_inv)
            R = np.linalg.cholesky(state.Sigma)
            h_ref, alpha_ref = self._reference(info, state.beta, state.alpha, state.grad)
            if i + 1 == half and (self.interweave is None or self.partial_steps is None):
                f = weak_information_share(state.Sigma, info[:, :p, :p])
                if self.interweave is None:
                    interweave = self.choose_interweave(f)
                if self.partial_steps is None:
                    n_partial_steps = self.choose_partial_steps(f)
        top = np.log(PHI_MAX) if self.proposal == "laplace" else 5.0
        return state._replace(interweave=interweave, log_scale=np.clip(log_scale, -10.0, top),
                              log_scale_alpha=float(np.clip(log_scale_alpha, -10.0, 5.0)),
                              log_scale_theta=float(np.clip(log_scale_theta, -10.0, 5.0)),
                              log_step_Sigma=float(np.clip(log_step_Sigma, -10.0, 3.0)),
                              info=info, alpha_chol=alpha_chol, theta_chol=theta_chol, R=R, v_scale=v_scale,
                              v_sum=v_sum, v_sq=v_sq, n_v=n_v, h_ref=h_ref, alpha_ref=alpha_ref,
                              n_partial_steps=n_partial_steps)

    def choose_interweave(self, f: float) -> bool:
        """Whether the partially non-centred moves pay, from f, the share of Sigma's variance the
        groups leave in their effects (:func:`multilevel.distributions.weak_information_share`,
        H_j the Fisher information of beta_j, at half of warm-up): centred Gibbs moves Sigma at a
        rate near 1 - (1 - f)^2, so the moves pay when f exceeds ``INTERWEAVE_SHARE``; on small data
        (at most ``SMALL_DATA_ROWS`` rows, where a pass over the rows costs less than a sweep's
        fixed cost) already when f exceeds ``INTERWEAVE_SHARE_SMALL_DATA``."""
        small = self.data.y.shape[0] <= SMALL_DATA_ROWS
        return f > (INTERWEAVE_SHARE_SMALL_DATA if small else INTERWEAVE_SHARE)

    def choose_partial_steps(self, f: float) -> int:
        """Partially non-centred theta and Sigma moves per sweep (each): ceil(``MAX_PARTIAL_STEPS`` f),
        at least 1, f as in :meth:`choose_interweave` (each move is a pass over the rows)."""
        return int(np.clip(np.ceil(MAX_PARTIAL_STEPS * f), 1, MAX_PARTIAL_STEPS))

    def record(self, state: GLMState) -> dict[str, np.ndarray]:
        return {
            "theta": state.theta,
            "Sigma": state.Sigma,
            "beta": state.beta,
            "alpha": state.alpha,
            "accept_beta": state.accept_beta,
            "accept_alpha": np.float64(state.accept_alpha),
            "accept_theta": np.float64(state.accept_theta),
            "accept_Sigma": np.float64(state.accept_Sigma),
            "loglik": np.float64(state.ll.sum()),
        }
