"""Small dense linear algebra over batches of p x p matrices, compiled with numba.

The hierarchical models have few varying terms (p is 1 to 10) and many groups, so a
sweep is many tiny factorisations. NumPy's batched ``linalg`` calls cost tens of
microseconds of overhead each at this size, more than the arithmetic; these loops do
the arithmetic alone (the benchmark in ``benchmarks/`` shows the difference). Random
numbers are drawn by the caller from a NumPy Generator, so draws do not depend on numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _cholesky_inplace(A: np.ndarray) -> bool:
    """Overwrite the lower triangle of A (p x p) with its Cholesky factor; False if not PD."""
    p = A.shape[0]
    for k in range(p):
        s = A[k, k]
        for i in range(k):
            s -= A[k, i] * A[k, i]
        if not s > 0.0:
            return False
        d = np.sqrt(s)
        A[k, k] = d
        for r in range(k + 1, p):
            t = A[r, k]
            for i in range(k):
                t -= A[r, i] * A[k, i]
            A[r, k] = t / d
    return True


@njit(cache=True, nogil=True)
def mvn_precision_batch(P: np.ndarray, b: np.ndarray, z: np.ndarray, out: np.ndarray) -> int:
    """x_j = L_j'^-1 (L_j^-1 b_j + z_j) with P_j = L_j L_j': a draw from MVN(P_j^-1 b_j, P_j^-1).

    Shapes P (m, p, p), b, z, out (m, p). P is overwritten by its Cholesky factors.
    Returns -1 on success, else the index of the first group whose P_j is not positive
    definite.
    """
    m, p = b.shape
    for j in range(m):
        L = P[j]
        if not _cholesky_inplace(L):
            return j
        w = out[j]
        for k in range(p):  # forward: L w = b
            t = b[j, k]
            for i in range(k):
                t -= L[k, i] * w[i]
            w[k] = t / L[k, k]
        for k in range(p):
            w[k] += z[j, k]
        for k in range(p - 1, -1, -1):  # backward: L' x = w
            t = w[k]
            for i in range(k + 1, p):
                t -= L[i, k] * w[i]
            w[k] = t / L[k, k]
    return -1


@njit(cache=True, nogil=True)
def inverse_wishart_from_bartlett(scale: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(Sigma, Sigma^-1) from the Bartlett factor A of a Wishart(df, I) draw.

    With scale = U U', Sigma^-1 = K K' for K = U'^-1 A and Sigma = T T' for T = U A'^-1.
    The flag is False when ``scale`` is not positive definite.
    """
    p = scale.shape[0]
    U = scale.copy()
    ok = _cholesky_inplace(U)
    for r in range(p):
        for c in range(r + 1, p):
            U[r, c] = 0.0
    K = np.zeros((p, p))  # solve U' K = A, U' upper triangular
    for c in range(p):
        for k in range(p - 1, -1, -1):
            t = A[k, c]
            for i in range(k + 1, p):
                t -= U[i, k] * K[i, c]
            K[k, c] = t / U[k, k]
    Ainv = np.zeros((p, p))  # inverse of lower-triangular A
    for c in range(p):
        for k in range(c, p):
            t = 1.0 if k == c else 0.0
            for i in range(c, k):
                t -= A[k, i] * Ainv[i, c]
            Ainv[k, c] = t / A[k, k]
    T = U @ Ainv.T
    return T @ T.T, K @ K.T, ok


@njit(cache=True, nogil=True)
def solve_spd_batch(P: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, int]:
    """X_j = P_j^-1 B_j for symmetric positive definite P (m, p, p) and B (m, p, r).

    Returns (X, -1), or (X, j) with j the first group whose P_j is not positive definite.
    P is not modified.
    """
    m, p, r = B.shape
    X = np.empty((m, p, r))
    L = np.empty((p, p))
    for j in range(m):
        L[:, :] = P[j]
        if not _cholesky_inplace(L):
            return X, j
        for c in range(r):
            for k in range(p):
                t = B[j, k, c]
                for i in range(k):
                    t -= L[k, i] * X[j, i, c]
                X[j, k, c] = t / L[k, k]
            for k in range(p - 1, -1, -1):
                t = X[j, k, c]
                for i in range(k + 1, p):
                    t -= L[i, k] * X[j, i, c]
                X[j, k, c] = t / L[k, k]
    return X, -1
