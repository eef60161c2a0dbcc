"""Batched draws from the distributions of the full conditionals.

Small pure functions; each takes its randomness from an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import ModelError
from .linalg import JITTERS, NOT_PD, inverse_wishart_from_bartlett, mvn_precision_batch


def mvn_from_precision(P: np.ndarray, b: np.ndarray, z: np.ndarray, what: str = "beta") -> np.ndarray:
    """Draw x ~ MVN(P^-1 b, P^-1) for a batch, given standard normals ``z``.

    With P = L L' (Cholesky), x = L'^-1 (L^-1 b + z): mean P^-1 b and covariance
    L'^-1 L^-1 = P^-1. Shapes: P (m, p, p) or (p, p); b and z (m, p) or (p,).
    ``P`` is not modified. A precision matrix that is not positive definite is retried
    with a small diagonal jitter and a warning (see ``JITTERS``); past that,
    :class:`FloatingPointError` names ``what`` and the group.
    """
    single = b.ndim == 1
    P3 = np.ascontiguousarray(P, dtype=float).reshape(-1, b.shape[-1], b.shape[-1])
    b2 = np.ascontiguousarray(b, dtype=float).reshape(P3.shape[0], -1)
    z2 = np.ascontiguousarray(z, dtype=float).reshape(P3.shape[0], -1)
    out = np.empty_like(b2)
    failed = mvn_precision_batch(P3.copy(), b2, z2, out)
    if failed >= 0:
        out = _with_jitter(P3, b2, z2, failed, what, single)
    return out[0] if single else out


def _with_jitter(P: np.ndarray, b: np.ndarray, z: np.ndarray, failed: int, what: str, single: bool) -> np.ndarray:
    """Retry the draw with P + jitter * mean(|diag P|) * I (``JITTERS`` in turn), warning once; give
    up past the last."""
    name, where = f"the precision matrix of {what}", "" if single else f" in group {failed}"
    scale = np.abs(np.diagonal(P, axis1=1, axis2=2)).mean(axis=1)[:, None, None]
    eye = np.eye(P.shape[-1])
    for jitter in JITTERS:
        out = np.empty_like(b)
        if mvn_precision_batch(P + jitter * scale * eye, b, z, out) < 0 and np.all(np.isfinite(out)):
            warnings.warn(jitter_message(name, where, jitter), RuntimeWarning, stacklevel=3)
            return out
    raise FloatingPointError(not_positive_definite_message(name, where, jittered=True))


def jitter_message(name: str, where: str, jitter: float, groups: int = 1) -> str:
    """The warning that ``name`` (``where``: in which group(s)) was drawn with a jitter on its
    diagonal (up to ``jitter`` over ``groups`` groups)."""
    bound = "up to " if groups > 1 else ""
    return (f"{name}{where} was not positive definite; drew with a relative jitter of {bound}{jitter:g} on its "
            "diagonal")


def not_positive_definite_message(name: str, where: str, jittered: bool) -> str:
    """The error that ``name`` (``where``: in which group) is not positive definite (``jittered``:
    even with the largest jitter)."""
    return f"{name}{where} is not positive definite" + (", even with jitter" if jittered else "")


def check_factorisations(report: tuple[tuple[int, int, int], ...], names: tuple[tuple[str, bool], ...]) -> None:
    """Warn or raise from a compiled sweep's report of its Cholesky factorisations
    (:func:`multilevel.linalg.cholesky_jittered`): row k = (level, group, groups jittered) of the
    matrix ``names[k] = (name, jitter tried)``, group -1 for a matrix that is not per group.
    Level k in 1..len(JITTERS) warns once that the relative jitter ``JITTERS[k - 1]`` was needed
    (the largest over the groups, naming the first); ``NOT_PD`` raises :class:`FloatingPointError`
    naming the matrix and the group that failed. Rows are read in order (the sweep's)."""
    for (level, group, count), (name, jittered) in zip(report, names):
        if level == NOT_PD:
            raise FloatingPointError(not_positive_definite_message(name, "" if group < 0 else f" in group {group}",
                                                                   jittered))
        if level:
            more = f" (and {count - 1} more groups)" if count > 1 else ""
            where = "" if group < 0 else f" in group {group}{more}"
            warnings.warn(jitter_message(name, where, JITTERS[level - 1], count), RuntimeWarning, stacklevel=3)


def bartlett_factor(df: float, p: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The random parts of the Bartlett decomposition of a Wishart(df, I_p) draw W = A A':
    chi2(df - k) for the squared diagonal A_kk, k = 0..p-1, and N(0, 1) for the strictly
    lower entries (row-major)."""
    return rng.chisquare(df - np.arange(p)), rng.standard_normal(p * (p - 1) // 2)


def inverse_wishart(df: float, scale: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw Sigma ~ inverse-Wishart(df, scale), E[Sigma] = scale / (df - p - 1); return (Sigma, Sigma^-1).

    Sigma^-1 ~ Wishart(df, scale^-1). With scale = U U' (Cholesky) and the Bartlett factor
    A of a Wishart(df, I) draw, Sigma^-1 = (U'^-1 A)(U'^-1 A)' and therefore
    Sigma = (U A'^-1)(U A'^-1)'. In the specification's notation this is
    inverse-Wishart(eta, S^-1) with eta = df and S = scale.
    """
    chisq, normals = bartlett_factor(df, scale.shape[0], rng)
    Sigma, Sigma_inv, ok = inverse_wishart_from_bartlett(np.ascontiguousarray(scale, dtype=float), chisq, normals)
    if not ok:
        raise FloatingPointError("the inverse-Wishart scale matrix of Sigma is not positive definite")
    return Sigma, Sigma_inv


def inverse_gamma(shape: float, rate: float, rng: np.random.Generator) -> float:
    """Draw x ~ inverse-gamma(shape, rate): x = rate / Gamma(shape, 1)."""
    return rate / rng.gamma(shape)


def check_spd(M: np.ndarray, name: str, size: int) -> np.ndarray:
    """Return ``M`` as a float (size, size) array, refusing it unless symmetric positive definite."""
    M = np.atleast_2d(np.asarray(M, dtype=float))
    if M.shape != (size, size):
        raise ModelError(f"prior {name} must be a {size} x {size} matrix, got shape {M.shape}; give one row and "
                         "column per term, in the formula's order")
    if not np.all(np.isfinite(M)):
        raise ModelError(f"prior {name} has non-finite entries; give finite numbers")
    if not np.allclose(M, M.T, rtol=1e-8, atol=1e-12 * max(np.abs(M).max(), 1.0)):
        raise ModelError(f"prior {name} must be symmetric; make entry [i, j] equal [j, i]")
    try:
        np.linalg.cholesky(M)
    except np.linalg.LinAlgError:
        raise ModelError(f"prior {name} must be positive definite (all eigenvalues > 0); shrink its off-diagonal "
                         "entries or leave it unset for the data-informed default") from None
    return 0.5 * (M + M.T)


def weak_information_share(Sigma: np.ndarray, H: np.ndarray) -> float:
    """max over terms k of mean_j [(Sigma^-1 + H_j)^-1]_kk / Sigma_kk, with H_j (m, p, p) each
    group's information about its beta_j: the share of Sigma's variance the groups' data leave
    in their effects. Near 1 when groups inform their effects weakly (centred Gibbs then moves
    theta and Sigma slowly), near 0 when they inform them well; 1 when it cannot be computed."""
    try:
        post = np.linalg.inv(np.linalg.inv(Sigma) + H)
    except np.linalg.LinAlgError:
        return 1.0
    share = np.diagonal(post, axis1=1, axis2=2).mean(axis=0) / np.diag(Sigma)
    return float(np.max(share)) if np.all(np.isfinite(share)) else 1.0
