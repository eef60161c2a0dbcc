"""Small dense linear algebra over batches of p x p matrices, compiled with numba.

The hierarchical models have few varying terms (p is 1 to 10) and many groups, so a
sweep is many tiny factorisations. NumPy's batched ``linalg`` calls cost tens of
microseconds of overhead each at this size, more than the arithmetic; these loops do
the arithmetic alone (the benchmark in ``benchmarks/`` shows the difference). Random
numbers are drawn by the caller from a NumPy Generator, so draws do not depend on numba.
Floating-point errors follow NumPy (``error_model="numpy"``): a division by zero gives inf
or nan, which the callers' checks (a failed Cholesky, a non-finite state) report.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
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


#: relative jitters tried, in turn, on a precision matrix P that is not positive definite:
#: P + jitter * mean(|diag P|) * I (:func:`cholesky_jittered`,
#: :func:`multilevel.distributions.mvn_from_precision`)
JITTERS = (1e-10, 1e-8, 1e-6)
#: the level of a factorisation: 0 for the matrix as given, k for the jitter ``JITTERS[k - 1]``,
#: ``NOT_PD`` when the matrix is not positive definite even with the largest jitter
NOT_PD = len(JITTERS) + 1
#: the report (largest level, first group jittered or the group that failed, groups jittered) of
#: a batch of factorisations that all took their matrices as given (see :func:`noted`)
AS_GIVEN = (0, -1, 0)


@njit(cache=True, nogil=True)
def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """dst = src, element by element, for arrays of the same shape. A loop rather than
    ``dst[:] = src``: numba compiles, for every kernel with an array assignment, the message of
    its shape-mismatch error (seconds of a first call's compilation each). Arrays of different
    shapes raise ValueError with a fixed message (no formatting to compile), as the assignment
    did, rather than write outside dst (compiled code does not check bounds)."""
    if dst.shape != src.shape:
        raise ValueError("copy_into: dst and src differ in shape")
    for i in range(src.size):
        dst.flat[i] = src.flat[i]


@njit(cache=True, nogil=True, error_model="numpy")
def cholesky_jittered(P: np.ndarray, L: np.ndarray) -> int:
    """L = the lower Cholesky factor of P (p x p) or, when P is not positive definite, of
    P + jitter * mean_k |P_kk| * I for the first jitter of ``JITTERS`` that gives one.
    Returns the level (0: P as given, k: ``JITTERS[k - 1]``, ``NOT_PD``: none). L's strict
    upper triangle is left as P's; P is not modified."""
    p = P.shape[0]
    for level in range(NOT_PD):
        copy_into(L, P)
        if level:
            scale = 0.0
            for k in range(p):
                scale += abs(P[k, k])
            shift = JITTERS[level - 1] * scale / p
            for k in range(p):
                L[k, k] += shift
        if _cholesky_inplace(L):
            return level
    return NOT_PD


@njit(cache=True, nogil=True)
def noted(report: tuple[int, int, int], level: int, group: int) -> tuple[int, int, int]:
    """The report (largest level, first group jittered, groups jittered) of a batch of
    factorisations (:func:`cholesky_jittered`) after that of group ``group`` at ``level``; a
    failure (``NOT_PD``) is reported with its own group. Start from ``AS_GIVEN``."""
    if level == 0:
        return report
    if level == NOT_PD:
        return (NOT_PD, group, report[2] + 1)
    return (max(report[0], level), report[1] if report[2] else group, report[2] + 1)


@njit(cache=True, nogil=True, error_model="numpy")
def _lower_solve_into(L: np.ndarray, b: np.ndarray, w: np.ndarray) -> None:
    """w = L^-1 b for lower-triangular L (w may be b)."""
    p = b.shape[0]
    for k in range(p):
        t = b[k]
        for i in range(k):
            t -= L[k, i] * w[i]
        w[k] = t / L[k, k]


@njit(cache=True, nogil=True, error_model="numpy")
def _upper_solve_into(L: np.ndarray, b: np.ndarray, x: np.ndarray) -> None:
    """x = L'^-1 b for lower-triangular L (x may be b)."""
    p = b.shape[0]
    for k in range(p - 1, -1, -1):
        t = b[k]
        for i in range(k + 1, p):
            t -= L[i, k] * x[i]
        x[k] = t / L[k, k]


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
def inverse_wishart_from_bartlett(scale: np.ndarray, chisq: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(Sigma, Sigma^-1) from the Bartlett decomposition of a Wishart(df, I) draw, W = A A':
    A lower triangular, A_kk = sqrt(chisq_k) (chisq_k ~ chi2(df - k)), the strictly lower
    entries the ``normals`` (row-major).

    With scale = U U', Sigma^-1 = K K' for K = U'^-1 A and Sigma = T T' for T = U A'^-1.
    The flag is False when ``scale`` is not positive definite.
    """
    p = scale.shape[0]
    A = np.zeros((p, p))
    idx = 0
    for a in range(p):
        A[a, a] = np.sqrt(chisq[a])
        for b in range(a):
            A[a, b] = normals[idx]
            idx += 1
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


@njit(cache=True, nogil=True, error_model="numpy")
def solve_spd_batch(P: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, int]:
    """X_j = P_j^-1 B_j for symmetric positive definite P (m, p, p) and B (m, p, r).

    Returns (X, -1), or (X, j) with j the first group whose P_j is not positive definite.
    P is not modified.
    """
    m, p, r = B.shape
    X = np.empty((m, p, r))
    L = np.empty((p, p))
    for j in range(m):
        copy_into(L, P[j])
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


@njit(cache=True, nogil=True, error_model="numpy")
def _lower_inverse(A: np.ndarray) -> np.ndarray:
    p = A.shape[0]
    out = np.zeros((p, p))
    for c in range(p):
        for k in range(c, p):
            t = 1.0 if k == c else 0.0
            for i in range(c, k):
                t -= A[k, i] * out[i, c]
            out[k, c] = t / A[k, k]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _sigma_log_target(v: np.ndarray, R: np.ndarray, U: np.ndarray, XtX: np.ndarray, sigma2: float, S0: np.ndarray,
                      eta0: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Log density of Sigma = R C C' R' at coordinates v = (log C_kk, C_kl) (row-major lower
    triangle): collapsed Gaussian likelihood sum_j [-log det Sigma - log det P_j
    + U_j' P_j^-1 U_j / sigma2^2] / 2 with P_j = Sigma^-1 + X_j'X_j / sigma2, the
    inverse-Wishart(eta0, S0) prior and the Jacobian sum_k (p - k + 1) log C_kk."""
    p = R.shape[0]
    _, Sigma, Sigma_inv, logdet, log_jac = sigma_from_coordinates(v, R)
    m = U.shape[0]
    inv_s2 = 1.0 / sigma2
    L = np.empty((p, p))
    w = np.empty(p)
    log_dets = 0.0
    quads = 0.0
    for j in range(m):
        for a in range(p):
            for b in range(a + 1):
                L[a, b] = Sigma_inv[a, b] + XtX[j, a, b] * inv_s2
        if not _cholesky_inplace(L):
            return -np.inf, Sigma, Sigma_inv
        prod = 1.0
        for k in range(p):
            prod *= L[k, k]
            t = U[j, k]
            for i in range(k):
                t -= L[k, i] * w[i]
            w[k] = t / L[k, k]
            quads += w[k] * w[k]
        if 0.0 < prod < np.inf:
            log_dets += 2.0 * np.log(prod)  # one log per group: log det P_j = 2 log prod_k L_kk
        else:
            for k in range(p):
                log_dets += 2.0 * np.log(L[k, k])
    total = -0.5 * (m * logdet + log_dets) + 0.5 * quads * inv_s2 * inv_s2
    trace = 0.0
    for a in range(p):
        for b in range(p):
            trace += S0[a, b] * Sigma_inv[a, b]
    return total - 0.5 * (eta0 + p + 1) * logdet - 0.5 * trace + log_jac, Sigma, Sigma_inv


@njit(cache=True, nogil=True, error_model="numpy")
def sigma_coordinates(Sigma: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Coordinates v = (log C_kk, C_kl), row-major lower triangle, of C = R^-1 chol(Sigma)."""
    p = Sigma.shape[0]
    L = Sigma.copy()
    _cholesky_inplace(L)
    for a in range(p):
        for b in range(a + 1, p):
            L[a, b] = 0.0
    C = _lower_inverse(R) @ L
    v = np.empty(p * (p + 1) // 2)
    idx = 0
    for a in range(p):
        for b in range(a + 1):
            v[idx] = np.log(C[a, a]) if a == b else C[a, b]
            idx += 1
    return v


@njit(cache=True, nogil=True, error_model="numpy")
def sigma_metropolis(v: np.ndarray, R: np.ndarray, U: np.ndarray, XtX: np.ndarray, sigma2: float, S0: np.ndarray,
                     eta0: float, step: float, scale: np.ndarray, normals: np.ndarray, log_u: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """Random-walk Metropolis steps v' = v + step * scale * z on the Sigma coordinates v (see
    :func:`_sigma_log_target`; ``scale`` per coordinate), one per row z of ``normals``;
    returns (Sigma, Sigma^-1, number accepted)."""
    current, Sigma, Sigma_inv = _sigma_log_target(v, R, U, XtX, sigma2, S0, eta0)
    accepted = 0
    for s in range(normals.shape[0]):
        proposal = v + step * scale * normals[s]
        value, S_new, Si_new = _sigma_log_target(proposal, R, U, XtX, sigma2, S0, eta0)
        if log_u[s] < value - current:
            v, current, Sigma, Sigma_inv = proposal, value, S_new, Si_new
            accepted += 1
    return Sigma, Sigma_inv, accepted


@njit(cache=True, nogil=True, error_model="numpy")
def collapsed_information(XtX: np.ndarray, Xty: np.ndarray, XtZ: np.ndarray, Sigma_inv: np.ndarray, sigma2: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Sums over groups of X'V^-1X, X'V^-1y, X'V^-1Z, Z'V^-1Z and Z'V^-1y for
    V_j = sigma2 I + X_j Sigma X_j', through P_j = Sigma^-1 + X_j'X_j / sigma2:

        X'V^-1X = Sigma^-1 - Sigma^-1 P^-1 Sigma^-1       X'V^-1y = Sigma^-1 P^-1 X'y / sigma2
        X'V^-1Z = Sigma^-1 P^-1 X'Z / sigma2
        Z'V^-1Z = -(X'Z)' P^-1 (X'Z) / sigma2^2 (+ Z'Z / sigma2, added by the caller)
        Z'V^-1y = -(X'Z)' P^-1 X'y / sigma2^2 (+ Z'y / sigma2, added by the caller)

    A P_j that is not positive definite is jittered (:func:`cholesky_jittered`); the last item is
    the report of the m factorisations (:func:`noted`), its level ``NOT_PD`` if one failed.
    """
    m, p, _ = XtX.shape
    r = XtZ.shape[2]
    XVX = np.zeros((p, p))
    XVy = np.zeros(p)
    XVZ = np.zeros((p, r))
    ZVZ = np.zeros((r, r))
    ZVy = np.zeros(r)
    P = np.empty((p, p))
    L = np.empty((p, p))
    B = np.empty((p, 1 + r + p))  # right-hand sides: X'y, X'Z, Sigma^-1
    report = AS_GIVEN
    for j in range(m):
        for a in range(p):
            for b in range(p):
                P[a, b] = Sigma_inv[a, b] + XtX[j, a, b] / sigma2
        level = cholesky_jittered(P, L)
        report = noted(report, level, j)
        if level == NOT_PD:
            return XVX, XVy, XVZ, ZVZ, ZVy, report
        for a in range(p):
            B[a, 0] = Xty[j, a]
            for c in range(r):
                B[a, 1 + c] = XtZ[j, a, c]
            for c in range(p):
                B[a, 1 + r + c] = Sigma_inv[a, c]
        for c in range(1 + r + p):  # B <- P^-1 B
            for k in range(p):
                t = B[k, c]
                for i in range(k):
                    t -= L[k, i] * B[i, c]
                B[k, c] = t / L[k, k]
            for k in range(p - 1, -1, -1):
                t = B[k, c]
                for i in range(k + 1, p):
                    t -= L[i, k] * B[i, c]
                B[k, c] = t / L[k, k]
        for a in range(p):  # Sigma^-1 (P^-1 rhs); P^-1 Sigma^-1 is symmetric in the product below
            for c in range(p):
                s = 0.0
                for k in range(p):
                    s += Sigma_inv[a, k] * B[k, 1 + r + c]
                XVX[a, c] += Sigma_inv[a, c] - s
            s = 0.0
            for k in range(p):
                s += Sigma_inv[a, k] * B[k, 0]
            XVy[a] += s / sigma2
            for c in range(r):
                s = 0.0
                for k in range(p):
                    s += Sigma_inv[a, k] * B[k, 1 + c]
                XVZ[a, c] += s / sigma2
        for c in range(r):
            s = 0.0
            for k in range(p):
                s += XtZ[j, k, c] * B[k, 0]
            ZVy[c] -= s / (sigma2 * sigma2)
            for d in range(r):
                s = 0.0
                for k in range(p):
                    s += XtZ[j, k, c] * B[k, 1 + d]
                ZVZ[c, d] -= s / (sigma2 * sigma2)
    return XVX, XVy, XVZ, ZVZ, ZVy, report


@njit(cache=True, nogil=True, error_model="numpy")
def sigma_from_coordinates(v: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Inverse of :func:`sigma_coordinates`: (L = R C, Sigma = L L', Sigma^-1, log det Sigma,
    log Jacobian sum_k (p - k + 1) log C_kk of the coordinates)."""
    p = R.shape[0]
    C = np.zeros((p, p))
    idx = 0
    log_jac = 0.0
    for a in range(p):
        for b in range(a + 1):
            if a == b:
                C[a, a] = np.exp(v[idx])
                log_jac += (p - a + 1) * v[idx]
            else:
                C[a, b] = v[idx]
            idx += 1
    L = R @ C
    logdet = 0.0
    for k in range(p):
        logdet += 2.0 * np.log(abs(L[k, k]))
    Linv = _lower_inverse(L)
    return L, L @ L.T, Linv.T @ Linv, logdet, log_jac


@njit(cache=True, nogil=True, error_model="numpy")
def gaussian_beta_draw(XtX: np.ndarray, Xty: np.ndarray, XtZ: np.ndarray, alpha: np.ndarray, Sigma_inv: np.ndarray,
                       theta: np.ndarray, sigma2: float, z: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """All groups' beta_j ~ MVN(P_j^-1 b_j, P_j^-1), P_j = Sigma^-1 + X_j'X_j / sigma2,
    b_j = Sigma^-1 theta + (X_j'y_j - X_j'Z_j alpha) / sigma2, from standard normals z (m, p),
    forming each P_j and b_j in place. A P_j that is not positive definite is jittered
    (:func:`cholesky_jittered`). Returns (beta, the report of the m factorisations, :func:`noted`);
    beta is incomplete when the report's level is ``NOT_PD``."""
    m, p = Xty.shape
    r = alpha.shape[0]
    out = np.empty((m, p))
    prior = Sigma_inv @ theta
    P = np.empty((p, p))
    L = np.empty((p, p))
    w = np.empty(p)
    report = AS_GIVEN
    for j in range(m):
        for a in range(p):
            for b in range(p):
                P[a, b] = Sigma_inv[a, b] + XtX[j, a, b] / sigma2
            t = Xty[j, a]
            for c in range(r):
                t -= XtZ[j, a, c] * alpha[c]
            w[a] = prior[a] + t / sigma2
        level = cholesky_jittered(P, L)
        report = noted(report, level, j)
        if level == NOT_PD:
            return out, report
        for k in range(p):
            t = w[k]
            for i in range(k):
                t -= L[k, i] * w[i]
            w[k] = t / L[k, k]
        for k in range(p):
            w[k] += z[j, k]
        for k in range(p - 1, -1, -1):
            t = w[k]
            for i in range(k + 1, p):
                t -= L[i, k] * w[i]
            w[k] = t / L[k, k]
        for k in range(p):
            out[j, k] = w[k]
    return out, report


@njit(cache=True, nogil=True, error_model="numpy")
def mvn_precision_jittered(P: np.ndarray, b: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, int]:
    """x ~ MVN(P^-1 b, P^-1) from standard normals z: x = L'^-1 (L^-1 b + z), P = L L', with P
    jittered when it is not positive definite. Returns (x, level of :func:`cholesky_jittered`);
    x is undefined at level ``NOT_PD``. P is not modified."""
    p = b.shape[0]
    L = np.empty((p, p))
    x = np.empty(p)
    level = cholesky_jittered(P, L)
    if level == NOT_PD:
        return x, level
    _lower_solve_into(L, b, x)
    for k in range(p):
        x[k] += z[k]
    _upper_solve_into(L, x, x)
    return x, level


@njit(cache=True, nogil=True, error_model="numpy")
def _ssr_from_stats(XtX: np.ndarray, XtZ: np.ndarray, ZtZ: np.ndarray, b_ref: np.ndarray, a_ref: np.ndarray,
                    rtr: float, Xtr: np.ndarray, Ztr: np.ndarray, beta: np.ndarray, alpha: np.ndarray) -> float:
    """SSR = sum_j ||y_j - X_j beta_j - Z_j alpha||^2 expanded around the reference fit
    (b_ref, a_ref): r'r - 2 sum_j d_j'X_j'r_j - 2 c'Z'r + sum_j d_j'X_j'X_j d_j
    + 2 sum_j d_j'X_j'Z_j c + c'Z'Z c with d_j = beta_j - b_ref_j, c = alpha - a_ref
    (see :mod:`multilevel.suffstats`)."""
    m, p = beta.shape
    r = alpha.shape[0]
    c = alpha - a_ref
    total = rtr
    d = np.empty(p)
    for j in range(m):
        for k in range(p):
            d[k] = beta[j, k] - b_ref[j, k]
        for k in range(p):
            t = -2.0 * Xtr[j, k]
            for l in range(p):
                t += XtX[j, k, l] * d[l]
            for l in range(r):
                t += 2.0 * XtZ[j, k, l] * c[l]
            total += d[k] * t
    for k in range(r):
        t = -2.0 * Ztr[k]
        for l in range(r):
            t += ZtZ[k, l] * c[l]
        total += c[k] * t
    return max(total, 0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def wishart_scale(S0: np.ndarray, beta: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """S0 + sum_j (beta_j - theta)(beta_j - theta)', the scale of Sigma's inverse-Wishart full conditional."""
    m, p = beta.shape
    scale = S0.copy()
    for j in range(m):
        for a in range(p):
            da = beta[j, a] - theta[a]
            for b in range(a + 1):
                scale[a, b] += da * (beta[j, b] - theta[b])
    for a in range(p):
        for b in range(a + 1, p):
            scale[a, b] = scale[b, a]
    return scale


#: the name of the precision matrices P_j = Sigma^-1 + X_j'X_j / sigma2 in messages
BETA_PRECISION = "the precision matrix of beta (group effects)"
#: the matrices :func:`collapsed_sweep` factorises, in the order of its report's rows, as
#: (name, jitter tried) (see :func:`multilevel.distributions.check_factorisations`)
COLLAPSED_FACTORISATIONS = ((BETA_PRECISION, True), ("the precision matrix of theta and alpha (collapsed)", True),
                            ("the inverse-Wishart scale matrix of Sigma", False))


@njit(cache=True, nogil=True, error_model="numpy")
def collapsed_sweep(XtX: np.ndarray, Xty: np.ndarray, XtZ: np.ndarray, ZtZ: np.ndarray, Zty: np.ndarray,
                    b_ref: np.ndarray, a_ref: np.ndarray, rtr: float, Xtr: np.ndarray, Ztr: np.ndarray,
                    free: np.ndarray, prior_prec: np.ndarray, prior_shift: np.ndarray, S0: np.ndarray, eta0: float,
                    sigma_rate0: float, theta: np.ndarray, alpha: np.ndarray, Sigma: np.ndarray, sigma2: float,
                    R: np.ndarray, step: float, v_scale: np.ndarray, mh_normals: np.ndarray, log_u: np.ndarray, ta_normals: np.ndarray,
                    beta_normals: np.ndarray, gammas: np.ndarray, iw_normals: np.ndarray):
    """One sweep of the collapsed Gaussian kernel (:mod:`multilevel.samplers.collapsed`), all
    in compiled code, from random inputs drawn by the caller:

    1. Sigma: Metropolis steps with beta integrated out (:func:`sigma_metropolis`), one per
       row of ``mh_normals`` (scaled by ``step * v_scale``), accepted when log_u < log ratio;
    2. (theta_free, alpha) ~ MVN(P^-1 b, P^-1), P = prior precision + the collapsed
       information (:func:`collapsed_information`, plus Z'Z / sigma2), b = prior shift + the
       collapsed score (Z'y / sigma2 added), from ``ta_normals``;
    3. beta_j for all groups (:func:`gaussian_beta_draw`) from ``beta_normals``;
    4. Sigma ~ inverse-Wishart(eta0 + m, S0 + sum_j (beta_j - theta)(beta_j - theta)') by
       Bartlett, chi2(eta0 + m - k) = 2 ``gammas[k]`` and ``iw_normals``;
    5. sigma2 = (sigma_rate0 + SSR / 2) / ``gammas[p]`` (the last gamma has shape (nu0 + N) / 2).

    A precision that is not positive definite (the P_j = Sigma^-1 + X_j'X_j / sigma2 of steps 2
    and 3, the P of step 2) is jittered (:func:`cholesky_jittered`). Returns (beta, alpha, theta,
    Sigma, Sigma^-1, sigma2, SSR, Sigma steps accepted, report, level): report has one row
    (largest level, group, groups jittered) per matrix of ``COLLAPSED_FACTORISATIONS``, and level
    is the largest of its levels: 0 when every matrix was factorised as given. A row at level
    ``NOT_PD`` (for the inverse-Wishart scale: not positive definite, no jitter tried) ends the
    sweep there; the state returned is then incomplete.
    """
    m, p = Xty.shape
    r = alpha.shape[0]
    q = free.shape[0]
    beta = np.zeros((m, p))
    U = Xty.copy()  # X_j'(y_j - X_j theta - Z_j alpha)
    for j in range(m):
        for a in range(p):
            t = U[j, a]
            for b in range(p):
                t -= XtX[j, a, b] * theta[b]
            for c in range(r):
                t -= XtZ[j, a, c] * alpha[c]
            U[j, a] = t
    v = sigma_coordinates(Sigma, R)
    Sigma, Sigma_inv, accepted = sigma_metropolis(v, R, U, XtX, sigma2, S0, eta0, step, v_scale, mh_normals, log_u)
    XVX, XVy, XVZ, ZVZ, ZVy, beta_report = collapsed_information(XtX, Xty, XtZ, Sigma_inv, sigma2)
    if beta_report[0] == NOT_PD:
        return beta, alpha, theta, Sigma, Sigma_inv, sigma2, 0.0, accepted, (beta_report, AS_GIVEN, AS_GIVEN), NOT_PD
    P = prior_prec.copy()
    rhs = prior_shift.copy()
    for a in range(q):
        for b in range(q):
            P[a, b] += 0.5 * (XVX[free[a], free[b]] + XVX[free[b], free[a]])
        rhs[a] += XVy[free[a]]
        for c in range(r):
            P[a, q + c] += XVZ[free[a], c]
            P[q + c, a] += XVZ[free[a], c]
    for c in range(r):
        for d in range(r):
            P[q + c, q + d] += 0.5 * (ZVZ[c, d] + ZVZ[d, c]) + 0.5 * (ZtZ[c, d] + ZtZ[d, c]) / sigma2
        rhs[q + c] += ZVy[c] + Zty[c] / sigma2
    draw, level = mvn_precision_jittered(P, rhs, ta_normals)
    ta_report = noted(AS_GIVEN, level, -1)
    if level == NOT_PD:
        return beta, alpha, theta, Sigma, Sigma_inv, sigma2, 0.0, accepted, (beta_report, ta_report, AS_GIVEN), NOT_PD
    theta = np.zeros(p)
    for a in range(q):
        theta[free[a]] = draw[a]
    alpha = draw[q:].copy()
    beta, draw_report = gaussian_beta_draw(XtX, Xty, XtZ, alpha, Sigma_inv, theta, sigma2, beta_normals)
    if draw_report[0] > beta_report[0]:  # the P_j of step 2 again: reported once
        beta_report = draw_report
    if beta_report[0] == NOT_PD:
        return beta, alpha, theta, Sigma, Sigma_inv, sigma2, 0.0, accepted, (beta_report, ta_report, AS_GIVEN), NOT_PD
    Sigma, Sigma_inv, ok = inverse_wishart_from_bartlett(wishart_scale(S0, beta, theta), 2.0 * gammas[:p], iw_normals)
    if not ok:
        return (beta, alpha, theta, Sigma, Sigma_inv, sigma2, 0.0, accepted,
                (beta_report, ta_report, (NOT_PD, -1, 0)), NOT_PD)
    ssr = _ssr_from_stats(XtX, XtZ, ZtZ, b_ref, a_ref, rtr, Xtr, Ztr, beta, alpha)
    sigma2 = (sigma_rate0 + 0.5 * ssr) / gammas[p]
    return (beta, alpha, theta, Sigma, Sigma_inv, sigma2, ssr, accepted, (beta_report, ta_report, AS_GIVEN),
            max(beta_report[0], ta_report[0]))
