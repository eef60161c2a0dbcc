r"""Reference implementations of the package's compiled sweeps, move by move in NumPy.

The package holds one copy of each sweep, compiled with numba: the collapsed Gaussian
kernel's :func:`multilevel.linalg.collapsed_sweep` and the GLM kernel's
:func:`multilevel.glmsweep.glm_sweep`. The functions here make the same moves from the same
random inputs (the kernels' ``draw_inputs``), written from the math of the samplers' module
docstrings (:mod:`multilevel.samplers.collapsed`, :mod:`multilevel.samplers.metropolis`) with
NumPy's batched linear algebra, so that

* tests compare them with the compiled sweeps (``test_collapsed_sweep.py``,
  ``test_glm_sweep.py``): same state to rounding;
* a changed kernel can be run through them: :func:`glm_sweep_reference` takes the GLM
  log-likelihood from the kernel's ``loglik_grad`` and its beta_j move as an argument, which
  the compiled sweep cannot (``test_glm_sbc.py`` tempers the likelihood; ``benchmarks/glm.py``
  repeats the beta_j move).

They take the kernel (its data, priors and settings), the state and the random inputs, and
return the new state. They cover the positive definite path only: a precision matrix that is
not positive definite raises :class:`numpy.linalg.LinAlgError` here, where the compiled sweeps
retry it with jitter (tested apart). The only compiled code they call is the kernel's
log-likelihood and the proposal's step sizes (both the model's definition, not the sweep).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from multilevel.samplers.collapsed import CollapsedGibbs, CollapsedState, SweepInputs
from multilevel.samplers.metropolis import GLMMetropolis, GLMState, GLMSweepInputs
from multilevel.suffstats import GaussianStats, residual_sum_of_squares

# -- linear algebra shared by both sweeps ------------------------------------------------------


def mvn_draw(P: np.ndarray, b: np.ndarray, z: np.ndarray) -> np.ndarray:
    """x ~ MVN(P^-1 b, P^-1) from standard normals z: x = L'^-1 (L^-1 b + z), P = L L'.
    P (..., p, p), b and z (..., p)."""
    L = np.linalg.cholesky(P)
    w = np.linalg.solve(L, b[..., None]) + z[..., None]
    return np.linalg.solve(np.swapaxes(L, -1, -2), w)[..., 0]


def sigma_coordinates(Sigma: np.ndarray, R: np.ndarray) -> np.ndarray:
    """v = (log C_kk, C_kl), the lower triangle row by row, of C = R^-1 chol(Sigma)."""
    C = np.linalg.solve(R, np.linalg.cholesky(Sigma))
    rows, cols = np.tril_indices(R.shape[0])
    v = C[rows, cols]
    v[rows == cols] = np.log(v[rows == cols])
    return v


def sigma_from_coordinates(v: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Inverse of :func:`sigma_coordinates`: (Sigma = L L', Sigma^-1, log det Sigma, log Jacobian
    sum_k (p - k + 1) log C_kk, k counted from 0) with L = R C."""
    p = R.shape[0]
    rows, cols = np.tril_indices(p)
    diagonal = rows == cols
    C = np.zeros((p, p))
    C[rows, cols] = v
    C[rows[diagonal], cols[diagonal]] = np.exp(v[diagonal])
    L = R @ C
    L_inv = np.linalg.inv(L)
    log_jac = float(np.sum((p - rows[diagonal] + 1) * v[diagonal]))
    return L @ L.T, L_inv.T @ L_inv, 2.0 * float(np.sum(np.log(np.abs(np.diag(L))))), log_jac


def inverse_wishart_bartlett(scale: np.ndarray, chisq: np.ndarray, normals: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(Sigma, Sigma^-1) of an inverse-Wishart draw with ``scale`` = U U' from the Bartlett
    factor A of a Wishart(df, I) draw (A_kk = sqrt(chisq_k), the lower entries ``normals`` row
    by row): Sigma^-1 = K K' with K = U'^-1 A, Sigma = T T' with T = U A'^-1."""
    p = scale.shape[0]
    A = np.diag(np.sqrt(chisq))
    A[np.tril_indices(p, -1)] = normals
    U = np.linalg.cholesky(scale)
    K = np.linalg.solve(U.T, A)
    T = U @ np.linalg.inv(A).T
    return T @ T.T, K @ K.T


def log_prior_Sigma(S0: np.ndarray, eta0: float, Sigma_inv: np.ndarray, logdet: float) -> float:
    """log inverse-Wishart(eta0, S0) density of Sigma, up to a constant."""
    p = S0.shape[0]
    return -0.5 * (eta0 + p + 1) * logdet - 0.5 * float(np.sum(S0 * Sigma_inv))


def mvn_logpdf_kernel(beta: np.ndarray, theta: np.ndarray, Sigma_inv: np.ndarray) -> np.ndarray:
    """-0.5 (beta_j - theta)' Sigma^-1 (beta_j - theta) for every group (the part that varies)."""
    d = beta - theta
    return -0.5 * np.einsum("jk,kl,jl->j", d, Sigma_inv, d)


def _inverse(A: np.ndarray) -> np.ndarray:
    """A^-1, also of a 0 x 0 matrix."""
    return np.linalg.inv(A) if A.shape[0] else np.zeros((0, 0))


# -- the collapsed Gaussian kernel --------------------------------------------------------------


def residual_cross(stats: GaussianStats, theta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """U_j = X_j'(y_j - X_j theta - Z_j alpha) for all groups."""
    return stats.Xty - stats.XtX @ theta - stats.XtZ @ alpha


def collapsed_log_target(kernel: CollapsedGibbs, v: np.ndarray, R: np.ndarray, U: np.ndarray, sigma2: float
                         ) -> tuple[float, np.ndarray, np.ndarray]:
    """(log density, Sigma, Sigma^-1) of Sigma = R C C' R' at coordinates v with the beta_j
    integrated out: sum_j [-log det Sigma - log det P_j + U_j' P_j^-1 U_j / sigma2^2] / 2,
    P_j = Sigma^-1 + X_j'X_j / sigma2, plus the inverse-Wishart(eta0, S0) prior and the
    coordinates' Jacobian; -inf where some P_j is not positive definite."""
    pr = kernel.priors
    Sigma, Sigma_inv, logdet, log_jac = sigma_from_coordinates(v, R)
    P = Sigma_inv + kernel.stats.XtX / sigma2
    try:
        L = np.linalg.cholesky(P)
    except np.linalg.LinAlgError:
        return -np.inf, Sigma, Sigma_inv
    w = np.linalg.solve(L, U[:, :, None])[:, :, 0]
    log_det_P = 2.0 * float(np.sum(np.log(np.diagonal(L, axis1=1, axis2=2))))
    value = -0.5 * (U.shape[0] * logdet + log_det_P) + 0.5 * float(np.sum(w * w)) / sigma2 ** 2
    return value + log_prior_Sigma(pr.S0, pr.eta0, Sigma_inv, logdet) + log_jac, Sigma, Sigma_inv


def move_Sigma(kernel: CollapsedGibbs, state: CollapsedState, u: SweepInputs) -> tuple[np.ndarray, np.ndarray, int]:
    """The sweep's random-walk Metropolis steps v' = v + step * v_scale * z on Sigma's
    coordinates (one per row z of ``u.mh_normals``), beta_j integrated out, accepted when
    log u < log ratio; returns (Sigma, Sigma^-1, number accepted)."""
    sigma2 = float(state.sigma2)
    U = residual_cross(kernel.stats, state.theta, state.alpha)
    v = sigma_coordinates(state.Sigma, state.R)
    current, Sigma, Sigma_inv = collapsed_log_target(kernel, v, state.R, U, sigma2)
    accepted = 0
    for z, log_u in zip(u.mh_normals, u.log_u):
        proposal = v + np.exp(state.log_step) * state.v_scale * z
        value, S_new, Si_new = collapsed_log_target(kernel, proposal, state.R, U, sigma2)
        if log_u < value - current:
            v, current, Sigma, Sigma_inv = proposal, value, S_new, Si_new
            accepted += 1
    return Sigma, Sigma_inv, accepted


def collapsed_information(stats: GaussianStats, Sigma_inv: np.ndarray, sigma2: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sums over groups of X'V^-1X, X'V^-1y, X'V^-1Z, Z'V^-1Z - Z'Z / sigma2 and
    Z'V^-1y - Z'y / sigma2 for V_j = sigma2 I + X_j Sigma X_j', through P_j = Sigma^-1 + X_j'X_j / sigma2
    (Woodbury: V_j^-1 = I / sigma2 - X_j P_j^-1 X_j' / sigma2^2)."""
    P = Sigma_inv + stats.XtX / sigma2
    m = P.shape[0]
    P_inv_S = np.linalg.solve(P, np.broadcast_to(Sigma_inv, P.shape))
    P_inv_y = np.linalg.solve(P, stats.Xty[:, :, None])[:, :, 0]
    P_inv_Z = np.linalg.solve(P, stats.XtZ) if stats.XtZ.shape[2] else stats.XtZ
    XVX = m * Sigma_inv - Sigma_inv @ P_inv_S.sum(axis=0)
    XVy = Sigma_inv @ P_inv_y.sum(axis=0) / sigma2
    XVZ = Sigma_inv @ P_inv_Z.sum(axis=0) / sigma2
    ZVZ = -np.einsum("jkc,jkd->cd", stats.XtZ, P_inv_Z) / sigma2 ** 2
    ZVy = -np.einsum("jkc,jk->c", stats.XtZ, P_inv_y) / sigma2 ** 2
    return XVX, XVy, XVZ, ZVZ, ZVy


def collapsed_theta_alpha(kernel: CollapsedGibbs, Sigma_inv: np.ndarray, sigma2: float, z: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(theta_f, alpha) | Sigma, sigma2, y with the beta_j integrated out: Gaussian with precision
    prior + the collapsed information (Z'Z / sigma2 added) and shift prior + the collapsed score,
    from normals z; returns (theta, alpha)."""
    st, pr, free = kernel.stats, kernel.priors, kernel.theta_free
    p, r, q = Sigma_inv.shape[0], st.ZtZ.shape[0], int(free.sum())
    XVX, XVy, XVZ, ZVZ, ZVy = collapsed_information(st, Sigma_inv, sigma2)
    info = np.block([[XVX[np.ix_(free, free)], XVZ[free]], [XVZ[free].T, ZVZ + st.ZtZ / sigma2]])
    score = np.concatenate([XVy[free], ZVy + st.Zty / sigma2])
    prior_prec = np.zeros((q + r, q + r))
    prior_prec[:q, :q], prior_prec[q:, q:] = _inverse(pr.Lambda0), _inverse(pr.alpha_cov)
    prior_shift = prior_prec @ np.concatenate([pr.mu0, pr.alpha_mean])
    draw = mvn_draw(prior_prec + 0.5 * (info + info.T), prior_shift + score, z)
    theta = np.zeros(p)
    theta[free] = draw[:q]
    return theta, draw[q:]


def collapsed_sweep_reference(kernel: CollapsedGibbs, state: CollapsedState, u: SweepInputs
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float, int]:
    """The sweep of :func:`multilevel.linalg.collapsed_sweep` from the same random inputs: Sigma
    (collapsed Metropolis), (theta_f, alpha) collapsed, beta_j ~ MVN(P_j^-1 b_j, P_j^-1) with
    b_j = Sigma^-1 theta + X_j'(y_j - Z_j alpha) / sigma2, Sigma ~ inverse-Wishart(eta0 + m,
    S0 + sum_j (beta_j - theta)(beta_j - theta)'), sigma2 = (nu0 sigma0_sq / 2 + SSR / 2) / Gamma.
    Returns (beta, alpha, theta, Sigma, Sigma^-1, sigma2, SSR, Sigma steps accepted)."""
    pr, st = kernel.priors, kernel.stats
    sigma2 = float(state.sigma2)
    _, Sigma_inv, accepted = move_Sigma(kernel, state, u)
    theta, alpha = collapsed_theta_alpha(kernel, Sigma_inv, sigma2, u.ta_normals)
    P = Sigma_inv + st.XtX / sigma2
    rhs = Sigma_inv @ theta + (st.Xty - st.XtZ @ alpha) / sigma2
    beta = mvn_draw(P, rhs, u.beta_normals)
    dev = beta - theta
    Sigma, Sigma_inv = inverse_wishart_bartlett(pr.S0 + dev.T @ dev, 2.0 * u.gammas[:-1], u.iw_normals)
    ssr = residual_sum_of_squares(st, beta, alpha)
    sigma2 = (0.5 * pr.nu0 * pr.sigma0_sq + 0.5 * ssr) / u.gammas[-1]
    return beta, alpha, theta, Sigma, Sigma_inv, sigma2, ssr, accepted


# -- the GLM kernel ------------------------------------------------------------------------------

#: a beta_j move: (kernel, state, normals z (m, p), log uniforms (m,)) -> (beta, ll, grad, accepted)
BetaMove = Callable[[GLMMetropolis, GLMState, np.ndarray, np.ndarray],
                    tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def glm_inputs(kernel: GLMMetropolis, state: GLMState, rng: np.random.Generator) -> GLMSweepInputs:
    """The random inputs of the sweep ``kernel.step`` makes from ``rng`` at ``state``."""
    return kernel.draw_inputs(rng, state.n_partial_steps if state.interweave else 0)


def update_beta(kernel: GLMMetropolis, state: GLMState, z: np.ndarray, log_u: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All groups' Metropolis(-Hastings) steps at once. Laplace proposal:
    beta*_j = beta_j + a_j P_j^-1 g_j + b_j L_j'^-1 z_j (P_j = Sigma^-1 + H_j = L_j L_j', g_j the
    gradient of the log conditional density, (a_j, b_j) the kernel's step sizes) with the reverse
    proposal's density in the ratio; textbook: beta*_j = beta_j + s chol(Sigma) z_j.
    Returns (beta, ll, grad, accepted)."""
    p = state.beta.shape[1]
    if kernel.proposal == "textbook":
        proposal = state.beta + np.exp(state.log_scale[0]) * (z @ np.linalg.cholesky(state.Sigma).T)
        ll_new, grad_new = kernel.loglik_grad(proposal, state.alpha)
        log_ratio = (ll_new - state.ll + mvn_logpdf_kernel(proposal, state.theta, state.Sigma_inv)
                     - mvn_logpdf_kernel(state.beta, state.theta, state.Sigma_inv))
    else:
        drift, noise = kernel.beta_step_sizes(state.log_scale)
        a, b = drift[:, None], noise[:, None]
        P = state.Sigma_inv + state.info[:, :p, :p]
        g = state.grad[:, :p] - (state.beta - state.theta) @ state.Sigma_inv
        proposal = state.beta + mvn_draw(P, a * g, b * z)
        ll_new, grad_new = kernel.loglik_grad(proposal, state.alpha)
        g_new = grad_new[:, :p] - (proposal - state.theta) @ state.Sigma_inv
        back = state.beta - proposal - a * np.linalg.solve(P, g_new[:, :, None])[:, :, 0]
        log_q_back = -0.5 * np.einsum("jk,jkl,jl->j", back, P, back) / noise ** 2
        log_q_fwd = -0.5 * np.sum(z * z, axis=1)
        log_ratio = (ll_new - state.ll + mvn_logpdf_kernel(proposal, state.theta, state.Sigma_inv)
                     - mvn_logpdf_kernel(state.beta, state.theta, state.Sigma_inv) + log_q_back - log_q_fwd)
    accept = log_u < log_ratio  # NaN or -inf never accept
    return (np.where(accept[:, None], proposal, state.beta), np.where(accept, ll_new, state.ll),
            np.where(accept[:, None], grad_new, state.grad), accept)


def alpha_shift(state: GLMState) -> np.ndarray:
    """M_j = (Sigma^-1 + H_j)^-1 G_j (m, p, r), the shift of beta_j's conditional mode per unit of alpha."""
    p = state.beta.shape[1]
    return np.linalg.solve(state.Sigma_inv + state.info[:, :p, :p], state.info[:, :p, p:])


def joint_gradient(kernel: GLMMetropolis, state: GLMState, M: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
                   theta: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Gradient in delta, at delta = 0, of the log density along the joint move
    (alpha + delta, beta_j - M_j delta, theta_f - mean_j(M_j delta)_f)."""
    pr, free = kernel.priors, kernel.theta_free
    p = beta.shape[1]
    Mbar = M.mean(axis=0)  # (p, r)
    g = grad[:, p:].sum(axis=0) - np.einsum("jkr,jk->r", M, grad[:, :p])
    g -= _inverse(pr.alpha_cov) @ (alpha - pr.alpha_mean)
    dev = (beta - theta) @ state.Sigma_inv  # (m, p)
    g += np.einsum("jkr,jk->r", M, dev) - np.where(free[:, None], Mbar, 0.0).T @ dev.sum(axis=0)
    if free.any():
        g += Mbar[free].T @ (_inverse(pr.Lambda0) @ (theta[free] - pr.mu0))
    return g


def update_alpha(kernel: GLMMetropolis, state: GLMState, alpha: np.ndarray, theta: np.ndarray, beta: np.ndarray,
                 ll: np.ndarray, grad: np.ndarray, z: np.ndarray, log_u: float):
    """The joint (alpha, beta, theta) move as a Langevin step: delta = (s^2 / 2) C g + s L_C z (C =
    L_C L_C'), alpha + delta, beta_j - M_j delta, theta_f - mean_j(M_j delta)_f, with the reverse
    proposal's density in the ratio. Returns (alpha, beta, theta, ll, grad, accepted)."""
    if not alpha.shape[0]:
        return alpha, beta, theta, ll, grad, False
    pr, free = kernel.priors, kernel.theta_free
    alpha_prec, theta_prec = _inverse(pr.alpha_cov), _inverse(pr.Lambda0)
    s, L = np.exp(state.log_scale_alpha), state.alpha_chol
    C = L @ L.T
    M = alpha_shift(state)
    delta = 0.5 * s * s * (C @ joint_gradient(kernel, state, M, alpha, beta, theta, grad)) + s * (L @ z)
    alpha_new = alpha + delta
    shift = M @ delta
    beta_new = beta - shift
    theta_new = theta.copy()
    theta_new[free] -= shift.mean(axis=0)[free]
    ll_new, grad_new = kernel.loglik_grad(beta_new, alpha_new)
    g_new = joint_gradient(kernel, state, M, alpha_new, beta_new, theta_new, grad_new)
    back = np.linalg.solve(L, -delta - 0.5 * s * s * (C @ g_new)) / s  # whitened reverse step

    def log_prior(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> float:
        d, f = a - pr.alpha_mean, t[free] - pr.mu0
        return (-0.5 * float(d @ alpha_prec @ d) - 0.5 * float(f @ theta_prec @ f)
                + float(mvn_logpdf_kernel(b, t, state.Sigma_inv).sum()))

    log_ratio = (float(ll_new.sum() - ll.sum()) + log_prior(alpha_new, beta_new, theta_new)
                 - log_prior(alpha, beta, theta) - 0.5 * float(back @ back) + 0.5 * float(z @ z))
    if log_u < log_ratio:
        return alpha_new, beta_new, theta_new, ll_new, grad_new, True
    return alpha, beta, theta, ll, grad, False


def glm_theta_alpha(kernel: GLMMetropolis, beta: np.ndarray, alpha: np.ndarray, Sigma_inv: np.ndarray, z: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """theta and the group-level columns c of alpha by Gibbs in hierarchical centring:
    b_j = beta_j + W_j alpha_c, (theta_f, alpha_c) ~ MVN(P^-1 h, P^-1) with D_j = [E_f, W_j],
    P = diag(Lambda0^-1, A0^-1_cc) + sum_j D_j' Sigma^-1 D_j,
    h = (Lambda0^-1 mu0, [A0^-1 a0]_c - [A0^-1]_c,rest alpha_rest) + sum_j D_j' Sigma^-1 b_j;
    then beta_j = b_j - W_j alpha_c. Returns (theta, alpha, beta)."""
    pr = kernel.priors
    cols, terms, weight = kernel.group_level
    free = np.flatnonzero(kernel.theta_free)
    m, p = beta.shape
    q, k = free.shape[0], cols.shape[0]
    theta = np.zeros(p)
    if not q + k:
        return theta, alpha, beta
    D = np.zeros((m, p, q + k))
    D[:, free, np.arange(q)] = 1.0
    D[:, terms, q + np.arange(k)] = weight
    b = beta + np.einsum("jpc,c->jp", D[:, :, q:], alpha[cols])
    theta_prec, alpha_prec = _inverse(pr.Lambda0), _inverse(pr.alpha_cov)
    prior_prec = np.zeros((q + k, q + k))
    prior_prec[:q, :q], prior_prec[q:, q:] = theta_prec, alpha_prec[np.ix_(cols, cols)]
    rest = np.ones(alpha.shape[0], dtype=bool)
    rest[cols] = False
    h = np.concatenate([theta_prec @ pr.mu0,
                        (alpha_prec @ pr.alpha_mean)[cols] - alpha_prec[np.ix_(cols, rest)] @ alpha[rest]])
    P = prior_prec + np.einsum("jad,ab,jbe->de", D, Sigma_inv, D)
    x = mvn_draw(P, h + np.einsum("jad,ab,jb->d", D, Sigma_inv, b), z)
    theta[free] = x[:q]
    alpha = alpha.copy()
    alpha[cols] = x[q:]
    return theta, alpha, b - np.einsum("jpc,c->jp", D[:, :, q:], x[q:])


def laplace_factors(Sigma_inv: np.ndarray, info: np.ndarray, h: np.ndarray, theta: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """(L_j, mean_j, sum_j log det L_j): P_j = Sigma^-1 + H_j = L_j L_j' and
    mean_j = P_j^-1 (h_j + Sigma^-1 theta), the Laplace approximation of beta_j | y_j, theta, alpha, Sigma."""
    p = Sigma_inv.shape[0]
    P = Sigma_inv + info[:, :p, :p]
    L = np.linalg.cholesky(P)
    mean = np.linalg.solve(P, (h + Sigma_inv @ theta)[:, :, None])[:, :, 0]
    return L, mean, float(np.log(np.diagonal(L, axis1=1, axis2=2)).sum())


def likelihood_linear_term(state: GLMState, alpha: np.ndarray) -> np.ndarray:
    """h_j(alpha) = h_ref_j - G_j (alpha - alpha_ref), the linear coefficient in beta_j of the
    Gaussian approximation of group j's log-likelihood."""
    p = state.beta.shape[1]
    return state.h_ref - np.einsum("jac,c->ja", state.info[:, :p, p:], alpha - state.alpha_ref)


def update_theta_partial(kernel: GLMMetropolis, state: GLMState, beta: np.ndarray, alpha: np.ndarray,
                         theta: np.ndarray, ll: np.ndarray, grad: np.ndarray, z: np.ndarray, log_u: float):
    """The partially non-centred theta move: theta* = theta + delta (free components,
    delta = s L_t z), beta*_j = beta_j + (Sigma^-1 + H_j)^-1 Sigma^-1 delta.
    Returns (theta, beta, ll, grad, accepted)."""
    pr, free = kernel.priors, kernel.theta_free
    if not free.any():
        return theta, beta, ll, grad, False
    p = beta.shape[1]
    theta_prec = _inverse(pr.Lambda0)
    delta = np.zeros(p)
    delta[free] = np.exp(state.log_scale_theta) * (state.theta_chol @ z)
    theta_new = theta + delta
    Sd = np.broadcast_to(state.Sigma_inv @ delta, beta.shape)[:, :, None]
    beta_new = beta + np.linalg.solve(state.Sigma_inv + state.info[:, :p, :p], Sd)[:, :, 0]
    ll_new, grad_new = kernel.loglik_grad(beta_new, alpha)

    def log_prior(t: np.ndarray, b: np.ndarray) -> float:
        d = t[free] - pr.mu0
        return -0.5 * float(d @ theta_prec @ d) + float(mvn_logpdf_kernel(b, t, state.Sigma_inv).sum())

    log_ratio = float(ll_new.sum() - ll.sum()) + log_prior(theta_new, beta_new) - log_prior(theta, beta)
    if log_u < log_ratio:
        return theta_new, beta_new, ll_new, grad_new, True
    return theta, beta, ll, grad, False


def update_Sigma_partial(kernel: GLMMetropolis, state: GLMState, beta: np.ndarray, alpha: np.ndarray,
                         theta: np.ndarray, Sigma: np.ndarray, Sigma_inv: np.ndarray, ll: np.ndarray,
                         grad: np.ndarray, z: np.ndarray, log_u: np.ndarray):
    """The partially non-centred Sigma moves, one per row of ``z``: a random walk on Sigma's
    coordinates with beta*_j = mean*_j + L*_j'^-1 L_j' (beta_j - mean_j) and the Jacobian
    prod_j det L_j / det L*_j in the ratio. Returns (Sigma, Sigma_inv, beta, ll, grad, number accepted)."""
    pr, R, m = kernel.priors, state.R, beta.shape[0]
    h = likelihood_linear_term(state, alpha)
    v = sigma_coordinates(Sigma, R)
    _, _, logdet, log_jac = sigma_from_coordinates(v, R)
    L, mean, half_logdet = laplace_factors(Sigma_inv, state.info, h, theta)
    accepted = 0
    for z_k, log_u_k in zip(z, log_u):
        proposal = v + np.exp(state.log_step_Sigma) * state.v_scale * z_k
        S_new, Si_new, logdet_new, log_jac_new = sigma_from_coordinates(proposal, R)
        L_new, mean_new, half_logdet_new = laplace_factors(Si_new, state.info, h, theta)
        e = np.einsum("jca,jc->ja", L, beta - mean)
        beta_new = mean_new + np.linalg.solve(np.swapaxes(L_new, 1, 2), e[:, :, None])[:, :, 0]
        ll_new, grad_new = kernel.loglik_grad(beta_new, alpha)
        log_ratio = (float(ll_new.sum() - ll.sum())
                     + float(mvn_logpdf_kernel(beta_new, theta, Si_new).sum())
                     - float(mvn_logpdf_kernel(beta, theta, Sigma_inv).sum()) - 0.5 * m * (logdet_new - logdet)
                     + log_prior_Sigma(pr.S0, pr.eta0, Si_new, logdet_new) + log_jac_new
                     - log_prior_Sigma(pr.S0, pr.eta0, Sigma_inv, logdet) - log_jac + half_logdet - half_logdet_new)
        if log_u_k < log_ratio:
            accepted += 1
            v, Sigma, Sigma_inv, logdet, log_jac = proposal, S_new, Si_new, logdet_new, log_jac_new
            beta, ll, grad, L, mean, half_logdet = beta_new, ll_new, grad_new, L_new, mean_new, half_logdet_new
    return Sigma, Sigma_inv, beta, ll, grad, accepted


def glm_sweep_reference(kernel: GLMMetropolis, state: GLMState, u: GLMSweepInputs,
                        beta_move: BetaMove = update_beta) -> GLMState:
    """The sweep of :func:`multilevel.glmsweep.glm_sweep` from the same random inputs: beta_j
    (``beta_move``), the joint (alpha, beta, theta) moves, theta (with the group-level columns of
    alpha) by Gibbs, theta's non-centred moves, Sigma by inverse-Wishart, Sigma's non-centred
    moves (the non-centred moves when ``state.interweave``)."""
    beta, ll, grad, accept = beta_move(kernel, state, u.z_beta, u.u_beta)
    alpha, theta, accepted = state.alpha, state.theta, 0
    for z, log_u in zip(u.z_alpha, u.u_alpha):
        alpha, beta, theta, ll, grad, ok = update_alpha(kernel, state, alpha, theta, beta, ll, grad, z, log_u)
        accepted += ok
    accept_alpha = accepted / kernel.alpha_steps
    theta, alpha, beta = glm_theta_alpha(kernel, beta, alpha, state.Sigma_inv, u.z_theta)
    accept_theta, accept_Sigma = 0.0, 0.0
    if state.interweave and kernel.theta_free.any():
        for z, log_u in zip(u.z_theta_nc, u.u_theta):
            theta, beta, ll, grad, ok = update_theta_partial(kernel, state, beta, alpha, theta, ll, grad, z, log_u)
            accept_theta += ok / u.u_theta.shape[0]
    dev = beta - theta
    Sigma, Sigma_inv = inverse_wishart_bartlett(kernel.priors.S0 + dev.T @ dev, 2.0 * u.gammas, u.iw_normals)
    if state.interweave:
        Sigma, Sigma_inv, beta, ll, grad, accepted = update_Sigma_partial(
            kernel, state, beta, alpha, theta, Sigma, Sigma_inv, ll, grad, u.z_Sigma, u.u_Sigma)
        accept_Sigma = accepted / max(u.u_Sigma.shape[0], 1)
    return state._replace(beta=beta, alpha=alpha, theta=theta, Sigma=Sigma, Sigma_inv=Sigma_inv, ll=ll, grad=grad,
                          accept_beta=accept, accept_alpha=accept_alpha, accept_theta=accept_theta,
                          accept_Sigma=accept_Sigma)


@dataclass(frozen=True)
class ReferenceGLM(GLMMetropolis):
    """The GLM kernel with its sweep made by :func:`glm_sweep_reference` (the same draws as the
    package's compiled sweep, to rounding, slower): a subclass may change ``loglik_grad`` or
    ``beta_move``, which the compiled sweep would not see. Warm-up adaptation is the package's."""

    def beta_move(self, state: GLMState, z: np.ndarray, log_u: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The beta_j move of the sweep (:func:`update_beta`)."""
        return update_beta(self, state, z, log_u)

    def step(self, state: GLMState, rng: np.random.Generator) -> GLMState:
        return glm_sweep_reference(self, state, glm_inputs(self, state, rng),
                                   lambda kernel, s, z, log_u: kernel.beta_move(s, z, log_u))


def as_reference(kernel: GLMMetropolis, cls: type[ReferenceGLM] = ReferenceGLM, **changes) -> ReferenceGLM:
    """``kernel`` as a :class:`ReferenceGLM` (or subclass ``cls``), with the fields in ``changes``
    (the kernel's, or those ``cls`` adds) set."""
    return cls(**{**{f.name: getattr(kernel, f.name) for f in fields(kernel)}, **changes})
