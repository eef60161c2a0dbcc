r"""Collapsed blocked Gibbs sampler for Gaussian models with several grouping factors.

Model (:class:`multilevel.design.CrossedDesign`)::

    y = F a + sum_k Z_k b_k + e,     e ~ N(0, sigma2 W^-1)
    b_kj ~ MVN(0, Sigma_k)            level j of factor k; Sigma_k block-diagonal by term
    a ~ MVN(m0, Pi_a^-1)              theta and alpha blocks (:func:`multilevel.priors.resolve_crossed_priors`)
    Sigma_k[block] ~ IW(eta_kb, S0_k[block]),   eta_kb = eta0_k - q_k + q_b
    sigma2 ~ IG(nu0 / 2, nu0 sigma0_sq / 2)

(a block's prior is the marginal of IW(eta0_k, S0_k) on that block). The location effects are
split (:mod:`multilevel.blockstats`) into the dense block t = (a, effects of the small
factors) and the large factors' effects b_k. One sweep, reading only the statistics:

1. sigma2 | u ~ IG((nu0 + N) / 2, (nu0 sigma0_sq + SSR(u)) / 2).
2. For each large factor k, with r_k = y - sum_{l != k large} Z_l b_l:

   a. t | b_{-k}, Sigma, sigma2 with b_k integrated out (collapsed Gibbs, Papaspiliopoulos,
      Roberts and Zanella 2020): per level P_kj = Sigma_k^-1 + A_kj / sigma2, and
      t ~ MVN(Q^-1 l, Q^-1) with
        Q = Pi_t + G / sigma2 - sum_j W_kj P_kj^-1 W_kj' / sigma2^2,
        l = Pi_t m_t + X_t'r_k / sigma2 - sum_j W_kj P_kj^-1 Z_kj'r_k / sigma2^2,
      Pi_t the prior precision of t (Pi_a, and Sigma_l^-1 per level of a small factor l);
   b. before t (a'), each diagonal variance tau_lc of a small factor l given b_{-k}, with t
      and b_k integrated out, by slice sampling on log tau_lc from
        log p(tau) + log tau - J_l log(tau) / 2 - log|Q| / 2 + l'Q^-1 l / 2
      (Q and l of step a; only Q's prior block of l depends on tau: a Cholesky of Q per
      evaluation); after t, the small factors' correlated Sigma_l | their effects in t
      (conjugate inverse-Wishart per block);
   c. if Sigma_k is diagonal (every term of k one column: intercepts, ``||`` terms): each
      variance tau_kc | t, b_{-k}, sigma2 with b_k still integrated out, by slice sampling
      on log tau_kc (Neal 2003; stepping out by 1) from
        log p(tau) + log tau + sum_j [ -log|Sigma_k| - log|P_kj| + e_j'P_kj^-1 e_j ] / 2,
      e_j = Z_kj'(r_k - X_t t) / sigma2: the marginal likelihood of the level's rows by the
      determinant lemma;
   d. b_kj | t, b_{-k}, Sigma_k, sigma2 ~ MVN(P_kj^-1 e_j, P_kj^-1), independently per level;
   e. if Sigma_k has a correlated block: Sigma_k[block] | b_k, conjugate inverse-Wishart.

   Steps b, a, c, d draw (tau_small, t, tau_k, b_k) from their joint conditional given b_{-k}
   in turn (a partially collapsed Gibbs step: what is integrated out is drawn right after the
   steps that integrate it). Integrating b_k out of the small factors' variance moves breaks
   the trade-off between a small factor's effects and the means of a large factor's effects
   within its levels (InstEval's lecturers, nearly nested in departments).
3. Without large factors: step 2b's variance moves with t integrated out (Q = Pi_t + G / sigma2,
   l = Pi_a m0 + X_t'y / sigma2), then t | Sigma, sigma2 ~ MVN(Q^-1 l, Q^-1), then the
   correlated small factors' Sigma_l.

Joining small factors to t is what makes InstEval mix (Var(dept:service)); integrating b_k
out of the moves of t and tau_k is what makes the fixed effects and the large factors'
variances mix. The compiled sweep is :func:`crossed_sweep`; the kernel is a pure
``step(state, rng) -> state`` over :class:`CrossedState`.

With sigma2 known (``sigma2_known``) step 1 and the SSR are skipped and every other step is
as above: the Polya-Gamma sampler of binomial and Bernoulli models
(:mod:`multilevel.samplers.polya_gamma`) runs the sweep with sigma2 = 1 on statistics
weighted anew every sweep (:meth:`CrossedGibbs.sweep`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from ..blockstats import BlockStats, FactorLayout

#: at most this many numbers for the per-group sums M_g of :func:`level_groups`
GROUPED_PRECISION_NUMBERS = 20_000_000
#: slice sampler: stepping-out width on log tau, and the most steps out each way
SLICE_WIDTH = 1.0
SLICE_MAX_STEPS = 60


class CrossedState(NamedTuple):
    """The chain's state: t = (a, small factors' effects), b = large factors' effects,
    Sigma = every factor's q_k x q_k covariance (flat, layout ``sig_off``), sigma2, and the
    residual sum of squares SSR of (t, b)."""

    t: np.ndarray
    b: np.ndarray
    Sigma: np.ndarray
    sigma2: float
    ssr: float


# -- small dense linear algebra (in place, no exceptions: a flag says not positive definite) --

@njit(cache=True)
def _chol(A, n):
    """Lower Cholesky factor of A[:n, :n] in place (upper part zeroed); False if not PD."""
    for j in range(n):
        s = A[j, j]
        for k in range(j):
            s -= A[j, k] * A[j, k]
        if not s > 0.0:
            return False
        d = np.sqrt(s)
        A[j, j] = d
        for i in range(j + 1, n):
            s = A[i, j]
            for k in range(j):
                s -= A[i, k] * A[j, k]
            A[i, j] = s / d
        for i in range(j):
            A[i, j] = 0.0
    return True


@njit(cache=True)
def _forward(L, x, n):
    """x <- L^-1 x (L lower)."""
    for i in range(n):
        s = x[i]
        for k in range(i):
            s -= L[i, k] * x[k]
        x[i] = s / L[i, i]


@njit(cache=True)
def _backward(L, x, n):
    """x <- L'^-1 x (L lower)."""
    for i in range(n - 1, -1, -1):
        s = x[i]
        for k in range(i + 1, n):
            s -= L[k, i] * x[k]
        x[i] = s / L[i, i]


@njit(cache=True)
def _inverse_from_chol(L, out, n):
    """out[:n, :n] = (L L')^-1 (n = 1: 1 / L^2)."""
    if n == 1:
        out[0, 0] = 1.0 / (L[0, 0] * L[0, 0])
        return
    e = np.zeros(n)
    for c in range(n):
        e[:] = 0.0
        e[c] = 1.0
        _forward(L, e, n)
        _backward(L, e, n)
        for r in range(n):
            out[r, c] = e[r]


@njit(cache=True)
def _inverse_wishart(rng, df, S, n):
    """A draw of IW(df, S) (n x n): Sigma^-1 ~ Wishart(df, S^-1) by Bartlett's decomposition;
    returns (Sigma, ok)."""
    L = S.copy()
    out = np.zeros((n, n))
    if not _chol(L, n):
        return out, False
    Sinv = np.zeros((n, n))
    _inverse_from_chol(L, Sinv, n)
    if not _chol(Sinv, n):  # Sinv now holds chol(S^-1)
        return out, False
    A = np.zeros((n, n))
    for i in range(n):
        A[i, i] = np.sqrt(2.0 * rng.gamma(0.5 * (df - i), 1.0))
        for j in range(i):
            A[i, j] = rng.standard_normal()
    T = Sinv @ A  # Sigma^-1 = T T'
    Wm = T @ T.T
    if not _chol(Wm, n):
        return out, False
    _inverse_from_chol(Wm, out, n)
    return out, True


# -- the factor's marginal, for the variance moves ------------------------------------------

@njit(cache=True)
def _factor_marginal(log_tau, A, A_off, e, o, J, q, sigma2, g_count, g_A, g_ee):
    """sum_j [-log|Sigma| - log|P_j| + e_j'P_j^-1 e_j] / 2 for diagonal Sigma = diag(exp(log_tau)),
    P_j = Sigma^-1 + A_j / sigma2, e_j the level's entries of ``e`` (already / sigma2).

    For one term (q = 1) the levels come grouped by equal A_j (``g_count`` levels of
    A_j = ``g_A``, with sum of e_j^2 ``g_ee``): an evaluation costs O(groups), not O(levels)."""
    total = 0.0
    log_det_sigma = 0.0
    for c in range(q):
        log_det_sigma += log_tau[c]
    if q == 1:
        inv_tau = np.exp(-log_tau[0])
        for g in range(g_count.shape[0]):
            pj = inv_tau + g_A[g] / sigma2
            total += -g_count[g] * np.log(pj) + g_ee[g] / pj
        return 0.5 * (total - J * log_det_sigma)
    Pj = np.zeros((q, q))
    v = np.zeros(q)
    for j in range(J):
        base = A_off + j * q * q
        for r in range(q):
            for c in range(q):
                Pj[r, c] = A[base + r * q + c] / sigma2
            Pj[r, r] += np.exp(-log_tau[r])
            v[r] = e[o + j * q + r]
        if not _chol(Pj, q):
            return -np.inf
        _forward(Pj, v, q)
        for r in range(q):
            total += -2.0 * np.log(Pj[r, r]) + v[r] * v[r]
    return 0.5 * (total - J * log_det_sigma)


@njit(cache=True)
def _large_target(u, args):
    """Log density of u = log tau_c of a large factor k: IG(eta / 2, S / 2) prior on tau_c,
    its Jacobian, and the factor's marginal likelihood with b_k integrated out."""
    log_tau, c, eta, S, A, A_off, e, o, J, q, sigma2, g_count, g_A, g_ee = args
    log_tau[c] = u
    return -0.5 * eta * u - 0.5 * S * np.exp(-u) + _factor_marginal(log_tau, A, A_off, e, o, J, q, sigma2, g_count,
                                                                     g_A, g_ee)


@njit(cache=True)
def _small_target(u, args):
    """Log density of u = log tau_c of a small factor l (its effects in t): IG(eta / 2, S / 2)
    prior, Jacobian, and the marginal likelihood with t (and the large factor being updated)
    integrated out: |Pi_t|^(1/2) |Q|^(-1/2) exp(l'Q^-1 l / 2), where only Q = Q_base +
    exp(-u) on the block's J_l diagonal entries depends on tau (Q_base: Q without them)."""
    Q_base, lin, first, step, Jl, eta, S = args
    P = Q_base.shape[0]
    Q = Q_base.copy()
    inv_tau = np.exp(-u)
    for j in range(Jl):
        i = first + j * step
        Q[i, i] += inv_tau
    if not _chol(Q, P):
        return -np.inf
    w = lin.copy()
    _forward(Q, w, P)
    total = 0.0
    for i in range(P):
        total += -2.0 * np.log(Q[i, i]) + w[i] * w[i]
    return -0.5 * eta * u - 0.5 * S * inv_tau - 0.5 * Jl * u + 0.5 * total


@njit(cache=True)
def _small_variances(rng, Q, lin, Sig, Siginv, S0, sig_off, q, J, large, diagonal, off, blk_start, blk_factor,
                     blk_eta):
    """Slice updates of each small factor's diagonal variances with t integrated out, given
    the precision Q and linear term ``lin`` of t (step 3 of the module docstring; with a large
    factor integrated out too when Q, lin are its collapsed ones). Q is updated in place to
    the new variances' prior blocks."""
    for bl in range(blk_start.shape[0]):
        l = blk_factor[bl]
        if large[l] or not diagonal[l]:
            continue
        c, ql, base = blk_start[bl], q[l], sig_off[l]
        first = off[l] + c
        old = Siginv[base + c * ql + c]
        for j in range(J[l]):
            Q[first + j * ql, first + j * ql] -= old
        u = _slice(rng, np.log(Sig[base + c * ql + c]), _no_large(),
                   (Q, lin, first, ql, J[l], blk_eta[bl], S0[base + c * ql + c]))
        Sig[base + c * ql + c] = np.exp(u)
        Siginv[base + c * ql + c] = np.exp(-u)
        for j in range(J[l]):
            Q[first + j * ql, first + j * ql] += np.exp(-u)


@njit(cache=True)
def _target(u, large, small):
    """The log density being sliced: a large factor's variance (``large`` given, ``small``
    empty: its first array has no entries) or a small factor's (``small`` given)."""
    if small[0].shape[0] > 0:
        return _small_target(u, small)
    return _large_target(u, large)


@njit(cache=True)
def _slice(rng, u0, large, small):
    """One slice-sampling update of u from :func:`_target` (Neal 2003: stepping out by
    :data:`SLICE_WIDTH`, then shrinkage); returns the new u (u0 if shrinkage never lands).
    (One target function with both argument tuples, not a function argument: numba caches
    compiled code only without first-class functions.)"""
    level = _target(u0, large, small) - rng.exponential(1.0)
    lo = u0 - SLICE_WIDTH * rng.random()
    hi = lo + SLICE_WIDTH
    for _ in range(SLICE_MAX_STEPS):
        if _target(lo, large, small) <= level:
            break
        lo -= SLICE_WIDTH
    for _ in range(SLICE_MAX_STEPS):
        if _target(hi, large, small) <= level:
            break
        hi += SLICE_WIDTH
    for _ in range(200):
        u = lo + (hi - lo) * rng.random()
        if _target(u, large, small) > level:
            return u
        if u < u0:
            lo = u
        else:
            hi = u
    return u0


@njit(cache=True)
def _no_large():
    """An empty large-factor argument tuple, of :func:`_large_target`'s types. Its integers are
    int64, not literals: a tuple of literal integers is a type of its own, which would compile
    :func:`_slice` and its callees twice."""
    z, n = np.zeros(0), np.int64(0)
    return (z, n, 0.0, 0.0, z, n, z, n, n, n, 1.0, z, z, z)


@njit(cache=True)
def _no_small():
    """An empty small-factor argument tuple, of :func:`_small_target`'s types (int64 integers,
    as :func:`_no_large`)."""
    return (np.zeros((0, 0)), np.zeros(0), np.int64(0), np.int64(1), np.int64(0), 0.0, 0.0)


# -- pieces of the sweep -----------------------------------------------------------------------

@njit(cache=True)
def _block_inverse(Sig, Siginv, sig_off, q, blk_start, blk_size, blk_factor, k):
    """Siginv of factor k = the inverse of its block-diagonal Sigma, block by block."""
    qk = q[k]
    base = sig_off[k]
    for i in range(qk * qk):
        Siginv[base + i] = 0.0
    for bl in range(blk_start.shape[0]):
        if blk_factor[bl] != k:
            continue
        s0, n = blk_start[bl], blk_size[bl]
        M = np.zeros((n, n))
        for r in range(n):
            for c in range(n):
                M[r, c] = Sig[base + (s0 + r) * qk + s0 + c]
        if not _chol(M, n):
            return False
        inv = np.zeros((n, n))
        _inverse_from_chol(M, inv, n)
        for r in range(n):
            for c in range(n):
                Siginv[base + (s0 + r) * qk + s0 + c] = inv[r, c]
    return True


@njit(cache=True)
def _conjugate_blocks(rng, Sig, sig_off, q, J, values, o, blk_start, blk_size, blk_factor, blk_eta, S0, k):
    """Sigma_k[block] | effects ~ IW(eta_b + J_k, S0_k[block] + sum_j b_jb b_jb') for every
    block of factor k; effects level-major in ``values`` from ``o``."""
    qk, Jk, base = q[k], J[k], sig_off[k]
    for bl in range(blk_start.shape[0]):
        if blk_factor[bl] != k:
            continue
        s0, n = blk_start[bl], blk_size[bl]
        S = np.zeros((n, n))
        for r in range(n):
            for c in range(n):
                S[r, c] = S0[base + (s0 + r) * qk + s0 + c]
        for j in range(Jk):
            for r in range(n):
                vr = values[o + j * qk + s0 + r]
                for c in range(n):
                    S[r, c] += vr * values[o + j * qk + s0 + c]
        if n == 1:
            draw = 0.5 * S[0, 0] / rng.gamma(0.5 * (blk_eta[bl] + Jk), 1.0)
            Sig[base + s0 * qk + s0] = draw
            continue
        D, ok = _inverse_wishart(rng, blk_eta[bl] + Jk, S, n)
        if not ok:
            return False
        for r in range(n):
            for c in range(n):
                Sig[base + (s0 + r) * qk + s0 + c] = D[r, c]
    return True


@njit(cache=True)
def _draw_t(rng, Q, lin, P):
    """t ~ MVN(Q^-1 lin, Q^-1), Q overwritten by its Cholesky factor; (t, ok)."""
    if not _chol(Q, P):
        return lin, False
    x = lin.copy()
    _forward(Q, x, P)
    for i in range(P):
        x[i] += rng.standard_normal()
    _backward(Q, x, P)
    return x, True


@njit(cache=True)
def _t_precision(G, sigma2, Pi_fixed, Pim_fixed, Siginv, sig_off, q, J, large, off, p, P):
    """Q = Pi_t + G / sigma2 and the prior part of the linear term, Pi_a m0."""
    Q = G / sigma2
    lin = np.zeros(P)
    for r in range(p):
        lin[r] = Pim_fixed[r]
        for c in range(p):
            Q[r, c] += Pi_fixed[r, c]
    for l in range(q.shape[0]):
        if large[l]:
            continue
        ql, base = q[l], sig_off[l]
        for j in range(J[l]):
            o = off[l] + j * ql
            for r in range(ql):
                for c in range(ql):
                    Q[o + r, o + c] += Siginv[base + r * ql + c]
    return Q, lin


@njit(cache=True)
def residual_ssr(t, b, G, A, W_ptr, W_col, W_val, C_ptr, C_col, C_val, u_ref_t, rtr, Xtr_t, Xtr_b,
                 q, J, large, off, A_off):
    """SSR(u) = r'Wr - 2 d'X'Wr + d'M d, d = (t - t_ref, b) (:mod:`multilevel.blockstats`)."""
    P = t.shape[0]
    d = t - u_ref_t
    total = rtr
    for i in range(P):
        total -= 2.0 * d[i] * Xtr_t[i]
        gi = 0.0
        for c in range(P):
            gi += G[i, c] * d[c]
        total += d[i] * gi
    for row in range(b.shape[0]):
        br = b[row]
        total -= 2.0 * br * Xtr_b[row]
        wt = 0.0
        for e in range(W_ptr[row], W_ptr[row + 1]):
            wt += W_val[e] * d[W_col[e]]
        cb = 0.0
        for e in range(C_ptr[row], C_ptr[row + 1]):
            cb += C_val[e] * b[C_col[e]]
        total += br * (2.0 * wt + cb)
    for k in range(q.shape[0]):
        if not large[k]:
            continue
        qk = q[k]
        for j in range(J[k]):
            o = off[k] + j * qk
            base = A_off[k] + j * qk * qk
            for r in range(qk):
                s = 0.0
                for c in range(qk):
                    s += A[base + r * qk + c] * b[o + c]
                total += b[o + r] * s
    return max(total, 0.0)


@njit(cache=True)
def _ssr_with_cross(t, b, cross, G, A, W_ptr, W_col, W_val, u_ref_t, rtr, Xtr_t, Xtr_b, q, J, large, off, A_off):
    """:func:`residual_ssr` with b'Cb = 2 sum_k b_k' (sum_{l < k} C_kl b_l) from the sums
    ``cross`` gathered during the sweep (each factor's, when its earlier factors were final)."""
    P = t.shape[0]
    d = t - u_ref_t
    total = rtr
    for i in range(P):
        total -= 2.0 * d[i] * Xtr_t[i]
        gi = 0.0
        for c in range(P):
            gi += G[i, c] * d[c]
        total += d[i] * gi
    for row in range(b.shape[0]):
        br = b[row]
        wt = 0.0
        for i in range(W_ptr[row], W_ptr[row + 1]):
            wt += W_val[i] * d[W_col[i]]
        total += br * (2.0 * wt + 2.0 * cross[row] - 2.0 * Xtr_b[row])
    for k in range(q.shape[0]):
        if not large[k]:
            continue
        qk = q[k]
        for j in range(J[k]):
            o = off[k] + j * qk
            base = A_off[k] + j * qk * qk
            for r in range(qk):
                s = 0.0
                for c in range(qk):
                    s += A[base + r * qk + c] * b[o + c]
                total += b[o + r] * s
    return max(total, 0.0)


@njit(cache=True)
def crossed_sweep(rng, G, Xty_t, Xty_b, A, W_ptr, W_col, W_val, C_ptr, C_col, C_val, u_ref_t, rtr, Xtr_t, Xtr_b,
                  n_obs, p, q, J, large, off, A_off, sig_off, diagonal, blk_start, blk_size, blk_factor,
                  grp, grp_off, grp_count, grp_A, grp_dense, grp_M, Pi_fixed, Pim_fixed, S0, blk_eta, nu0, sigma0_sq,
                  sigma2_known, t, b, Sig, ssr):
    """One sweep (module docstring); returns (t, b, Sigma, sigma2, ssr, status): status 0, or
    1 + the factor whose precision or covariance was not positive definite (K + 1: t's).

    ``sigma2_known`` > 0 holds sigma2 at that value: step 1 and the SSR (returned unchanged)
    are skipped, and nu0, sigma0_sq, n_obs and the reference point (u_ref_t, rtr, Xtr_t,
    Xtr_b) are not read (the Polya-Gamma sweep, :mod:`multilevel.samplers.polya_gamma`);
    0 draws it."""
    t = t.copy()
    b = b.copy()
    Sig = Sig.copy()
    P = t.shape[0]
    K = q.shape[0]
    if sigma2_known > 0.0:
        sigma2 = sigma2_known
    else:
        sigma2 = 0.5 * (nu0 * sigma0_sq + ssr) / rng.gamma(0.5 * (nu0 + n_obs), 1.0)
    Siginv = np.zeros(Sig.shape[0])
    for k in range(K):
        if not _block_inverse(Sig, Siginv, sig_off, q, blk_start, blk_size, blk_factor, k):
            return t, b, Sig, sigma2, ssr, 1 + k
    e = np.zeros(b.shape[0])
    cross = np.zeros(b.shape[0])  # sum over earlier large factors l of C_kl b_l, for the SSR
    any_large = False
    for k in range(K):
        if not large[k]:
            continue
        any_large = True
        qk, Jk, o, base = q[k], J[k], off[k], sig_off[k]
        # Z_k'r_k per level: r_k leaves out the other large factors' effects
        for row in range(o, o + Jk * qk):
            s = Xty_b[row]
            low = 0.0
            for i in range(C_ptr[row], C_ptr[row + 1]):
                cb = C_val[i] * b[C_col[i]]
                s -= cb
                if C_col[i] < o:  # an earlier factor, final for this sweep
                    low += cb
            e[row] = s
            cross[row] = low
        h = Xty_t.copy()
        for l in range(K):
            if l == k or not large[l]:
                continue
            for row in range(off[l], off[l] + J[l] * q[l]):
                bv = b[row]
                for i in range(W_ptr[row], W_ptr[row + 1]):
                    h[W_col[i]] -= W_val[i] * bv
        # a. t with b_k integrated out
        Q, lin = _t_precision(G, sigma2, Pi_fixed, Pim_fixed, Siginv, sig_off, q, J, large, off, p, P)
        for i in range(P):
            lin[i] += h[i] / sigma2
        Pj = np.zeros((qk, qk))
        V = np.zeros((qk, qk))
        v = np.zeros(qk)
        s4 = sigma2 * sigma2
        for j in range(Jk):
            ab = A_off[k] + j * qk * qk
            if qk == 1:  # one term: scalars
                pj = Siginv[base] + A[ab] / sigma2
                v[0] = e[o + j] / (pj * s4)
                row = o + j
                f0 = 1.0 / (pj * s4)
                for i1 in range(W_ptr[row], W_ptr[row + 1]):
                    c1, w1 = W_col[i1], W_val[i1]
                    lin[c1] -= w1 * v[0]
                    if grp_dense[k]:
                        continue
                    f = w1 * f0
                    for i2 in range(W_ptr[row], W_ptr[row + 1]):
                        Q[c1, W_col[i2]] -= f * W_val[i2]
                continue
            for r in range(qk):
                for c in range(qk):
                    Pj[r, c] = Siginv[base + r * qk + c] + A[ab + r * qk + c] / sigma2
            if not _chol(Pj, qk):
                return t, b, Sig, sigma2, ssr, 1 + k
            _inverse_from_chol(Pj, V, qk)
            for r in range(qk):
                acc = 0.0
                for c in range(qk):
                    acc += V[r, c] * e[o + j * qk + c]
                v[r] = acc / s4
            for r in range(qk):
                row = o + j * qk + r
                for i1 in range(W_ptr[row], W_ptr[row + 1]):
                    c1, w1 = W_col[i1], W_val[i1]
                    lin[c1] -= w1 * v[r]
                    for c in range(qk):
                        row2 = o + j * qk + c
                        f = w1 * V[r, c] / s4
                        for i2 in range(W_ptr[row2], W_ptr[row2 + 1]):
                            Q[c1, W_col[i2]] -= f * W_val[i2]
        if grp_dense[k]:  # sum_j W_j W_j' / (P_j sigma2^2) by groups of equal A_j: G_k P^2 work
            for g in range(grp_off[k], grp_off[k + 1]):
                f = 1.0 / ((Siginv[base] + grp_A[g] / sigma2) * s4)
                for r in range(P):
                    for c in range(P):
                        Q[r, c] -= f * grp_M[g, r, c]
        _small_variances(rng, Q, lin, Sig, Siginv, S0, sig_off, q, J, large, diagonal, off, blk_start, blk_factor,
                         blk_eta)
        t_new, ok = _draw_t(rng, Q, lin, P)
        if not ok:
            return t, b, Sig, sigma2, ssr, K + 1
        t = t_new
        # b. the small factors' correlated covariances given their effects in t
        for l in range(K):
            if not large[l] and not diagonal[l]:
                if not _conjugate_blocks(rng, Sig, sig_off, q, J, t, off[l], blk_start, blk_size, blk_factor,
                                         blk_eta, S0, l):
                    return t, b, Sig, sigma2, ssr, 1 + l
                if not _block_inverse(Sig, Siginv, sig_off, q, blk_start, blk_size, blk_factor, l):
                    return t, b, Sig, sigma2, ssr, 1 + l
        # e <- Z_k'(r_k - X_t t) / sigma2
        for row in range(o, o + Jk * qk):
            s = e[row]
            for i in range(W_ptr[row], W_ptr[row + 1]):
                s -= W_val[i] * t[W_col[i]]
            e[row] = s / sigma2
        # c. the variances of a diagonal Sigma_k, b_k still integrated out
        if diagonal[k]:
            log_tau = np.zeros(qk)
            for c in range(qk):
                log_tau[c] = np.log(Sig[base + c * qk + c])
            g0, g1 = grp_off[k], grp_off[k + 1]
            g_ee = np.zeros(g1 - g0)
            if qk == 1:
                for j in range(Jk):
                    g_ee[grp[o + j] - g0] += e[o + j] * e[o + j]
            for bl in range(blk_start.shape[0]):
                if blk_factor[bl] != k:
                    continue
                c = blk_start[bl]
                args = (log_tau, c, blk_eta[bl], S0[base + c * qk + c], A, A_off[k], e, o, Jk, qk, sigma2,
                        grp_count[g0:g1], grp_A[g0:g1], g_ee)
                log_tau[c] = _slice(rng, log_tau[c], args, _no_small())
            for c in range(qk):
                Sig[base + c * qk + c] = np.exp(log_tau[c])
                Siginv[base + c * qk + c] = np.exp(-log_tau[c])
        # d. b_k per level
        for j in range(Jk):
            ab = A_off[k] + j * qk * qk
            if qk == 1:  # one term: scalars
                pj = Siginv[base] + A[ab] / sigma2
                b[o + j] = e[o + j] / pj + rng.standard_normal() / np.sqrt(pj)
                continue
            for r in range(qk):
                for c in range(qk):
                    Pj[r, c] = Siginv[base + r * qk + c] + A[ab + r * qk + c] / sigma2
                v[r] = e[o + j * qk + r]
            if not _chol(Pj, qk):
                return t, b, Sig, sigma2, ssr, 1 + k
            _forward(Pj, v, qk)
            for r in range(qk):
                v[r] += rng.standard_normal()
            _backward(Pj, v, qk)
            for r in range(qk):
                b[o + j * qk + r] = v[r]
        # e. a correlated Sigma_k given b_k
        if not diagonal[k]:
            if not _conjugate_blocks(rng, Sig, sig_off, q, J, b, o, blk_start, blk_size, blk_factor, blk_eta, S0, k):
                return t, b, Sig, sigma2, ssr, 1 + k
            if not _block_inverse(Sig, Siginv, sig_off, q, blk_start, blk_size, blk_factor, k):
                return t, b, Sig, sigma2, ssr, 1 + k
    # 3. without large factors: the small factors' diagonal variances with t integrated out,
    # then t | all, then the correlated ones
    if not any_large:
        Q, lin = _t_precision(G, sigma2, Pi_fixed, Pim_fixed, Siginv, sig_off, q, J, large, off, p, P)
        for i in range(P):
            lin[i] += Xty_t[i] / sigma2
        _small_variances(rng, Q, lin, Sig, Siginv, S0, sig_off, q, J, large, diagonal, off, blk_start, blk_factor,
                         blk_eta)
        t_new, ok = _draw_t(rng, Q, lin, P)
        if not ok:
            return t, b, Sig, sigma2, ssr, K + 1
        t = t_new
        for l in range(K):
            if not diagonal[l]:
                if not _conjugate_blocks(rng, Sig, sig_off, q, J, t, off[l], blk_start, blk_size, blk_factor,
                                         blk_eta, S0, l):
                    return t, b, Sig, sigma2, ssr, 1 + l
    if sigma2_known <= 0.0:
        ssr = _ssr_with_cross(t, b, cross, G, A, W_ptr, W_col, W_val, u_ref_t, rtr, Xtr_t, Xtr_b, q, J, large, off,
                              A_off)
    return t, b, Sig, sigma2, ssr, 0


def level_groups(stats: BlockStats, layout: FactorLayout) -> tuple[np.ndarray, ...]:
    """Levels of each one-term large factor grouped by equal A_j = Z_j'WZ_j (the row count
    for an intercept): (group of each b entry, per factor first group (K + 1), levels per
    group, A of each group, whether the factor uses M_g, M_g), so that the variance moves
    cost O(groups) per evaluation, and the collapsed precision of t, whose level terms
    W_j W_j' / (P_j sigma2^2) depend on the level through A_j only, sums G_k matrices
    c_g M_g instead of one sparse outer product per level where that is cheaper."""
    group = np.full(stats.Xty_b.shape[0], -1, dtype=np.int64)
    offsets, counts, values = [0], [], []
    for k in range(layout.q.shape[0]):
        if layout.large[k] and layout.q[k] == 1:
            a = stats.A[layout.A_off[k]:layout.A_off[k] + layout.J[k]]
            uniq, inverse, count = np.unique(a, return_inverse=True, return_counts=True)
            group[layout.off[k]:layout.off[k] + layout.J[k]] = offsets[-1] + inverse
            counts.append(count.astype(float))
            values.append(uniq)
            offsets.append(offsets[-1] + uniq.shape[0])
        else:
            offsets.append(offsets[-1])
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    offsets = np.array(offsets, dtype=np.int64)
    # per group, M_g = sum_{j in g} W_j W_j' (P x P), where that is cheaper than the sparse
    # per-level products (G_k P^2 < sum_j nnz(W_j)^2) and small enough
    P = stats.G.shape[0]
    nnz = np.diff(stats.W_ptr)
    dense = np.zeros(layout.q.shape[0], dtype=np.bool_)
    budget = GROUPED_PRECISION_NUMBERS
    for k in range(layout.q.shape[0]):
        if layout.large[k] and layout.q[k] == 1:
            n_groups = offsets[k + 1] - offsets[k]
            sparse_cost = float(np.sum(nnz[layout.off[k]:layout.off[k] + layout.J[k]].astype(float) ** 2))
            if n_groups * P * P < sparse_cost and n_groups * P * P <= budget:
                dense[k] = True
                budget -= n_groups * P * P
    M = np.zeros((offsets[-1] if dense.any() else 0, P, P))
    for k in np.flatnonzero(dense):
        for j in range(layout.J[k]):
            row = layout.off[k] + j
            cols = stats.W_col[stats.W_ptr[row]:stats.W_ptr[row + 1]]
            vals = stats.W_val[stats.W_ptr[row]:stats.W_ptr[row + 1]]
            M[group[row]][np.ix_(cols, cols)] += np.outer(vals, vals)
    return group, offsets, cat(counts), cat(values), dense, M


class CrossedGibbs:
    """The kernel: ``init(rng)``, ``step(state, rng)``, ``record(state)`` over :class:`CrossedState`.

    Parameters
    ----------
    stats, layout : :func:`multilevel.blockstats.block_stats`, :func:`~multilevel.blockstats.factor_layout`.
    priors : resolved priors (:func:`multilevel.priors.resolve_crossed_priors`).
    design : the :class:`~multilevel.design.CrossedDesign` (names, mean positions).
    sigma2_known : hold sigma2 at this value (the Polya-Gamma sweep's 1), or None to draw it.
    groups : the levels' grouping for :meth:`step` (default :func:`level_groups` of ``stats``).
    """

    State = CrossedState

    def __init__(self, stats: BlockStats, layout: FactorLayout, priors: Any, design: Any,
                 sigma2_known: float | None = None, groups: tuple[np.ndarray, ...] | None = None):
        self.stats, self.layout, self.priors = stats, layout, priors
        #: sigma2 held at this value (no nu0, sigma0_sq needed), or None to draw it
        self.sigma2_known = sigma2_known
        p = stats.p
        self.names = [f.name for f in design.factors]
        self.factor_terms = [list(f.names) for f in design.factors]
        self.mean_index = [f.mean_index for f in design.factors]
        self.theta_index = np.asarray(design.theta_index, dtype=np.int64)
        self.alpha_index = np.asarray(design.alpha_index, dtype=np.int64)
        one = len(self.names) == 1
        self.sigma_names = ["Sigma" if one else f"Sigma_{n}" for n in self.names]
        self.beta_names = ["beta" if one else f"beta_{n}" for n in self.names]
        #: the per-group variables of a draw (left out by ``group_draws=False``)
        self.group_variables = frozenset(self.beta_names)
        prec = np.zeros((p, p))
        mean = np.zeros(p)
        for idx, m0, cov in ((self.theta_index, priors.mu0, priors.Lambda0),
                             (self.alpha_index, priors.alpha_mean, priors.alpha_cov)):
            if idx.size:
                inv = np.linalg.inv(np.asarray(cov, dtype=float))
                prec[np.ix_(idx, idx)] = 0.5 * (inv + inv.T)
                mean[idx] = np.asarray(m0, dtype=float)
        self._Pi_fixed = prec
        self._Pim_fixed = prec @ mean
        S0 = np.zeros(int(np.sum(layout.q ** 2)))
        eta = np.zeros(layout.block_size.shape[0])
        for k, name in enumerate(self.names):
            qk = int(layout.q[k])
            S = np.asarray(priors.S0[name], dtype=float)
            S0[layout.sig_off[k]:layout.sig_off[k] + qk * qk] = S.ravel()
        for bl in range(eta.shape[0]):
            k = int(layout.block_factor[bl])
            eta[bl] = float(priors.eta0[self.names[k]]) - layout.q[k] + layout.block_size[bl]
        self._S0, self._blk_eta = S0, eta
        self._P = stats.G.shape[0]
        self._groups = level_groups(stats, layout) if groups is None else groups
        self._nb = stats.Xty_b.shape[0]

    # -- pieces ----------------------------------------------------------------------
    def _ssr(self, t: np.ndarray, b: np.ndarray) -> float:
        st, L = self.stats, self.layout
        return float(residual_ssr(t, b, st.G, st.A, st.W_ptr, st.W_col, st.W_val, st.C_ptr, st.C_col, st.C_val,
                                  st.u_ref_t, st.rtr, st.Xtr_t, st.Xtr_b, L.q, L.J, L.large, L.off, L.A_off))

    def init(self, rng: np.random.Generator) -> CrossedState:
        """Start at the pooled least-squares fixed effects (jittered by about a standard error),
        zero group effects, each covariance at its prior scale S0 times a random factor in
        about [0.5, 2], and sigma2 at sigma0_sq times a factor in about [0.8, 1.25]."""
        t, b, Sigma = self.start(rng, self.stats.u_ref_t)
        sigma2 = float(self.priors.sigma0_sq) * float(np.exp(0.1 * rng.standard_normal()))
        return CrossedState(t=t, b=b, Sigma=Sigma, sigma2=sigma2, ssr=self._ssr(t, b))

    def start(self, rng: np.random.Generator, t0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A starting (t, b, Sigma): t0 with its fixed effects jittered by about a standard error
        (the unit-information prior sd / sqrt(N)), zero large-factor effects, each covariance at
        its prior scale S0 times a random factor in about [0.5, 2]."""
        st, L = self.stats, self.layout
        p = st.p
        t = np.array(t0, dtype=float)
        if p:
            sd = np.sqrt(np.diag(np.linalg.inv(self._Pi_fixed)) / max(st.n_obs, 1))
            t[:p] += sd * rng.standard_normal(p)
        Sigma = self._S0 * np.repeat(np.exp(0.35 * rng.standard_normal(len(self.names))), L.q ** 2)
        return t, np.zeros(self._nb), Sigma

    def step(self, state: CrossedState, rng: np.random.Generator) -> CrossedState:
        """One sweep (:func:`crossed_sweep`)."""
        t, b, Sigma, sigma2, ssr = self.sweep(rng, self.stats, self._groups, state.t, state.b, state.Sigma,
                                              float(state.ssr))
        if not np.isfinite(sigma2) or sigma2 <= 0:
            raise FloatingPointError(f"sigma2 drew {sigma2!r} (residual sum of squares {ssr!r})")
        return CrossedState(t=t, b=b, Sigma=Sigma, sigma2=float(sigma2), ssr=float(ssr))

    def sweep(self, rng: np.random.Generator, stats: BlockStats, groups: tuple[np.ndarray, ...], t: np.ndarray,
              b: np.ndarray, Sigma: np.ndarray, ssr: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float,
                                                                          float]:
        """:func:`crossed_sweep` from (t, b, Sigma) on the statistics ``stats`` with the levels
        grouped as ``groups`` (:func:`level_groups`); with ``sigma2_known``, sigma2 held there
        (``ssr`` then not used). Returns (t, b, Sigma, sigma2, ssr); raises FloatingPointError
        naming the factor whose precision or covariance was not positive definite."""
        L = self.layout
        known = self.sigma2_known is not None
        nu0, sigma0_sq = (1.0, 1.0) if known else (float(self.priors.nu0), float(self.priors.sigma0_sq))
        t, b, Sigma, sigma2, ssr, status = crossed_sweep(
            rng, stats.G, stats.Xty_t, stats.Xty_b, stats.A, stats.W_ptr, stats.W_col, stats.W_val, stats.C_ptr,
            stats.C_col, stats.C_val, stats.u_ref_t, stats.rtr, stats.Xtr_t, stats.Xtr_b, stats.n_obs, stats.p, L.q,
            L.J, L.large, L.off, L.A_off, L.sig_off, L.diagonal, L.block_start, L.block_size, L.block_factor,
            *groups, self._Pi_fixed, self._Pim_fixed, self._S0, self._blk_eta, nu0, sigma0_sq,
            float(self.sigma2_known) if known else 0.0, t, b, Sigma, float(ssr))
        if status:
            what = (f"the covariance or level precisions of factor {self.names[status - 1]!r}"
                    if status <= len(self.names) else "the precision of the fixed effects")
            raise FloatingPointError(f"{what} became not positive definite")
        return t, b, Sigma, sigma2, ssr

    def effects(self, state: CrossedState, k: int) -> np.ndarray:
        """(J_k, q_k) group effects b_k of factor k."""
        L = self.layout
        qk, Jk, o = int(L.q[k]), int(L.J[k]), int(L.off[k])
        source = state.b if L.large[k] else state.t
        return source[o:o + Jk * qk].reshape(Jk, qk)

    def location_record(self, state: Any) -> dict[str, np.ndarray]:
        """theta, alpha, and per factor Sigma and beta (= the population mean + b_kj, lme4's
        coef) of any state with fields t, b and Sigma."""
        L, st = self.layout, self.stats
        a = state.t[:st.p]
        if len(self.names) == 1:  # theta spans the factor's terms (0 without a mean), as in one-term fits
            mi = self.mean_index[0]
            theta = np.where(mi >= 0, a[np.maximum(mi, 0)] if a.size else 0.0, 0.0)
        else:
            theta = a[self.theta_index]
        out: dict[str, np.ndarray] = {"theta": theta, "alpha": a[self.alpha_index]}
        for k in range(len(self.names)):
            qk = int(L.q[k])
            out[self.sigma_names[k]] = state.Sigma[L.sig_off[k]:L.sig_off[k] + qk * qk].reshape(qk, qk)
            mean = np.where(self.mean_index[k] >= 0, a[np.maximum(self.mean_index[k], 0)] if a.size else 0.0, 0.0)
            out[self.beta_names[k]] = self.effects(state, k) + mean
        return out

    def record(self, state: CrossedState) -> dict[str, np.ndarray]:
        """:meth:`location_record`, sigma2 and the log-likelihood."""
        st = self.stats
        out = self.location_record(state)
        out["sigma2"] = np.float64(state.sigma2)
        out["loglik"] = np.float64(-0.5 * (st.n_obs * np.log(2 * np.pi * state.sigma2) - st.logw
                                           + state.ssr / state.sigma2))
        return out


__all__ = ["CrossedGibbs", "CrossedState", "crossed_sweep", "residual_ssr"]
