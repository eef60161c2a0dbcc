"""Per-group GLM log-likelihoods and Fisher information, compiled with numba.

One fused pass over the rows (sorted by group) gives every group's log-likelihood at its
own coefficients, so the m Metropolis steps of a sweep cost one O(N p) pass. Constants
that do not depend on the coefficients (log y!, log binomial(n, y)) are left out: they
cancel in every acceptance ratio. Family codes: 0 Poisson (log link), 1 binomial and
Bernoulli (logit link).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def _softplus(x: float) -> float:
    if x > 0.0:
        return x + np.log1p(np.exp(-x))
    return np.log1p(np.exp(x))


def group_loglik(code: int, X: np.ndarray, offset: np.ndarray, y: np.ndarray, n: np.ndarray,
                 starts: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """ll_j = sum_{i in j} [y_i eta_i - b(eta_i)], eta_i = offset_i + x_i' beta_j, with
    b(eta) = exp(eta) (Poisson) or n_i log(1 + exp(eta)) (logit): the log-likelihood part of
    :func:`group_loglik_grad`. An overflowing exp gives -inf, which a Metropolis step
    rejects; it never gives NaN for finite inputs."""
    return group_loglik_grad(code, X, np.zeros((X.shape[0], 0)), offset, np.zeros(0), y, n, starts, beta)[0]


@njit(cache=True, nogil=True, error_model="numpy")
def group_information(code: int, X: np.ndarray, Z: np.ndarray, offset: np.ndarray, alpha: np.ndarray, n: np.ndarray,
                      starts: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Per-group Fisher information of (beta_j, alpha): D_j' W_j D_j with D = [X Z].

    Shape (m, p + r, p + r); w = mu (Poisson) or n q (1 - q) (logit), at
    eta = offset + z' alpha + x' beta_j.
    The blocks are H_j = X_j'W_jX_j, G_j = X_j'W_jZ_j and K_j = Z_j'W_jZ_j.
    """
    m, p = beta.shape
    r = Z.shape[1]
    k = p + r
    out = np.zeros((m, k, k))
    row = np.empty(k)
    for j in range(m):
        for i in range(starts[j], starts[j + 1]):
            eta = offset[i]
            for a in range(r):
                eta += Z[i, a] * alpha[a]
                row[p + a] = Z[i, a]
            for a in range(p):
                eta += X[i, a] * beta[j, a]
                row[a] = X[i, a]
            if code == 0:
                w = np.exp(min(eta, 700.0))
            else:
                q = 0.5 * (1.0 + np.tanh(0.5 * eta))
                w = n[i] * q * (1.0 - q)
            for a in range(k):
                for b in range(a + 1):
                    out[j, a, b] += w * row[a] * row[b]
        for a in range(k):
            for b in range(a):
                out[j, b, a] = out[j, a, b]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def group_loglik_grad(code: int, X: np.ndarray, Z: np.ndarray, offset: np.ndarray, alpha: np.ndarray, y: np.ndarray,
                      n: np.ndarray, starts: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ll_j = sum_{i in j} [y_i eta_i - b(eta_i)], eta_i = offset_i + z_i' alpha + x_i' beta_j
    (see :func:`group_loglik`) and, in the same pass, each group's score
    [X_j Z_j]'(y_j - mu_j) (m, p + r): the gradient in beta_j and group j's share of the
    gradient in alpha. ``alpha`` may be empty (then Z has no columns)."""
    m, p = beta.shape
    r = Z.shape[1]
    ll = np.empty(m)
    grad = np.zeros((m, p + r))
    for j in range(m):
        s = 0.0
        for i in range(starts[j], starts[j + 1]):
            eta = offset[i]
            for k in range(r):
                eta += Z[i, k] * alpha[k]
            for k in range(p):
                eta += X[i, k] * beta[j, k]
            if code == 0:
                mu = np.exp(eta)
                s += y[i] * eta - mu
            else:
                s += y[i] * eta - n[i] * _softplus(eta)
                mu = n[i] * 0.5 * (1.0 + np.tanh(0.5 * eta))
            resid = y[i] - mu
            for k in range(p):
                grad[j, k] += X[i, k] * resid
            for k in range(r):
                grad[j, p + k] += Z[i, k] * resid
        ll[j] = s
    return ll, grad


@njit(cache=True, nogil=True)
def row_linear_predictor(X: np.ndarray, g: np.ndarray, beta: np.ndarray, out: np.ndarray) -> None:
    """out[d, i] = x_i' beta[d, g_i] for every draw d and row i: the group-specific part of
    the linear predictor of the observed rows, in one pass over the rows per draw (a NumPy
    gather ``beta[:, g]`` would build a draws x rows x terms temporary)."""
    p = X.shape[1]
    for d in range(beta.shape[0]):
        for i in range(X.shape[0]):
            acc = 0.0
            for k in range(p):
                acc += X[i, k] * beta[d, g[i], k]
            out[d, i] = acc
