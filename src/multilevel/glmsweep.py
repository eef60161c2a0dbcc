r"""One sweep of the hierarchical-GLM Metropolis-within-Gibbs kernel, compiled with numba.

The kernel, its moves and their acceptance ratios are described in
:mod:`multilevel.samplers.metropolis`; the same sweep move by move in NumPy is the tests'
reference (``tests/reference_sweeps.py``, compared with this one on the same random inputs).
Here the whole sweep is one call, so a sweep on a small data set costs
microseconds instead of the overhead of a hundred NumPy calls, and on a large one the
passes over the rows dominate: the linear predictor eta_i = offset_i + z_i' alpha + x_i' beta_j
is formed inside each pass (:func:`multilevel.glmlik.group_loglik_grad`), never stored.

Random numbers are drawn beforehand by the caller from the chain's NumPy Generator (see
``GLMMetropolis.draw_inputs``); Metropolis tests accept when log u < log ratio, so a NaN or
-inf ratio rejects. A precision matrix that is not positive definite is retried with a small
relative jitter on its diagonal (:func:`multilevel.linalg.cholesky_jittered`) and reported to
the caller, which warns, or raises when even the largest jitter fails.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .glmlik import group_loglik_grad
from .linalg import (AS_GIVEN, NOT_PD, _cholesky_inplace, _lower_solve_into, _upper_solve_into, cholesky_jittered,
                     copy_into, inverse_wishart_from_bartlett, noted, sigma_coordinates, sigma_from_coordinates,
                     wishart_scale)

#: the matrices :func:`glm_sweep` factorises, in the order of its report's rows, as (name, jitter
#: tried) (see :func:`multilevel.distributions.check_factorisations`)
GLM_FACTORISATIONS = (("the precision matrix Sigma^-1 + H_j of beta's proposal", True),
                      ("the precision matrix of theta", True), ("the inverse-Wishart scale matrix of Sigma", False))


@njit(cache=True, nogil=True, error_model="numpy")
def _lower_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """w = L^-1 b for lower-triangular L."""
    w = np.empty(b.shape[0])
    _lower_solve_into(L, b, w)
    return w


@njit(cache=True, nogil=True, error_model="numpy")
def _prior_kernel(beta: np.ndarray, theta: np.ndarray, Sigma_inv: np.ndarray) -> np.ndarray:
    """-0.5 (beta_j - theta)' Sigma^-1 (beta_j - theta) for every group."""
    m, p = beta.shape
    out = np.empty(m)
    d = np.empty(p)
    for j in range(m):
        for a in range(p):
            d[a] = beta[j, a] - theta[a]
        s = 0.0
        for a in range(p):
            t = 0.0
            for b in range(p):
                t += Sigma_inv[a, b] * d[b]
            s += d[a] * t
        out[j] = -0.5 * s
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _quad(d: np.ndarray, A: np.ndarray) -> float:
    """d' A d."""
    s = 0.0
    for a in range(d.shape[0]):
        t = 0.0
        for b in range(d.shape[0]):
            t += A[a, b] * d[b]
        s += d[a] * t
    return s


@njit(cache=True, nogil=True, error_model="numpy")
def beta_precision_factors(Sigma_inv: np.ndarray, info: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Cholesky factors of P_j = Sigma^-1 + H_j (H_j the leading p x p block of ``info[j]``),
    a P_j that is not positive definite jittered (:func:`multilevel.linalg.cholesky_jittered`);
    returns (L (m, p, p), the report of the m factorisations, :func:`multilevel.linalg.noted`)."""
    m = info.shape[0]
    p = Sigma_inv.shape[0]
    L = np.zeros((m, p, p))
    P = np.empty((p, p))
    report = AS_GIVEN
    for j in range(m):
        for a in range(p):
            for b in range(p):
                P[a, b] = Sigma_inv[a, b] + info[j, a, b]
        level = cholesky_jittered(P, L[j])
        report = noted(report, level, j)
        if level == NOT_PD:
            return L, report
        for a in range(p):
            for b in range(a + 1, p):
                L[j, a, b] = 0.0
    return L, report


@njit(cache=True, nogil=True, error_model="numpy")
def beta_step_sizes(log_scale: np.ndarray, phi_max: float, kappa: float, laplace: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(drift, noise) of the beta_j proposals. ``laplace``: group j's angle
    phi_j = min(exp(log_scale_j), phi_max), drift 1 - cos(phi_j) and noise kappa sin(phi_j), so that
    beta*_j = mean_j + cos(phi_j) (beta_j - mean_j) + kappa sin(phi_j) L_j'^-1 z_j with
    mean_j = beta_j + P_j^-1 g_j the Newton step. With kappa = 1 the move is exactly reversible
    for a Gaussian target N(mean_j, P_j^-1) at every angle (phi small: a Langevin step of size
    phi; pi / 2: an independent draw from the Laplace approximation; beyond: antithetic);
    kappa > 1 overdisperses it. Textbook: noise exp(log_scale[0]), no drift."""
    if not laplace:
        return np.zeros(1), np.exp(log_scale)
    phi = np.minimum(np.exp(log_scale), phi_max)
    return 1.0 - np.cos(phi), kappa * np.sin(phi)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _whitened_gradient(score: np.ndarray, at: np.ndarray, j: int, theta: np.ndarray, Sigma_inv: np.ndarray,
                       Lp: np.ndarray, w: np.ndarray) -> None:
    """w = L_j^-1 g, g = score_j[:p] - Sigma^-1 (at_j - theta) the gradient of group j's log
    conditional density at ``at[j]`` (indices, no views: this runs for every group twice a sweep)."""
    p = theta.shape[0]
    for k in range(p):
        t = score[j, k]
        for b in range(p):
            t -= Sigma_inv[k, b] * (at[j, b] - theta[b])
        for i in range(k):
            t -= Lp[j, k, i] * w[i]
        w[k] = t / Lp[j, k, k]


@njit(cache=True, nogil=True, error_model="numpy")
def beta_step(code, X, Z, offset, y, n, starts, beta, alpha, theta, Sigma, Sigma_inv, ll, grad, Lp, drift, noise,
              laplace, z, log_u):
    """The Metropolis(-Hastings) steps of all groups' beta_j at once (one pass over the rows).

    ``laplace``: beta*_j = beta_j + a_j V_j g_j + b_j L_j'^-1 z_j with V_j = P_j^-1 =
    (L_j L_j')^-1, g_j the gradient of the log conditional density at beta_j and (a_j, b_j) =
    (``drift[j]``, ``noise[j]``) from :func:`beta_step_sizes`. The reverse proposal's density
    needs |L_j' (beta_j - beta*_j - a_j V_j g*_j)|^2 / b_j^2, and
    L_j' (beta*_j - beta_j) = a_j L_j^-1 g_j + b_j z_j, so it is
    |a_j (L_j^-1 g_j + L_j^-1 g*_j) + b_j z_j|^2 / b_j^2: one triangular solve at the proposal.
    Otherwise the textbook random walk beta*_j = beta_j + s chol(Sigma) z_j, s = ``noise[0]``.
    Returns (beta, ll, grad, accepted).
    """
    m, p = beta.shape
    prop = np.empty((m, p))
    w = np.empty(p)  # work vector, reused for every group
    if laplace:
        forward = np.empty((m, p))  # L_j^-1 g_j at beta_j, for the reverse density
        for j in range(m):
            _whitened_gradient(grad, beta, j, theta, Sigma_inv, Lp, w)
            for a in range(p):
                forward[j, a] = w[a]
                w[a] = drift[j] * w[a] + noise[j] * z[j, a]
            _upper_solve_into(Lp[j], w, w)
            for a in range(p):
                prop[j, a] = beta[j, a] + w[a]
    else:
        C = Sigma.copy()
        _cholesky_inplace(C)
        for j in range(m):
            for a in range(p):
                t = 0.0
                for b in range(a + 1):
                    t += C[a, b] * z[j, b]
                prop[j, a] = beta[j, a] + noise[0] * t
    ll_new, grad_new = group_loglik_grad(code, X, Z, offset, alpha, y, n, starts, prop)
    log_ratio = ll_new - ll + _prior_kernel(prop, theta, Sigma_inv) - _prior_kernel(beta, theta, Sigma_inv)
    if laplace:
        for j in range(m):
            _whitened_gradient(grad_new, prop, j, theta, Sigma_inv, Lp, w)
            q_back = 0.0
            zz = 0.0
            for a in range(p):
                t = drift[j] * (forward[j, a] + w[a]) + noise[j] * z[j, a]
                q_back += t * t
                zz += z[j, a] * z[j, a]
            log_ratio[j] += -0.5 * q_back / (noise[j] * noise[j]) + 0.5 * zz
    accepted = np.zeros(m, dtype=np.bool_)
    beta = beta.copy()
    ll = ll.copy()
    grad = grad.copy()
    for j in range(m):
        if log_u[j] < log_ratio[j]:
            accepted[j] = True
            copy_into(beta[j], prop[j])
            ll[j] = ll_new[j]
            copy_into(grad[j], grad_new[j])
    return beta, ll, grad, accepted


@njit(cache=True, nogil=True, error_model="numpy")
def alpha_shift(Lp: np.ndarray, info: np.ndarray) -> np.ndarray:
    """M_j = P_j^-1 G_j (m, p, r), G_j = X_j'W_jZ_j the off-diagonal block of ``info[j]``."""
    m, p = Lp.shape[0], Lp.shape[1]
    r = info.shape[1] - p
    M = np.empty((m, p, r))
    w = np.empty(p)
    for j in range(m):
        for c in range(r):
            for a in range(p):
                w[a] = info[j, a, p + c]
            _lower_solve_into(Lp[j], w, w)
            _upper_solve_into(Lp[j], w, w)
            for a in range(p):
                M[j, a, c] = w[a]
    return M


@njit(cache=True, nogil=True, error_model="numpy")
def joint_gradient(M, alpha, beta, theta, grad, Sigma_inv, free, alpha_prec, alpha_mean, theta_prec, mu0):
    """Gradient in delta, at delta = 0, of the log density along the joint move
    (alpha + delta, beta_j - M_j delta, theta_f - mean_j(M_j delta)_f):
    sum_j [score_alpha_j - M_j' score_beta_j + M_j' Sigma^-1 (beta_j - theta)]
    - A0^-1 (alpha - a0) - Mbar_f' [sum_j Sigma^-1 (beta_j - theta)]_f + Mbar_f' Lambda0^-1 (theta_f - mu0)."""
    m, p, r = M.shape
    q = free.shape[0]
    g = np.zeros(r)
    dev = np.empty(p)
    dev_sum = np.zeros(p)
    Mbar = np.zeros((p, r))
    for j in range(m):
        for a in range(p):
            t = 0.0
            for b in range(p):
                t += Sigma_inv[a, b] * (beta[j, b] - theta[b])
            dev[a] = t - grad[j, a]  # Sigma^-1 (beta_j - theta) - score_beta_j
            dev_sum[a] += t
        for c in range(r):
            t = grad[j, p + c]
            for a in range(p):
                t += M[j, a, c] * dev[a]
                Mbar[a, c] += M[j, a, c] / m
            g[c] += t
    for c in range(r):
        t = 0.0
        for d in range(r):
            t += alpha_prec[c, d] * (alpha[d] - alpha_mean[d])
        g[c] -= t
        for k in range(q):
            g[c] -= Mbar[free[k], c] * dev_sum[free[k]]
    if q:
        f = np.empty(q)
        for k in range(q):
            f[k] = theta[free[k]] - mu0[k]
        for k in range(q):
            t = 0.0
            for l in range(q):
                t += theta_prec[k, l] * f[l]
            for c in range(r):
                g[c] += Mbar[free[k], c] * t
    return g


@njit(cache=True, nogil=True, error_model="numpy")
def _log_prior_joint(alpha, beta, theta, Sigma_inv, free, alpha_prec, alpha_mean, theta_prec, mu0) -> float:
    """log density of (alpha, theta_f) priors and beta_j | theta, Sigma, up to constants."""
    q = free.shape[0]
    f = np.empty(q)
    for k in range(q):
        f[k] = theta[free[k]] - mu0[k]
    return (-0.5 * _quad(alpha - alpha_mean, alpha_prec) - 0.5 * _quad(f, theta_prec)
            + np.sum(_prior_kernel(beta, theta, Sigma_inv)))


@njit(cache=True, nogil=True, error_model="numpy")
def alpha_step(code, X, Z, offset, y, n, starts, beta, alpha, theta, Sigma_inv, ll, grad, M, alpha_chol, scale,
               free, alpha_prec, alpha_mean, theta_prec, mu0, z, log_u):
    """The joint (alpha, beta, theta) Langevin move: delta = (s^2 / 2) C g + s L_C z,
    alpha + delta, beta_j - M_j delta, theta_f - mean_j(M_j delta)_f, with the reverse
    proposal's density in the ratio. Returns (alpha, beta, theta, ll, grad, accepted)."""
    m, p = beta.shape
    r = alpha.shape[0]
    q = free.shape[0]
    L = alpha_chol
    g = joint_gradient(M, alpha, beta, theta, grad, Sigma_inv, free, alpha_prec, alpha_mean, theta_prec, mu0)
    Lg = L.T @ g
    delta = 0.5 * scale * scale * (L @ Lg) + scale * (L @ z)
    alpha_new = alpha + delta
    beta_new = np.empty((m, p))
    mean_shift = np.zeros(p)
    for j in range(m):
        for a in range(p):
            t = 0.0
            for c in range(r):
                t += M[j, a, c] * delta[c]
            beta_new[j, a] = beta[j, a] - t
            mean_shift[a] += t / m
    theta_new = theta.copy()
    for k in range(q):
        theta_new[free[k]] -= mean_shift[free[k]]
    ll_new, grad_new = group_loglik_grad(code, X, Z, offset, alpha_new, y, n, starts, beta_new)
    g_new = joint_gradient(M, alpha_new, beta_new, theta_new, grad_new, Sigma_inv, free, alpha_prec, alpha_mean,
                           theta_prec, mu0)
    back = _lower_solve(L, -delta - 0.5 * scale * scale * (L @ (L.T @ g_new))) / scale
    log_ratio = (np.sum(ll_new) - np.sum(ll)
                 + _log_prior_joint(alpha_new, beta_new, theta_new, Sigma_inv, free, alpha_prec, alpha_mean,
                                    theta_prec, mu0)
                 - _log_prior_joint(alpha, beta, theta, Sigma_inv, free, alpha_prec, alpha_mean, theta_prec, mu0)
                 - 0.5 * np.sum(back * back) + 0.5 * np.sum(z * z))
    if log_u < log_ratio:
        return alpha_new, beta_new, theta_new, ll_new, grad_new, True
    return alpha, beta, theta, ll, grad, False


@njit(cache=True, nogil=True, error_model="numpy")
def theta_alpha_gibbs(beta, alpha, Sigma_inv, free, theta_prec, theta_shift, cols, terms, weight, alpha_prec,
                      alpha_mean, z):
    """(theta_f, alpha_c) | b, Sigma, the other alpha by Gibbs, in hierarchical centring: the
    group-level columns c of alpha (z_ic = w_jc x_i,t(c) in group j, see
    :func:`multilevel.samplers.metropolis.group_level_columns`) move into the group effects,
    b_j = beta_j + W_j alpha_c with W_j = sum_c w_jc e_t(c) e_c', so that
    b_j ~ MVN(theta + W_j alpha_c, Sigma) and the likelihood depends on b_j alone. With
    D_j = [E_f, W_j] (E_f the free coordinates of theta) the conditional is Gaussian with
    precision P = diag(Lambda0^-1, A0^-1_cc) + sum_j D_j' Sigma^-1 D_j and P mean =
    (Lambda0^-1 mu0, [A0^-1 a0]_c - [A0^-1]_c,rest alpha_rest) + sum_j D_j' Sigma^-1 b_j;
    draws mean + L'^-1 z (P = L L'), then beta_j = b_j - W_j alpha_c, which leaves every linear
    predictor as it was. Without group-level columns this is theta's Gibbs draw of the
    linear model. A P that is not positive definite is jittered
    (:func:`multilevel.linalg.cholesky_jittered`). Returns (theta, alpha, beta, level of the
    factorisation); at level ``NOT_PD`` the draw is not made."""
    m, p = beta.shape
    q = free.shape[0]
    k = cols.shape[0]
    d = q + k
    theta = np.zeros(p)
    if not d:
        return theta, alpha, beta, 0
    b = beta.copy()
    for j in range(m):
        for c in range(k):
            b[j, terms[c]] += weight[j, c] * alpha[cols[c]]
    total = np.zeros(p)  # sum_j b_j
    wsum = np.zeros(k)  # sum_j w_jc
    wb = np.zeros((k, p))  # sum_j w_jc b_j
    ww = np.zeros((k, k))  # sum_j w_jc w_je
    for j in range(m):
        for a in range(p):
            total[a] += b[j, a]
        for c in range(k):
            w = weight[j, c]
            wsum[c] += w
            for a in range(p):
                wb[c, a] += w * b[j, a]
            for e in range(k):
                ww[c, e] += w * weight[j, e]
    P = np.zeros((d, d))
    rhs = np.zeros(d)
    for u in range(q):
        for v in range(q):
            P[u, v] = theta_prec[u, v] + m * Sigma_inv[free[u], free[v]]
        rhs[u] = theta_shift[u]
        for a in range(p):
            rhs[u] += Sigma_inv[free[u], a] * total[a]
        for c in range(k):
            P[u, q + c] = wsum[c] * Sigma_inv[free[u], terms[c]]
            P[q + c, u] = P[u, q + c]
    is_col = np.zeros(alpha.shape[0], dtype=np.bool_)
    for c in range(k):
        is_col[cols[c]] = True
    for c in range(k):
        for e in range(k):
            P[q + c, q + e] = alpha_prec[cols[c], cols[e]] + ww[c, e] * Sigma_inv[terms[c], terms[e]]
        t = 0.0
        for l in range(alpha.shape[0]):
            t += alpha_prec[cols[c], l] * alpha_mean[l]
            if not is_col[l]:
                t -= alpha_prec[cols[c], l] * alpha[l]
        for a in range(p):
            t += Sigma_inv[terms[c], a] * wb[c, a]
        rhs[q + c] = t
    L = np.empty((d, d))
    level = cholesky_jittered(P, L)
    if level == NOT_PD:
        return theta, alpha, beta, level
    w = _lower_solve(L, rhs) + z
    x = np.empty(d)
    _upper_solve_into(L, w, x)
    for u in range(q):
        theta[free[u]] = x[u]
    alpha = alpha.copy()
    for c in range(k):
        alpha[cols[c]] = x[q + c]
    for j in range(m):
        for c in range(k):
            b[j, terms[c]] -= weight[j, c] * x[q + c]
    return theta, alpha, b, level


@njit(cache=True, nogil=True, error_model="numpy")
def theta_partial_step(code, X, Z, offset, y, n, starts, beta, alpha, theta, Sigma_inv, ll, grad, Lp, theta_chol,
                       scale, free, theta_prec, mu0, z, log_u):
    """theta* = theta + delta (free components, delta = s L_t z) in the partially non-centred
    parametrisation of :func:`Sigma_partial_step`: e_j = L_j' (beta_j - mean_j) held fixed, so
    beta*_j = beta_j + P_j^-1 Sigma^-1 delta (P_j = Sigma^-1 + H_j = L_j L_j', ``Lp``): each group
    effect follows theta by its shrinkage weight, fully where the group says little (the
    non-centred move), hardly where it says much. Unit Jacobian; ratio: likelihood x beta_j's
    prior x theta's prior. Returns (theta, beta, ll, grad, accepted)."""
    m, p = beta.shape
    q = free.shape[0]
    delta = np.zeros(p)
    for k in range(q):
        t = 0.0
        for l in range(k + 1):
            t += theta_chol[k, l] * z[l]
        delta[free[k]] = scale * t
    theta_new = theta + delta
    Sd = np.zeros(p)  # Sigma^-1 delta
    for a in range(p):
        for b in range(p):
            Sd[a] += Sigma_inv[a, b] * delta[b]
    beta_new = np.empty((m, p))
    w = np.empty(p)
    for j in range(m):
        _lower_solve_into(Lp[j], Sd, w)
        _upper_solve_into(Lp[j], w, w)
        for a in range(p):
            beta_new[j, a] = beta[j, a] + w[a]
    ll_new, grad_new = group_loglik_grad(code, X, Z, offset, alpha, y, n, starts, beta_new)
    f_new = np.empty(q)
    f_old = np.empty(q)
    for k in range(q):
        f_new[k] = theta_new[free[k]] - mu0[k]
        f_old[k] = theta[free[k]] - mu0[k]
    log_ratio = (np.sum(ll_new) - np.sum(ll)
                 + np.sum(_prior_kernel(beta_new, theta_new, Sigma_inv)) - np.sum(_prior_kernel(beta, theta, Sigma_inv))
                 - 0.5 * _quad(f_new, theta_prec) + 0.5 * _quad(f_old, theta_prec))
    if log_u < log_ratio:
        return theta_new, beta_new, ll_new, grad_new, True
    return theta, beta, ll, grad, False


@njit(cache=True, nogil=True, error_model="numpy")
def _log_prior_Sigma(Sigma_inv, logdet, S0, eta0) -> float:
    """log inverse-Wishart(eta0, S0) density of Sigma, up to a constant."""
    p = S0.shape[0]
    return -0.5 * (eta0 + p + 1) * logdet - 0.5 * np.sum(S0 * Sigma_inv)


@njit(cache=True, nogil=True, error_model="numpy")
def likelihood_linear_term(info, h_ref, alpha, alpha_ref):
    """h_j(alpha) = h_j - G_j (alpha - alpha_ref): the linear coefficient in beta_j of the
    Gaussian approximation -beta_j' H_j beta_j / 2 + beta_j' h_j(alpha) of group j's log-likelihood
    (G_j = X_j'W_jZ_j the off-diagonal block of ``info[j]``)."""
    m, p = h_ref.shape
    r = alpha.shape[0]
    h = h_ref.copy()
    for j in range(m):
        for a in range(p):
            t = 0.0
            for c in range(r):
                t += info[j, a, p + c] * (alpha[c] - alpha_ref[c])
            h[j, a] -= t
    return h


@njit(cache=True, nogil=True, error_model="numpy")
def _laplace_factors(Sigma_inv, info, h, theta, L, mean):
    """For every group, L_j = chol(Sigma^-1 + H_j) and mean_j = (Sigma^-1 + H_j)^-1 (h_j + Sigma^-1 theta),
    the Laplace approximation of beta_j | y_j, theta, alpha, Sigma; returns sum_j log det L_j, or NaN
    when some Sigma^-1 + H_j is not positive definite."""
    m, p = h.shape
    b = np.empty(p)
    logdet = 0.0
    for j in range(m):
        for a in range(p):
            t = h[j, a]
            for c in range(p):
                L[j, a, c] = Sigma_inv[a, c] + info[j, a, c]
                t += Sigma_inv[a, c] * theta[c]
            b[a] = t
        if not _cholesky_inplace(L[j]):
            return np.nan
        for a in range(p):
            for c in range(a + 1, p):
                L[j, a, c] = 0.0
            logdet += np.log(L[j, a, a])
        _lower_solve_into(L[j], b, b)
        _upper_solve_into(L[j], b, mean[j])
    return logdet


@njit(cache=True, nogil=True, error_model="numpy")
def Sigma_partial_steps(code, X, Z, offset, y, n, starts, beta, alpha, theta, Sigma, Sigma_inv, ll, grad, info, h,
                        R, step, v_scale, S0, eta0, z, log_u):
    """Random walks v + step * v_scale * z_k (one per row of ``z``) on Sigma's coordinates v
    (Sigma = R C C' R') in the partially non-centred parametrisation (Papaspiliopoulos,
    Roberts and Skold 2007) that the Laplace approximation N(mean_j, P_j^-1) of
    beta_j | y_j, theta, alpha, Sigma gives (P_j = Sigma^-1 + H_j = L_j L_j',
    mean_j = P_j^-1 (h_j + Sigma^-1 theta), see :func:`likelihood_linear_term`):
    e_j = L_j' (beta_j - mean_j) is held fixed, so beta*_j = mean*_j + L*_j'^-1 e_j. Where the
    approximation is exact the e_j are independent of Sigma and this is a move on Sigma with
    the beta_j integrated out; where groups say little (H_j -> 0) it is the non-centred move,
    where they say much (H_j -> inf) the centred one. The map is deterministic given (theta,
    alpha) and its own reverse with -z; the ratio is the joint density ratio x prior of Sigma
    x Jacobians (coordinates, and prod_j det L_j / det L*_j for the beta_j).
    Returns (Sigma, Sigma^-1, beta, ll, grad, number accepted)."""
    m, p = beta.shape
    L = np.empty((m, p, p))
    mean = np.empty((m, p))
    L_new = np.empty((m, p, p))
    mean_new = np.empty((m, p))
    beta_new = np.empty((m, p))
    e = np.empty(p)
    v = sigma_coordinates(Sigma, R)
    _, _, _, logdet, log_jac = sigma_from_coordinates(v, R)
    half_logdet = _laplace_factors(Sigma_inv, info, h, theta, L, mean)
    prior = np.sum(_prior_kernel(beta, theta, Sigma_inv))
    accepted = 0
    for k in range(z.shape[0]):
        if not np.isfinite(half_logdet):
            break
        proposal = v + step * v_scale * z[k]
        _, S_new, Si_new, logdet_new, log_jac_new = sigma_from_coordinates(proposal, R)
        half_logdet_new = _laplace_factors(Si_new, info, h, theta, L_new, mean_new)
        if not np.isfinite(half_logdet_new):
            continue
        for j in range(m):
            for a in range(p):  # e = L_j' (beta_j - mean_j)
                t = 0.0
                for c in range(a, p):
                    t += L[j, c, a] * (beta[j, c] - mean[j, c])
                e[a] = t
            _upper_solve_into(L_new[j], e, e)
            for a in range(p):
                beta_new[j, a] = mean_new[j, a] + e[a]
        ll_new, grad_new = group_loglik_grad(code, X, Z, offset, alpha, y, n, starts, beta_new)
        prior_new = np.sum(_prior_kernel(beta_new, theta, Si_new))
        log_ratio = (np.sum(ll_new) - np.sum(ll) + prior_new - prior - 0.5 * m * (logdet_new - logdet)
                     + _log_prior_Sigma(Si_new, logdet_new, S0, eta0) + log_jac_new
                     - _log_prior_Sigma(Sigma_inv, logdet, S0, eta0) - log_jac
                     + half_logdet - half_logdet_new)
        if log_u[k] < log_ratio:
            accepted += 1
            v, Sigma, Sigma_inv, logdet, log_jac = proposal, S_new, Si_new, logdet_new, log_jac_new
            beta, ll, grad, prior, half_logdet = beta_new.copy(), ll_new, grad_new, prior_new, half_logdet_new
            L, L_new = L_new, L
            mean, mean_new = mean_new, mean
    return Sigma, Sigma_inv, beta, ll, grad, accepted


@njit(cache=True, nogil=True, error_model="numpy")
def glm_sweep(code, X, Z, offset, y, n, starts,
              beta, alpha, theta, Sigma, Sigma_inv, ll, grad, info, drift, noise, scale_alpha, alpha_chol,
              scale_theta, theta_chol, R, step_Sigma, v_scale,
              laplace, interweave, free, alpha_prec, alpha_mean, theta_prec, theta_shift, mu0, S0, eta0,
              level_cols, level_terms, level_weight, h_ref, alpha_ref,
              z_beta, u_beta, z_alpha, u_alpha, z_theta, z_theta_nc, u_theta, gammas, iw_normals, z_Sigma, u_Sigma):
    """One sweep (see :mod:`multilevel.samplers.metropolis`): beta_j (all groups), the joint
    (alpha, beta, theta) move when there are fixed-only effects (one per row of ``z_alpha``), theta
    (with the group-level columns of alpha, ``level_cols``: :func:`theta_alpha_gibbs`) by Gibbs,
    then theta's non-centred moves (``interweave``), Sigma by inverse-Wishart (Bartlett,
    chi2(eta0 + m - k) = 2 ``gammas[k]``), then its non-centred move (``interweave``).

    A precision that is not positive definite (a group's Sigma^-1 + H_j, which shapes the
    proposals and moves of beta_j, alpha and theta, so that its jitter leaves them exact; theta's
    Gibbs precision) is jittered (:func:`multilevel.linalg.cholesky_jittered`).
    Returns (beta, alpha, theta, Sigma, Sigma^-1, ll, grad, accepted beta (m,), share of the
    alpha moves accepted, accepted theta and Sigma moves, report, level): report has one row
    (largest level, group, groups jittered) per matrix of ``GLM_FACTORISATIONS``, and level is
    the largest of its levels: 0 when every matrix was factorised as given. A row at level
    ``NOT_PD`` (for the inverse-Wishart scale: not positive definite, no jitter tried) ends the
    sweep there; the state returned is then incomplete.
    """
    m, p = beta.shape
    r = alpha.shape[0]
    Lp, beta_report = beta_precision_factors(Sigma_inv, info)
    if beta_report[0] == NOT_PD:
        return (beta, alpha, theta, Sigma, Sigma_inv, ll, grad, np.zeros(m, dtype=np.bool_), 0.0, 0.0, 0.0,
                (beta_report, AS_GIVEN, AS_GIVEN), NOT_PD)
    beta, ll, grad, acc_beta = beta_step(code, X, Z, offset, y, n, starts, beta, alpha, theta, Sigma, Sigma_inv, ll,
                                         grad, Lp, drift, noise, laplace, z_beta, u_beta)
    acc_alpha = 0.0
    if r:
        M = alpha_shift(Lp, info)
        for k in range(u_alpha.shape[0]):
            alpha, beta, theta, ll, grad, ok = alpha_step(code, X, Z, offset, y, n, starts, beta, alpha, theta,
                                                          Sigma_inv, ll, grad, M, alpha_chol, scale_alpha, free,
                                                          alpha_prec, alpha_mean, theta_prec, mu0, z_alpha[k],
                                                          u_alpha[k])
            acc_alpha += ok / u_alpha.shape[0]
    theta, alpha, beta, level = theta_alpha_gibbs(beta, alpha, Sigma_inv, free, theta_prec, theta_shift, level_cols,
                                                  level_terms, level_weight, alpha_prec, alpha_mean, z_theta)
    theta_report = noted(AS_GIVEN, level, -1)
    if level == NOT_PD:
        return (beta, alpha, theta, Sigma, Sigma_inv, ll, grad, acc_beta, acc_alpha, 0.0, 0.0,
                (beta_report, theta_report, AS_GIVEN), NOT_PD)
    acc_theta = 0.0
    if interweave and free.shape[0]:
        for k in range(u_theta.shape[0]):
            theta, beta, ll, grad, ok = theta_partial_step(code, X, Z, offset, y, n, starts, beta, alpha, theta,
                                                           Sigma_inv, ll, grad, Lp, theta_chol, scale_theta, free,
                                                           theta_prec, mu0, z_theta_nc[k], u_theta[k])
            acc_theta += ok / u_theta.shape[0]
    Sigma, Sigma_inv, ok = inverse_wishart_from_bartlett(wishart_scale(S0, beta, theta), 2.0 * gammas, iw_normals)
    if not ok:
        return (beta, alpha, theta, Sigma, Sigma_inv, ll, grad, acc_beta, acc_alpha, acc_theta, 0.0,
                (beta_report, theta_report, (NOT_PD, -1, 0)), NOT_PD)
    acc_Sigma = 0.0
    if interweave:
        h = likelihood_linear_term(info, h_ref, alpha, alpha_ref)
        Sigma, Sigma_inv, beta, ll, grad, n_acc = Sigma_partial_steps(code, X, Z, offset, y, n, starts, beta, alpha,
                                                                      theta, Sigma, Sigma_inv, ll, grad, info, h, R,
                                                                      step_Sigma, v_scale, S0, eta0, z_Sigma, u_Sigma)
        acc_Sigma = n_acc / max(u_Sigma.shape[0], 1)
    return (beta, alpha, theta, Sigma, Sigma_inv, ll, grad, acc_beta, acc_alpha, acc_theta, acc_Sigma,
            (beta_report, theta_report, AS_GIVEN), max(beta_report[0], theta_report[0]))
