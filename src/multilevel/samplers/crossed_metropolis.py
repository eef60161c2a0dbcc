r"""Metropolis-within-Gibbs for GLMs with several grouping factors (Poisson's default; binomial
and Bernoulli as an option).

Model (:class:`multilevel.design.CrossedDesign`, canonical link)::

    y_i ~ Poisson(exp(eta_i))   or   Binomial(n_i, logistic(eta_i)),
    eta_i = offset_i + F_i a + sum_k Z_ki b_k,j_k(i)
    b_kj ~ MVN(0, Sigma_k) (block-diagonal by term),  a ~ MVN(m0, Pi_a^-1),
    Sigma_k[block] ~ IW(eta_kb, S0_k[block])

with the priors of the Polya-Gamma sampler (:func:`multilevel.priors.default_crossed_glm_priors`,
on the link scale). Write ll(eta) = sum_i [y_i eta_i - c(eta_i)], c = exp (Poisson) or
n_i log(1 + exp) (logit), without the constants log y_i! and log binomial(n_i, y_i).

One sweep (:func:`mwg_sweep`, one compiled call; eta of every row is recomputed once at its
start and then kept up to date move by move, each move's change taken by the next pass over
the rows rather than by a pass of its own):

1. **Fixed effects a**, one joint move. With g the gradient of the log conditional density
   at a and P = Pi_a + F'WF (W = the Fisher weights c''(eta_i)), the rotation about the
   Newton step (the one-factor kernel's proposal, :mod:`multilevel.samplers.metropolis`)

       m(a) = a + P(a)^-1 g(a),   a* = m + cos(phi) (a - m) + sin(phi) L'^-1 z,   L L' = P(a),

   accepted with the Metropolis-Hastings ratio (the reverse proposal from a* through its own
   Newton step): two passes over the rows (at a and at a*); eta takes F d in the next pass.
   phi = pi / 2 is an independent draw from the Laplace approximation, small phi a Langevin
   step; phi is adapted in warm-up (Robbins-Monro on log phi towards :data:`TARGET`, at most
   :data:`PHI_MAX`) and frozen after.
2. **Each factor k's levels**, all at once, independently per level: the other factors and
   the fixed part are an offset, the conditional of b_kj involves the level's rows only and is
   log-concave, and each level takes the same rotation proposal with P_j = Sigma_k^-1 + Z_kj'W Z_kj,
   g_j = Z_kj'(y - mu) - Sigma_k^-1 b_kj, one phi per factor. The per-level sums (ll_j, g_j and
   Z_kj'W Z_kj) come from passes over the rows in their order, each row adding into its level's
   sums through the factor's index (:func:`level_terms`): at the current values (the pass that
   also brings eta up to date) and at the proposals; eta takes the accepted changes in the next
   pass. For Poisson with the intercept alone (:func:`intercept_only`), eta_i + d for a level's
   rows gives ll_j + d Sy_j - (e^d - 1) Smu_j, g_j = Sy_j - e^d Smu_j and H_j = e^d Smu_j
   (Sy_j, Smu_j the sums of y and mu over the level's rows): no pass at the proposals, and for
   the first factor the sums at the current values come from the fixed move's two passes (at a
   and a*, the one of the accepted value taken): no pass of its own. An observation-level
   factor's levels are single rows: per-row proposals, no grouping.
3. **Sigma_k | b_k**: conjugate inverse-Wishart per block, IW(eta_kb + J_k, S0_kb + sum_j b_jb b_jb'),
   (:func:`multilevel.samplers.crossed._conjugate_blocks`).
4. **Scale moves** (partially non-centred, for each one-column block c of factor k): for
   s ~ N(0, h_kc^2), b_k[:, c] -> e^s b_k[:, c], Sigma_k[c, c] -> e^{2s} Sigma_k[c, c]. The map's
   Jacobian e^{J_k s} cancels the change e^{-J_k s} of the levels' prior, so the ratio is
   ll(eta*) - ll(eta) + log p(tau*) - log p(tau) + 2 s (tau's Jacobian), p = IG(eta_kb / 2, S0 / 2).
   One pass over the rows in their order (the level through the factor's index), a second to
   update eta if accepted (none for the intercept alone of a Poisson factor: ll from the
   level sums Sy_j, Smu_j as in step 2, :func:`scale_move_sums`); h_kc adapted in warm-up
   towards 0.44 and frozen. It moves the
   variance with the effects where the data say little about each level (an observation-level
   factor, small broods), where the conjugate draw given b_k alone is slow.
5. **Shift moves** (exact Gibbs along a line, no row pass): for each column c of factor k whose
   covariate is also a fixed column m (the intercept, or a slope that is a fixed term: the same
   values in every row), a_m -> a_m + d, b_k[:, c] -> b_k[:, c] - d leaves every eta unchanged, so
   d | rest has the density of the priors alone, Gaussian: precision Pi_a[m, m] + J_k (Sigma_k^-1)_cc,
   linear term sum_j (Sigma_k^-1 b_kj)_c - (Pi_a (a - m0))_m. Drawn exactly, O(J_k). This keeps
   the intercept and the factors' means mixing (the unit-Jacobian translation along one direction
   is a Gibbs step in linear coordinates having it as an axis). The fixed columns of a move are all
   those that are a level multiple of the factor's covariate, F[i, m] = w_j Z_k[i, c] within every
   level j (:func:`level_multiples`): a level-level predictor (grouseticks' YEAR per brood, cHEIGHT
   per location; every column for an observation-level factor), moved jointly as a_D + d,
   b_k[j, c] - w_j'd, d ~ N(Q^-1 l, Q^-1) with Q = Pi_DD + (Sigma_k^-1)_cc sum_j w_j w_j' and
   l = (Pi_a m0 - Pi_a a)_D + sum_j w_j (Sigma_k^-1 b_kj)_c: hierarchical centring of those
   coefficients, without which they trade off against the level effects for hundreds of sweeps.
6. **Nested shift moves** (exact Gibbs, no row pass): for a factor k nested in a factor l (each
   level of k within one level of l: broods in locations, observations in subjects) and a column
   of each with the same covariate, b_l[m, c'] + d_m, b_k[j, c] - d_m for the levels j in m leaves
   eta unchanged; the d_m are independent Gaussians given the rest (:func:`nested_move`). This
   makes the two variances mix (measured on the grouseticks-shaped set: min bulk ESS of the
   variances 43 -> 420 per 4000 draws).
7. **Nested variance moves** (partially non-centred, no row pass): for two factors of
   :func:`intercept_only` (Poisson, the intercept alone), the inner one nested in the outer
   (broods in locations, observations in groups; exactly two factors), a random walk on
   log tau_in (then one on log tau_out), tau* = tau e^{2s}, s ~ N(0, h^2), that moves all the
   effects of both factors with it (:func:`nested_scale_move`). Given a (and the offset), inner
   level j's rows enter the likelihood through u_j = b_in,j + b_out,parent(j) alone, as
   Sy_j u_j - M_j e^{u_j} (M_j the sum of exp(the rest of eta) over its rows). Approximate it by
   h_j u_j - H_j u_j^2 / 2, expanded at u0_j = log((Sy_j + 1/2) / M_j): H_j = Sy_j + 1/2,
   h_j = Sy_j - H_j + H_j u0_j. With the levels' priors this is a Gaussian that factorises over
   the outer levels (:func:`nested_laplace`): b_out,l ~ N(m_l, 1 / S_l), S_l = 1 / tau_out +
   sum_{j in l} H_j / (1 + tau_in H_j), S_l m_l = sum_{j in l} h_j / (1 + tau_in H_j), and
   b_in,j | b_out ~ N((h_j - H_j b_out,parent(j)) / P_j, 1 / P_j), P_j = 1 / tau_in + H_j. The move
   holds the standardised residuals e_l = S_l^{1/2} (b_out,l - m_l) and e_j = P_j^{1/2} (b_in,j -
   (h_j - H_j b_out,parent(j)) / P_j) fixed: b*_out,l = m*_l + e_l / S*_l^{1/2}, then b*_in,j
   likewise from b*_out. H_j and h_j depend on Sy_j and M_j only, which the move leaves as they
   are (it changes eta only through the u_j), so the map is deterministic, and its own reverse
   with -s; the Metropolis-Hastings ratio is exact whatever the approximation's quality:
   ll(u*) - ll(u) (sum_j d_j Sy_j - (e^{d_j} - 1) Smu_j with d_j = u*_j - u_j, from the inner
   levels' sums: no pass over the rows) + the change of the levels' priors (J_k log tau_k and
   the quadratic forms) + log p(tau*) - log p(tau) + 2 s + the map's log Jacobian
   sum_l log(S_l / S*_l) / 2 + sum_j log(P_j / P*_j) / 2. Where the levels say little (H_j -> 0)
   it is the non-centred scale move of both factors, where they pin u_j it moves the split of
   u_j between the two factors with the variances: the brood variance's slow direction on
   grouseticks, where most locations hold one or two broods of a few rows. The inner levels' sums
   are those of step 2 (kept from the inner factor's moves, times e^{D} for the outer factor's
   changes since when it comes second); the change d_j is owed to the inner level's rows. Two
   steps h, adapted in warm-up towards 0.44 and frozen (the last two entries of log_step). As
   none of steps 5-7 reads the rows, a sweep makes the pair of moves :data:`NESTED_REPEATS`
   times, with the two factors' shift moves (steps 5 and 6) between: a shift move leaves eta,
   hence Sy_j and Smu_j, as they are, and changes M_j, so H and h are recomputed for each pair
   (:func:`nested_terms`). Measured on the grouseticks-shaped set (4 chains x (1000 + 1000),
   bulk ESS per draw): the brood variance 0.10 without step 7, 0.21 with one pair, 0.37-0.45 with
   three and 0.55-0.64 with five; the population parameters' smallest (then a YEAR effect) 0.10,
   0.21, 0.37 and 0.46-0.51 (eight: 0.47-0.53, for more CPU).

Each move keeps the posterior invariant, so their order does not matter to it (:func:`paired_pass`'s
sweep makes the fixed move last); warm-up (``warmup_step``) adapts the angles and scale steps
from the sweep's acceptance rates and the kept draws come from the frozen kernel ``step``.
The first :data:`GREEDY_SHARE` of warm-up accepts the rotation moves by the target ratio alone
(see :meth:`CrossedMetropolis.warmup_step`). Every pass reads the rows in sequence (in the kernel's
order, sorted by the factor with the most levels, :func:`row_order`); the per-level sums of a
factor are small next to the rows and stay in cache. Grouping the rows by level instead (a
permutation per factor, eta gathered and scattered) was measured slower at scale: at 1e6 rows the
random gather of eta for a 1e3-level factor took 90 ms of a 17 ms pass. A sweep reads the rows
2 (fixed effects, eta computed in the first) + 2 K (levels) + 2 B (scale moves, where kept) times,
less one per Poisson factor with the intercept alone (no proposal pass), one for the first factor
when it is one (its sums from the fixed move's passes) and two per scale move of one: 3 times for
two such factors. With exactly two such factors, the rows sorted by the first and its scale move
off (after warm-up, where its levels pin their effects), the sweep takes the fixed move last and
reads the rows twice (:func:`paired_pass`): one pass computes eta, makes the first factor's level
moves as each level's rows end (they are contiguous) and sums, per level of the second factor, what
its moves and the fixed move's terms at a need (:func:`fixed_terms_from_levels`: the second
factor's changes only scale mu by e^d per level); the second pass is the fixed move's at a*.
Measured (1e6 rows, 1e4 x 1e3 levels, CPU per kept sweep): 9 passes 0.12-0.13 s, 3 passes
0.06 s, 2 passes 0.05 s (under load).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from ..blockstats import BlockStats, FactorLayout
from ..glmlik import _softplus
from ..linalg import copy_into
from .crossed import CrossedGibbs, _backward, _block_inverse, _chol, _conjugate_blocks, _draw_t, _forward

#: acceptance rate the rotation angles adapt towards (the one-factor kernel's Langevin target)
TARGET = 0.574
#: the largest angle: the independent draw from the Laplace approximation
PHI_MAX = 0.5 * np.pi
#: the share of warm-up whose rotation moves leave out the Hastings correction (``warmup_step``)
GREEDY_SHARE = 0.2
#: acceptance rate the scale moves' step sizes adapt towards (a one-dimensional random walk)
SCALE_TARGET = 0.44
#: the scale move of a block is kept after warm-up only where the levels leave at least this share
#: of the variance to the prior, mean_j 1 / (1 + tau H_j) (``CrossedMetropolis.prior_shares``): where
#: the levels' data pin their effects the conjugate draw of tau mixes well and the move's two passes
#: over the rows buy nothing (measured: 1e5 rows with 1e3 x 1e2 levels, shares 0.01 and 0.001, 12 %
#: of the sweep; the grouseticks-shaped set, shares about 0.2, min ESS of the variances 299 -> 420)
SCALE_SHARE = 0.05
#: log h of a block whose scale move is off
SCALE_OFF = -50.0
#: how many times a sweep makes step 7's pair of moves, with the two factors' shift moves (steps 5
#: and 6) between: none of them reads the rows
NESTED_REPEATS = 5


class MWGState(NamedTuple):
    """The chain's state: fixed effects a, the factors' effects b (factor after factor,
    level-major), Sigma (flat, every factor's q_k x q_k), and the proposals' tuning frozen after
    warm-up: log phi per factor and for a (last), log h per covariance block."""

    t: np.ndarray
    b: np.ndarray
    Sigma: np.ndarray
    log_phi: np.ndarray
    log_step: np.ndarray


class FactorRows(NamedTuple):
    """All factors' rows in flat arrays, in the kernel's row order (:func:`row_order`): ``Z``
    (N, sum q_k) their covariates side by side (factor k from column ``z_off[k]``), ``index``
    (K, N) each row's level per factor (int32: every pass reads it)."""

    Z: np.ndarray
    z_off: np.ndarray
    index: np.ndarray


def row_order(design: Any) -> np.ndarray:
    """The kernel's row order: the rows sorted (stably) by the factor with the most levels, so
    that its per-level sums are read and written in sequence (an observation-level factor's
    order is the data's)."""
    sizes = [f.n_levels for f in design.factors]
    return np.argsort(np.asarray(design.factors[int(np.argmax(sizes))].index), kind="stable")


def factor_rows(design: Any, order: np.ndarray | None = None) -> FactorRows:
    """The :class:`FactorRows` of a design with its rows taken in ``order`` (default: the design's)."""
    order = np.arange(design.n_obs) if order is None else np.asarray(order)
    q = [f.q for f in design.factors]
    return FactorRows(np.ascontiguousarray(np.hstack([np.asarray(f.Z, dtype=float)[order] for f in design.factors])),
                      np.concatenate([[0], np.cumsum(q)[:-1]]).astype(np.int64),
                      np.ascontiguousarray(np.vstack([f.index[order] for f in design.factors]), dtype=np.int32))


class ShiftGroups(NamedTuple):
    """The shift moves (step 5): move g shifts factor ``factor[g]``'s column ``col[g]`` against
    the fixed columns ``cols[cols_off[g]:cols_off[g + 1]]`` with per-level weights (level-major,
    from ``W_off[g]`` in ``W``)."""

    factor: np.ndarray
    col: np.ndarray
    cols_off: np.ndarray
    cols: np.ndarray
    W_off: np.ndarray
    W: np.ndarray


def level_multiples(F: np.ndarray, z: np.ndarray, index: np.ndarray, J: int, tol: float = 1e-9
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The fixed columns m with F[i, m] = w_j z_i within every level j (a level-level predictor
    when z is the intercept, the slope's own fixed column when z is a slope, a cross-level
    interaction), and their weights (J, count): w_j the least-squares ratio within the level (0 for
    a level whose z is all 0)."""
    zz = np.bincount(index, weights=z * z, minlength=J)
    cols, weights = [], []
    for m in range(F.shape[1]):
        w = np.divide(np.bincount(index, weights=F[:, m] * z, minlength=J), zz, out=np.zeros(J), where=zz > 0)
        scale = max(1.0, float(np.max(np.abs(F[:, m]), initial=0.0)))
        if np.max(np.abs(F[:, m] - w[index] * z), initial=0.0) <= tol * scale and np.any(w != 0):
            cols.append(m)
            weights.append(w)
    return np.array(cols, dtype=np.int64), (np.column_stack(weights) if weights else np.zeros((J, 0)))


def shift_groups(design: Any) -> ShiftGroups:
    """Every factor column with at least one fixed column that is a level multiple of it
    (:func:`level_multiples`)."""
    F = np.asarray(design.F, dtype=float)
    factor, col, cols, W = [], [], [], []
    for k, f in enumerate(design.factors):
        for c in range(f.q):
            m, w = level_multiples(F, np.asarray(f.Z[:, c], dtype=float), np.asarray(f.index), f.n_levels)
            if m.size:
                factor.append(k)
                col.append(c)
                cols.append(m)
                W.append(np.ascontiguousarray(w).ravel())
    sizes = [len(m) for m in cols]
    W_sizes = [len(w) for w in W]
    return ShiftGroups(np.array(factor, dtype=np.int64), np.array(col, dtype=np.int64),
                       np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                       np.concatenate(cols).astype(np.int64) if cols else np.zeros(0, dtype=np.int64),
                       np.concatenate([[0], np.cumsum(W_sizes)[:-1]]).astype(np.int64) if W else np.zeros(0, np.int64),
                       np.concatenate(W) if W else np.zeros(0))


class NestedShifts(NamedTuple):
    """The nested shift moves (step 6): move g shifts column ``col_out[g]`` of factor
    ``outer[g]`` against column ``col_in[g]`` of factor ``inner[g]`` (the same covariate), each
    inner level within the outer level ``parent[parent_off[g] + j]``."""

    inner: np.ndarray
    col_in: np.ndarray
    outer: np.ndarray
    col_out: np.ndarray
    parent_off: np.ndarray
    parent: np.ndarray


def nested_shifts(design: Any) -> NestedShifts:
    """Every pair (inner factor k, outer factor l) with k nested in l (each level of k within one
    level of l) and a column of each with the same covariate."""
    found = []
    for k, f in enumerate(design.factors):
        for l, g in enumerate(design.factors):
            if k == l:
                continue
            parent = np.full(f.n_levels, -1, dtype=np.int64)
            parent[f.index] = g.index
            if np.any(parent[f.index] != g.index):
                continue
            for c in range(f.q):
                for d in range(g.q):
                    if np.array_equal(f.Z[:, c], g.Z[:, d]):
                        found.append((k, c, l, d, parent))
    col = (lambda i: np.array([x[i] for x in found], dtype=np.int64))
    sizes = [len(x[4]) for x in found]
    return NestedShifts(col(0), col(1), col(2), col(3), np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
                        if found else np.zeros(0, dtype=np.int64),
                        np.concatenate([x[4] for x in found]) if found else np.zeros(0, dtype=np.int64))


# -- per-row pieces ------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _row_terms(code, y, n, e):
    """(y e - c(e), y - c'(e), c''(e)) of one row: log-likelihood, score and Fisher weight.
    ``code`` 2, the negative binomial (NB2) given phi, which ``n`` carries: the part of
    log NB(y | mu = e^e, phi) that depends on e, y e - (y + phi) log(phi + mu), its score
    phi (y - mu) / (phi + mu) and Fisher weight phi mu / (phi + mu)
    (:mod:`multilevel.samplers.sharded`); one exp and one log a row, mu capped at e^700 as
    Poisson's."""
    if code == 0:
        mu = np.exp(min(e, 700.0))
        return y * e - mu, y - mu, mu
    if code == 2:
        mu = np.exp(min(e, 700.0))
        return y * e - (y + n) * np.log(n + mu), n * (y - mu) / (n + mu), n * mu / (n + mu)
    p = 0.5 * (1.0 + np.tanh(0.5 * e))
    return y * e - n * _softplus(e), y - n * p, n * p * (1.0 - p)


@njit(cache=True, inline="always")
def _row_eta(i, offset, F, a, Z, index, z_off, q, b_off, b, ones=None):
    """eta_i = offset_i + F_i a + sum_k Z_ki b_k,index[k, i] (``ones[k]``: Z_k is the intercept,
    not read)."""
    s = offset[i]
    for c in range(F.shape[1]):
        s += F[i, c] * a[c]
    for k in range(q.shape[0]):
        base = b_off[k] + index[k, i] * q[k]
        if ones is not None and ones[k]:
            s += b[base]
            continue
        for c in range(q[k]):
            s += Z[i, z_off[k] + c] * b[base + c]
    return s


@njit(cache=True)
def linear_predictor(offset, F, a, Z, index, z_off, q, b_off, b):
    """eta_i = offset_i + F_i a + sum_k Z_ki b_k,index[k, i] for every row."""
    eta = np.empty(F.shape[0])
    for i in range(F.shape[0]):
        eta[i] = _row_eta(i, offset, F, a, Z, index, z_off, q, b_off, b)
    return eta


@njit(cache=True)
def total_loglik(code, y, n, eta):
    """ll(eta) = sum_i [y_i eta_i - c(eta_i)] (module docstring)."""
    total = 0.0
    for i in range(eta.shape[0]):
        total += _row_terms(code, y[i], n[i], eta[i])[0]
    return total


@njit(cache=True, inline="always")
def _row_pending(i, F, dA, pA, Z, z_off, q, index, b_off, D, pend, ones):
    """The change of eta_i still owed to the moves made since eta was last written: F_i dA (when
    ``pA``) plus Z_ki D_k,index[k, i] for every factor k with ``pend[k]`` (``ones[k]``: its one
    covariate is the intercept, not read)."""
    s = 0.0
    if pA:
        for c in range(F.shape[1]):
            s += F[i, c] * dA[c]
    for k in range(q.shape[0]):
        if pend[k]:
            base = b_off[k] + index[k, i] * q[k]
            if ones[k]:
                s += D[base]
            else:
                for c in range(q[k]):
                    s += Z[i, z_off[k] + c] * D[base + c]
    return s


@njit(cache=True)
def fixed_terms(code, y, n, eta, F, delta, rows=None, lev=None, sync=None):
    """ll, F'(y - mu) and F'WF at eta + F delta: one pass over the rows. With ``rows`` =
    (offset, a, Z, index, z_off, q, b_off, b, ones), eta is first computed afresh in the same pass
    (written to ``eta``; delta is then 0). With ``lev`` = (index_k, Sy, Sw), also per level j of
    that factor the sums of y_i and of the Fisher weights W_i (mu_i for Poisson) at eta + F delta.
    With ``sync`` (:func:`level_terms`), eta_i first takes the change still owed to it."""
    N, p = F.shape
    ll, g, H = 0.0, np.zeros(p), np.zeros((p, p))
    for i in range(N):
        if rows is not None:
            eta[i] = _row_eta(i, rows[0], F, rows[1], rows[2], rows[3], rows[4], rows[5], rows[6], rows[7], rows[8])
        elif sync is not None:
            eta[i] += _row_pending(i, F, sync[2], sync[3], sync[1], sync[4], sync[5], sync[6], sync[7], sync[8],
                                   sync[9], sync[10])
        e = eta[i]
        for c in range(p):
            e += F[i, c] * delta[c]
        l, r, w = _row_terms(code, y[i], n[i], e)
        ll += l
        if lev is not None:
            j = lev[0][i]
            lev[1][j] += y[i]
            lev[2][j] += w
        add_fixed_row(F, i, r, w, g, H)
    mirror_lower(H)
    return ll, g, H


@njit(cache=True, inline="always")
def add_fixed_row(F, i, r, w, g, H):
    """Row i's part of the fixed move's terms: g += F_i r_i, and F_i F_i' w_i to H's lower
    triangle (:func:`mirror_lower` completes it)."""
    for c in range(F.shape[1]):
        g[c] += F[i, c] * r
        wc = w * F[i, c]
        for d in range(c + 1):
            H[c, d] += wc * F[i, d]


@njit(cache=True, inline="always")
def mirror_lower(H):
    """H's upper triangle from its lower one."""
    for c in range(H.shape[0]):
        for d in range(c):
            H[d, c] = H[c, d]


@njit(cache=True)
def level_terms(code, y, n, eta, Z, zc, qk, index_k, Jk, delta, sync=None, one=False):
    """Per level j of one factor: ll_j, Z_j'(y - mu) and Z_j'WZ_j at eta_i + Z_i delta_j, in one
    pass over the rows in their order, each row adding into its level's sums (``index_k``): the
    per-level sums are small enough to stay in cache, and the rows are read in sequence. With
    ``sync`` = (F, Z, dA, pA, z_off, q, index, b_off, D, pend, ones), eta_i first takes the change
    still owed to it (:func:`_row_pending`) in the same pass, written back to ``eta``. ``one``:
    the factor's one covariate is the intercept (:func:`intercept_only`), not read."""
    ll, g, H = np.zeros(Jk), np.zeros((Jk, qk)), np.zeros((Jk, qk, qk))
    for i in range(y.shape[0]):
        j = index_k[i]
        e = eta[i]
        if sync is not None:
            e += _row_pending(i, sync[0], sync[2], sync[3], sync[1], sync[4], sync[5], sync[6], sync[7], sync[8],
                              sync[9], sync[10])
            eta[i] = e
        if one:
            e += delta[j, 0]
            l, res, w = _row_terms(code, y[i], n[i], e)
            ll[j] += l
            g[j, 0] += res
            H[j, 0, 0] += w
            continue
        for c in range(qk):
            e += Z[i, zc + c] * delta[j, c]
        l, res, w = _row_terms(code, y[i], n[i], e)
        ll[j] += l
        for c in range(qk):
            zic = Z[i, zc + c]
            g[j, c] += zic * res
            for d in range(qk):
                H[j, c, d] += w * zic * Z[i, zc + d]
    return ll, g, H


@njit(cache=True)
def apply_pending(eta, F, dA, pA, Z, z_off, q, index, b_off, D, pend, ones):
    """eta_i += the change still owed to it (:func:`_row_pending`), every row."""
    for i in range(eta.shape[0]):
        eta[i] += _row_pending(i, F, dA, pA, Z, z_off, q, index, b_off, D, pend, ones)


@njit(cache=True)
def clear_pending(dA, D, b_off, q, J, pend):
    """Nothing owed any more (after a pass that applied it): dA and the pending factors' D zeroed."""
    dA[:] = 0.0
    for k in range(q.shape[0]):
        if pend[k]:
            D[b_off[k]:b_off[k] + J[k] * q[k]] = 0.0
            pend[k] = False


# -- the rotation proposal ------------------------------------------------------------------------

@njit(cache=True)
def newton_point(x, g, P):
    """(m, L, ok): the Newton point m = x + P^-1 g and the Cholesky factor L of P."""
    d = x.shape[0]
    L = P.copy()
    if not _chol(L, d):
        return x.copy(), L, False
    v = g.copy()
    _forward(L, v, d)
    _backward(L, v, d)
    return x + v, L, True


@njit(cache=True)
def rotation_draw(rng, x, m, L, phi):
    """x* = m + cos(phi) (x - m) + sin(phi) L'^-1 z, z ~ N(0, I)."""
    d = x.shape[0]
    z = np.empty(d)
    for c in range(d):
        z[c] = rng.standard_normal()
    _backward(L, z, d)
    return m + np.cos(phi) * (x - m) + np.sin(phi) * z


@njit(cache=True)
def rotation_logq(to, x, m, L, phi):
    """log density (up to a constant shared by both directions) of proposing ``to`` from x:
    N(m + cos(phi) (x - m), sin(phi)^2 (L L')^-1)."""
    d = x.shape[0]
    r = to - m - np.cos(phi) * (x - m)
    total = 0.0
    for c in range(d):
        s = 0.0
        for k in range(c, d):
            s += L[k, c] * r[k]
        total += -0.5 * s * s / np.sin(phi) ** 2 + np.log(L[c, c])
    return total


@njit(cache=True)
def gaussian_log_prior(x, Pi, Pim):
    """-x'Pi x / 2 + x'Pi m0, and its gradient Pim - Pi x (loops: no BLAS call for tiny sizes)."""
    d = x.shape[0]
    g = Pim.copy()
    lp = 0.0
    for r in range(d):
        for c in range(d):
            g[r] -= Pi[r, c] * x[c]
        lp += x[r] * (0.5 * (g[r] - Pim[r]) + Pim[r])
    return lp, g


@njit(cache=True)
def laplace_point(x, g_lik, H, Pi, Pim):
    """At x, with the likelihood's gradient g_lik and information H and a Gaussian prior
    (precision Pi, Pi m0 = Pim): (log prior, Newton point m, Cholesky L of Pi + H, ok)."""
    lp, gp = gaussian_log_prior(x, Pi, Pim)
    m, L, ok = newton_point(x, g_lik + gp, Pi + H)
    return lp, m, L, ok


@njit(cache=True)
def rotation_log_ratio(x, xs, ll0, ll1, lp0, lp1, m0, L0, m1, L1, phi, hastings):
    """log of the Metropolis-Hastings ratio of the rotation move x -> xs (module docstring);
    without ``hastings`` the target's ratio alone (the start of warm-up, :data:`GREEDY_SHARE`)."""
    if not hastings:
        return ll1 - ll0 + lp1 - lp0
    return ll1 - ll0 + lp1 - lp0 + rotation_logq(x, xs, m1, L1, phi) - rotation_logq(xs, x, m0, L0, phi)


# -- the moves --------------------------------------------------------------------------------------

@njit(cache=True)
def fixed_update(rng, code, y, n, eta, F, Pi, Pim, a, phi, hastings, rows=None, lev=None):
    """Step 1 (module docstring) without writing eta: returns (a or a*, accepted). With ``rows``,
    eta is computed first (:func:`fixed_terms`); with ``lev`` = (index_k, Sy, Sw at a, Sw at a*),
    the per-level sums of y and of the Fisher weights at a and at a* of that factor come along."""
    p = a.shape[0]
    if lev is None:
        ll0, g0, H0 = fixed_terms(code, y, n, eta, F, np.zeros(p), rows)
        return fixed_step(rng, code, y, n, eta, F, Pi, Pim, a, phi, hastings, ll0, g0, H0)
    ll0, g0, H0 = fixed_terms(code, y, n, eta, F, np.zeros(p), rows, (lev[0], lev[1], lev[2]))
    return fixed_step(rng, code, y, n, eta, F, Pi, Pim, a, phi, hastings, ll0, g0, H0,
                      (lev[0], np.zeros(lev[1].shape[0]), lev[3]))


@njit(cache=True)
def fixed_step(rng, code, y, n, eta, F, Pi, Pim, a, phi, hastings, ll0, g0, H0, lev=None, sync=None):
    """Step 1 from the terms at a (ll0, g0, H0 of :func:`fixed_terms`): one pass at a*, with
    ``lev`` and ``sync`` as :func:`fixed_terms`'s. Returns (a or a*, accepted); eta not written
    with the move's change."""
    lp0, m0, L0, ok = laplace_point(a, g0, H0, Pi, Pim)
    if not ok:
        return a, False
    xs = rotation_draw(rng, a, m0, L0, phi)
    ll1, g1, H1 = fixed_terms(code, y, n, eta, F, xs - a, None, lev, sync)
    lp1, m1, L1, ok = laplace_point(xs, g1, H1, Pi, Pim)
    if not ok or not np.log(rng.random()) < rotation_log_ratio(a, xs, ll0, ll1, lp0, lp1, m0, L0, m1, L1, phi,
                                                                             hastings):
        return a, False
    return xs, True


@njit(cache=True)
def fixed_move(rng, code, y, n, eta, F, Pi, Pim, a, phi, hastings=True):
    """Step 1 (module docstring); updates eta in place. Returns (a, accepted)."""
    xs, moved = fixed_update(rng, code, y, n, eta, F, Pi, Pim, a, phi, hastings)
    if moved:
        d = xs - a
        for i in range(eta.shape[0]):
            for c in range(a.shape[0]):
                eta[i] += F[i, c] * d[c]
    return xs, moved


@njit(cache=True)
def intercept_only(code, Z, zc, qk):
    """Whether the factor's level moves take the closed form of :func:`level_update`: Poisson,
    one covariate, and it is the intercept (1 in every row)."""
    if code != 0 or qk != 1:
        return False
    for i in range(Z.shape[0]):
        if Z[i, zc] != 1.0:
            return False
    return True


@njit(cache=True, inline="always")
def _ones_step(x, sinv, cphi, s2, sy, smu, z, u, hastings):
    """The rotation move of one level of a factor of :func:`intercept_only` from the level's sums
    Sy and Smu at b_j = x (prior precision sinv, angle phi: cphi = cos phi, s2 = sin^2 phi), with
    z ~ N(0, 1) and u ~ U(0, 1): eta_i + d for its rows gives ll_j + d Sy - (e^d - 1) Smu and
    g = Sy - e^d Smu, H = e^d Smu. Returns (accepted, d (0 if not), Smu at the new value)."""
    P0 = sinv + smu
    m0 = x + (sy - smu - sinv * x) / P0
    d = m0 + cphi * (x - m0) + np.sqrt(s2 / P0) * z - x
    xs = x + d
    smu1 = np.exp(d) * smu
    P1 = sinv + smu1
    m1 = xs + (sy - smu1 - sinv * xs) / P1
    r0 = xs - m0 - cphi * (x - m0)
    r1 = x - m1 - cphi * (xs - m1)
    log_r = d * sy - np.expm1(d) * smu - 0.5 * sinv * (xs * xs - x * x)
    if hastings:
        log_r += 0.5 * np.log(P1 / P0) - 0.5 * (P1 * r1 * r1 - P0 * r0 * r0) / s2
    if np.log(u) < log_r:
        return True, d, smu1
    return False, 0.0, smu


@njit(cache=True)
def level_update(rng, code, y, n, eta, Z, zc, qk, index_k, Jk, b, o, Siginv_k, phi, hastings, ll0, g0, H0, ones,
                 prop):
    """Step 2 for one factor from its per-level sums at the current values (ll0, g0, H0 of
    :func:`level_terms`): every level's rotation move at once, each accepted on its own; b updated
    in place, eta not: ``prop`` (Jk, qk) receives each level's change (0 where rejected), the
    change of eta_i being Z_i prop[index_k[i]]. Returns the share of levels accepted.

    ``ones`` (:func:`intercept_only`): Poisson with the intercept alone, where eta_i + d for the
    level's rows gives ll_j + d Sy_j - (e^d - 1) Smu_j, g_j = Sy_j - e^d Smu_j, H_j = e^d Smu_j
    from the sums Smu_j = H0_j and Sy_j = g0_j + H0_j: no pass over the rows at the proposals, and
    g0, H0 are updated in place to the sums at the new values."""
    accepted = 0
    if qk == 1 and ones:
        sinv, cphi, s2 = Siginv_k[0, 0], np.cos(phi), np.sin(phi) ** 2
        z = np.empty(Jk)
        for j in range(Jk):
            z[j] = rng.standard_normal()
        for j in range(Jk):
            smu = H0[j, 0, 0]
            sy = g0[j, 0] + smu
            ok, d, smu1 = _ones_step(b[o + j], sinv, cphi, s2, sy, smu, z[j], rng.random(), hastings)
            prop[j, 0] = d
            if ok:
                accepted += 1
                b[o + j] += d
                g0[j, 0] = sy - smu1
                H0[j, 0, 0] = smu1
    elif qk == 1:  # scalars: the same move without small-matrix work
        sinv, cphi, s2 = Siginv_k[0, 0], np.cos(phi), np.sin(phi) ** 2
        m0 = np.empty(Jk)
        for j in range(Jk):
            x = b[o + j]
            P = sinv + H0[j, 0, 0]
            m0[j] = x + (g0[j, 0] - sinv * x) / P
            prop[j, 0] = m0[j] + cphi * (x - m0[j]) + np.sqrt(s2 / P) * rng.standard_normal() - x
        ll1, g1, H1 = level_terms(code, y, n, eta, Z, zc, qk, index_k, Jk, prop)
        for j in range(Jk):
            u = rng.random()
            x = b[o + j]
            xs = x + prop[j, 0]
            P0, P1 = sinv + H0[j, 0, 0], sinv + H1[j, 0, 0]
            m1 = xs + (g1[j, 0] - sinv * xs) / P1
            r0 = xs - m0[j] - cphi * (x - m0[j])
            r1 = x - m1 - cphi * (xs - m1)
            log_r = ll1[j] - ll0[j] - 0.5 * sinv * (xs * xs - x * x)
            if hastings:
                log_r += 0.5 * np.log(P1 / P0) - 0.5 * (P1 * r1 * r1 - P0 * r0 * r0) / s2
            if np.log(u) < log_r:
                accepted += 1
                b[o + j] = xs
            else:
                prop[j, 0] = 0.0
    else:
        zero = np.zeros(qk)
        x = np.empty(qk)
        lp0 = np.zeros(Jk)
        M0 = np.zeros((Jk, qk))
        Ls = np.zeros((Jk, qk, qk))
        valid = np.ones(Jk, dtype=np.bool_)
        for j in range(Jk):
            for c in range(qk):
                x[c] = b[o + j * qk + c]
            lp, m, L, ok = laplace_point(x, g0[j], H0[j], Siginv_k, zero)
            if not ok:
                valid[j] = False
                prop[j] = 0.0
                continue
            lp0[j] = lp
            copy_into(M0[j], m)
            copy_into(Ls[j], L)
            copy_into(prop[j], rotation_draw(rng, x, m, L, phi) - x)
        ll1, g1, H1 = level_terms(code, y, n, eta, Z, zc, qk, index_k, Jk, prop)
        for j in range(Jk):
            u = rng.random()
            if not valid[j]:
                prop[j] = 0.0
                continue
            for c in range(qk):
                x[c] = b[o + j * qk + c]
            xs = x + prop[j]
            lp1, m1, L1, ok = laplace_point(xs, g1[j], H1[j], Siginv_k, zero)
            if ok and np.log(u) < rotation_log_ratio(x, xs, ll0[j], ll1[j], lp0[j], lp1, M0[j], Ls[j], m1, L1, phi,
                                                 hastings):
                accepted += 1
                for c in range(qk):
                    b[o + j * qk + c] = xs[c]
            else:
                prop[j] = 0.0
    return accepted / max(Jk, 1)


@njit(cache=True)
def level_move(rng, code, y, n, eta, Z, zc, qk, index_k, Jk, b, o, Siginv_k, phi, hastings=True):
    """Step 2 for one factor (:func:`level_update`, its sums computed here); updates b[o:o + Jk qk]
    and eta in place. Returns the share of levels accepted."""
    ll0, g0, H0 = level_terms(code, y, n, eta, Z, zc, qk, index_k, Jk, np.zeros((Jk, qk)))
    prop = np.zeros((Jk, qk))
    share = level_update(rng, code, y, n, eta, Z, zc, qk, index_k, Jk, b, o, Siginv_k, phi, hastings, ll0, g0, H0,
                         intercept_only(code, Z, zc, qk), prop)
    for i in range(eta.shape[0]):
        j = index_k[i]
        for c in range(qk):
            eta[i] += Z[i, zc + c] * prop[j, c]
    return share


@njit(cache=True)
def scale_move_sums(rng, b, o, Jk, g0, H0, D, Sig, pos, eta_b, S0_cc, h):
    """Step 4 for a factor of :func:`intercept_only` (one column, Sigma_k at Sig[pos]) from its
    per-level sums at the current values (g0 = Sy - Smu, H0 = Smu, :func:`level_update`): b_j ->
    e^s b_j changes the level's eta by f b_j (f = e^s - 1), ll_j by f b_j Sy_j - (e^{f b_j} - 1)
    Smu_j. When accepted, b, Sig and the sums are updated in place and the change of eta added to
    D[o:o + Jk] (owed to eta, :func:`_row_pending`); returns whether it was."""
    s = h * rng.standard_normal()
    f = np.expm1(s)
    dll = 0.0
    for j in range(Jk):
        de = f * b[o + j]
        dll += de * (g0[j, 0] + H0[j, 0, 0]) - np.expm1(de) * H0[j, 0, 0]
    tau = Sig[pos]
    tau_new = tau * np.exp(2.0 * s)
    log_r = dll + variance_log_ratio(0, eta_b, S0_cc, s, tau, tau_new)
    if not np.log(rng.random()) < log_r:
        return False
    scale = np.exp(s)
    for j in range(Jk):
        de = f * b[o + j]
        sy = g0[j, 0] + H0[j, 0, 0]
        H0[j, 0, 0] *= np.exp(de)
        g0[j, 0] = sy - H0[j, 0, 0]
        D[o + j] += de
        b[o + j] *= scale
    Sig[pos] = tau_new
    return True


@njit(cache=True)
def scale_move(rng, code, y, n, eta, Z, zcol, index_k, b, o, Jk, qk, c, Sig, pos, eta_b, S0_cc, h):
    """Step 4 for column c of one factor (a one-column block; Sigma_k[c, c] at Sig[pos]):
    updates b, Sig and eta in place when accepted; returns whether it was."""
    s = h * rng.standard_normal()
    f = np.expm1(s)
    dll = 0.0
    for i in range(eta.shape[0]):
        de = f * Z[i, zcol] * b[o + index_k[i] * qk + c]
        dll += _row_terms(code, y[i], n[i], eta[i] + de)[0] - _row_terms(code, y[i], n[i], eta[i])[0]
    tau = Sig[pos]
    tau_new = tau * np.exp(2.0 * s)
    log_r = dll + variance_log_ratio(0, eta_b, S0_cc, s, tau, tau_new)
    if not np.log(rng.random()) < log_r:
        return False
    for i in range(eta.shape[0]):
        eta[i] += f * Z[i, zcol] * b[o + index_k[i] * qk + c]
    scale = np.exp(s)
    for j in range(Jk):
        b[o + j * qk + c] *= scale
    Sig[pos] = tau_new
    return True


@njit(cache=True)
def shift_move(rng, a, Pi, Pim, b, o, Jk, qk, c, cols, W, Siginv_k):
    """Step 5 for column c of one factor and its fixed columns ``cols`` (D) with per-level
    weights W (Jk, |D|): a_D + d, b_k[j, c] - w_j'd with d drawn from its Gaussian conditional,
    precision Pi_DD + (Sigma_k^-1)_cc sum_j w_j w_j', linear term
    (Pi_a m0 - Pi_a a)_D + sum_j w_j (Sigma_k^-1 b_kj)_c; a and b updated in place."""
    nd = cols.shape[0]
    prec = np.zeros((nd, nd))
    lin = np.zeros(nd)
    for r in range(nd):
        lin[r] = Pim[cols[r]] - Pi[cols[r]] @ a
        for s in range(nd):
            prec[r, s] = Pi[cols[r], cols[s]]
    scc = Siginv_k[c, c]
    for j in range(Jk):
        sb = 0.0
        for r in range(qk):
            sb += Siginv_k[c, r] * b[o + j * qk + r]
        for r in range(nd):
            lin[r] += W[j, r] * sb
            for s in range(nd):
                prec[r, s] += scc * W[j, r] * W[j, s]
    d, ok = _draw_t(rng, prec, lin, nd)
    if not ok:
        return False
    for r in range(nd):
        a[cols[r]] += d[r]
    for j in range(Jk):
        s = 0.0
        for r in range(nd):
            s += W[j, r] * d[r]
        b[o + j * qk + c] -= s
    return True


@njit(cache=True)
def nested_move(rng, b, o_in, q_in, c_in, J_in, o_out, q_out, c_out, J_out, parent, Sinv_in, Sinv_out):
    """Step 6: b_out[l, c_out] + d_l, b_in[j, c_in] - d_parent(j) for every outer level l, each
    d_l from its Gaussian conditional (the priors of the two factors' effects alone):
    precision (Sigma_out^-1)_cc + n_l (Sigma_in^-1)_cc, n_l the inner levels in l, linear term
    sum_{j in l} (Sigma_in^-1 b_in,j)_c - (Sigma_out^-1 b_out,l)_c. b updated in place."""
    prec = np.full(J_out, Sinv_out[c_out, c_out])
    lin = np.zeros(J_out)
    for l in range(J_out):
        for r in range(q_out):
            lin[l] -= Sinv_out[c_out, r] * b[o_out + l * q_out + r]
    for j in range(J_in):
        l = parent[j]
        prec[l] += Sinv_in[c_in, c_in]
        for r in range(q_in):
            lin[l] += Sinv_in[c_in, r] * b[o_in + j * q_in + r]
    d = np.empty(J_out)
    for l in range(J_out):
        d[l] = lin[l] / prec[l] + rng.standard_normal() / np.sqrt(prec[l])
        b[o_out + l * q_out + c_out] += d[l]
    for j in range(J_in):
        b[o_in + j * q_in + c_in] -= d[parent[j]]


@njit(cache=True)
def nested_laplace_sums(tau_in, H, h, parent, J_out):
    """The inner levels' parts of :func:`nested_laplace`'s S_l and S_l m_l: per outer level l,
    sum_{j in l} H_j / (1 + tau_in H_j) and sum_{j in l} h_j / (1 + tau_in H_j) over the inner
    levels given (all of them, or one shard's). Returns (S_in, r_in)."""
    S = np.zeros(J_out)
    r = np.zeros(J_out)
    for j in range(H.shape[0]):
        w = 1.0 / (1.0 + tau_in * H[j])
        S[parent[j]] += H[j] * w
        r[parent[j]] += h[j] * w
    return S, r


@njit(cache=True)
def laplace_of_sums(tau_out, S_in, r_in):
    """:func:`nested_laplace`'s (S, m) from the inner levels' parts (:func:`nested_laplace_sums`):
    S_l = 1 / tau_out + S_in,l, m_l = r_in,l / S_l."""
    S = 1.0 / tau_out + S_in
    return S, r_in / S


@njit(cache=True)
def nested_laplace(tau_in, tau_out, H, h, parent, J_out):
    """The Gaussian approximation of (b_in, b_out) | y, a, tau_in, tau_out of step 7 for two
    nested factors of :func:`intercept_only`, level j of the inner one in level parent[j] of the
    outer, inner level j's log-likelihood approximated by h_j u_j - H_j u_j^2 / 2 in its total
    effect u_j = b_in,j + b_out,parent(j): it factorises over the outer levels, b_out,l ~
    N(m_l, 1 / S_l) and b_in,j | b_out ~ N((h_j - H_j b_out,parent(j)) / P_j, 1 / P_j) with
    P_j = 1 / tau_in + H_j, S_l = 1 / tau_out + sum_{j in l} H_j / (1 + tau_in H_j) and
    S_l m_l = sum_{j in l} h_j / (1 + tau_in H_j). Returns (S, m)."""
    S_in, r_in = nested_laplace_sums(tau_in, H, h, parent, J_out)
    return laplace_of_sums(tau_out, S_in, r_in)


@njit(cache=True)
def nested_terms(b, o_in, J_in, o_out, parent, Sy, Smu):
    """Step 7's approximation of the inner levels' log-likelihoods in u_j = b_in,j +
    b_out,parent(j), h_j u_j - H_j u_j^2 / 2 expanded at u0_j = log((Sy_j + 1/2) / M_j)
    (M_j = Smu_j e^{-u_j}): H_j = Sy_j + 1/2 and h_j = Sy_j - H_j + H_j u0_j. Returns (H, h)."""
    H, h = np.empty(J_in), np.empty(J_in)
    for j in range(J_in):
        H[j] = Sy[j] + 0.5
        h[j] = Sy[j] - H[j] + H[j] * (np.log(H[j] / Smu[j]) + b[o_in + j] + b[o_out + parent[j]])
    return H, h


@njit(cache=True)
def variance_log_ratio(J, eta, S0, s, tau, tau_new):
    """The change of log p(tau) + sum_j log N(b_j | 0, tau) when tau -> tau_new = tau e^{2s} (a
    random walk on log tau, its Jacobian e^{2s} included), but for the levels' quadratic forms
    b_j^2 / tau (the callers add them, or they are unchanged): -(J + eta) s - S0 (1 / tau_new -
    1 / tau) / 2 for the inverse-gamma prior (eta, S0) and J levels. A scale move (b_j -> e^s b_j
    with tau, quadratic forms unchanged) passes J = 0: its map's Jacobian e^{J s} cancels the
    levels' normalising constants e^{-J s}."""
    return -(J + eta) * s - 0.5 * S0 * (1.0 / tau_new - 1.0 / tau)


@njit(cache=True)
def nested_outer_map(b_out, S0, m0, S1, m1, tau_out, tout, jacobian):
    """Step 7's outer levels: b*_out,l = m*_l + (S_l / S*_l)^{1/2} (b_out,l - m_l) (the
    standardised residual kept, :func:`nested_scale_move`). Returns (b*_out, the change of their
    quadratic forms -(b*^2 / tau* - b^2 / tau) / 2 plus the log Jacobian sum_l log(S_l / S*_l) / 2,
    left out when not ``jacobian``)."""
    J_out = b_out.shape[0]
    new_out = np.empty(J_out)
    log_r = 0.0
    jac = 1.0  # the Jacobian's factors, multiplied in chunks (each within e^{+-2|s|}) then logged
    for l in range(J_out):
        x = b_out[l]
        ratio = S0[l] / S1[l]
        new_out[l] = m1[l] + np.sqrt(ratio) * (x - m0[l])
        log_r -= 0.5 * (new_out[l] * new_out[l] / tout - x * x / tau_out)
        jac *= ratio
        if l % 16 == 15:
            log_r += 0.5 * np.log(jac) if jacobian else 0.0
            jac = 1.0
    if jacobian:
        log_r += 0.5 * np.log(jac)
    return new_out, log_r


@njit(cache=True)
def nested_inner_map(b_in, b_out, new_out, parent, H, h, Sy, Smu, tau_in, tin, jacobian):
    """Step 7's inner levels given the outer levels' move b_out -> b*_out (:func:`nested_outer_map`):
    b*_in,j = (h_j - H_j b*_out,parent(j)) / P*_j + (P_j / P*_j)^{1/2} (b_in,j - (h_j - H_j
    b_out,parent(j)) / P_j), P_j = 1 / tau_in + H_j, P*_j = 1 / tin + H_j, over the inner levels
    given (all of them, or one shard's). Returns (b*_in, d = the change of u_j, e^d - 1, and
    sum_j [d_j Sy_j - (e^{d_j} - 1) Smu_j] (the likelihood's change) - the change of the quadratic
    forms (b*^2 / tin - b^2 / tau_in) / 2 + the log Jacobian sum_j log(P_j / P*_j) / 2, left out
    when not ``jacobian``)."""
    J_in = b_in.shape[0]
    new_in, d, em = np.empty(J_in), np.empty(J_in), np.empty(J_in)
    ti0, ti1 = 1.0 / tau_in, 1.0 / tin
    log_r = 0.0
    jac = 1.0
    for j in range(J_in):
        x, par = b_in[j], parent[j]
        P0, P1 = ti0 + H[j], ti1 + H[j]
        new_in[j] = (h[j] - H[j] * new_out[par]) / P1 + np.sqrt(P0 / P1) * (x - (h[j] - H[j] * b_out[par]) / P0)
        d[j] = new_in[j] - x + new_out[par] - b_out[par]
        em[j] = np.expm1(d[j])
        log_r += d[j] * Sy[j] - em[j] * Smu[j] - 0.5 * (new_in[j] * new_in[j] * ti1 - x * x * ti0)
        jac *= P0 / P1
        if j % 16 == 15:
            log_r += 0.5 * np.log(jac) if jacobian else 0.0
            jac = 1.0
    if jacobian:
        log_r += 0.5 * np.log(jac)
    return new_in, d, em, log_r


@njit(cache=True)
def nested_scale_move(rng, b, o_in, J_in, o_out, J_out, parent, Sy, Smu, H, h, Sig, pos_in, pos_out, eta_in, S0_in,
                      eta_out, S0_out, h_in, h_out, D, jacobian=True):
    """Step 7: tau_in -> tau_in e^{2 s_in}, tau_out -> tau_out e^{2 s_out} (s ~ N(0, h^2) each, h = 0
    for a variance left as it is) with (b_in, b_out) moved so that the standardised residuals
    of :func:`nested_laplace`'s approximation (H, h of :func:`nested_terms`),
    e_l = S_l^{1/2} (b_out,l - m_l) and e_j = P_j^{1/2} (b_in,j - (h_j - H_j b_out,parent(j)) / P_j),
    stay as they are (:func:`nested_outer_map`, :func:`nested_inner_map`). H and h depend on Sy_j
    and M_j = Smu_j e^{-u_j} only, which the move leaves unchanged: the map is deterministic, its
    own reverse with -s, and the ratio is exact with the Jacobian prod_l (S_l / S*_l)^{1/2}
    prod_j (P_j / P*_j)^{1/2} (``jacobian=False`` leaves it out: a deliberate error, for the
    tests). The likelihood's change comes from the inner levels' sums Sy_j, Smu_j (d_j the
    change of u_j: d_j Sy_j - (e^{d_j} - 1) Smu_j), no pass over the rows. When accepted: b, Sig
    (Sig[pos_in], Sig[pos_out]) and Smu updated in place, d_j added to D[o_in + j] (owed to the
    inner level's rows). Returns whether it was."""
    s_in, s_out = h_in * rng.standard_normal(), h_out * rng.standard_normal()
    tau_in, tau_out = Sig[pos_in], Sig[pos_out]
    tin, tout = tau_in * np.exp(2.0 * s_in), tau_out * np.exp(2.0 * s_out)
    S0, m0 = nested_laplace(tau_in, tau_out, H, h, parent, J_out)
    S1, m1 = nested_laplace(tin, tout, H, h, parent, J_out)
    b_in, b_out = b[o_in:o_in + J_in], b[o_out:o_out + J_out]
    new_out, lr_out = nested_outer_map(b_out, S0, m0, S1, m1, tau_out, tout, jacobian)
    new_in, d, em, lr_in = nested_inner_map(b_in, b_out, new_out, parent, H, h, Sy, Smu, tau_in, tin, jacobian)
    log_r = variance_log_ratio(J_in, eta_in, S0_in, s_in, tau_in, tin) + \
        variance_log_ratio(J_out, eta_out, S0_out, s_out, tau_out, tout) + lr_out + lr_in
    if not np.log(rng.random()) < log_r:
        return False
    for j in range(J_in):
        D[o_in + j] += d[j]
        Smu[j] *= 1.0 + em[j]
        b[o_in + j] = new_in[j]
    for l in range(J_out):
        b[o_out + l] = new_out[l]
    Sig[pos_in], Sig[pos_out] = tin, tout
    return True


@njit(cache=True)
def paired_pass(y, eta, offset, F, a, Z, index, z_off, q, b_off, b, ones, starts, buf, sinv, phi, z, u, hastings,
                J1):
    """Two Poisson factors of :func:`intercept_only` with the rows sorted by the first (its level
    j's rows from ``starts[j]`` to ``starts[j + 1]``; ``buf`` holds the largest level's): one pass
    that computes eta afresh, makes the first factor's level moves (:func:`_ones_step` with
    the draws z, u, level by level as its rows end: b updated in place, eta written with the
    change) and sums, per level k of the second factor at the new values, y_i eta_i, y_i, mu_i,
    F_i y_i, F_i mu_i and F_i F_i' mu_i (lower triangle): the second factor's level sums, and
    the fixed effects' terms once its changes are known (:func:`fixed_terms_from_levels`).
    Returns (share accepted, those sums)."""
    p = F.shape[1]
    cphi, s2 = np.cos(phi), np.sin(phi) ** 2
    o0 = b_off[0]
    Syeta, Sy, Smu = np.zeros(J1), np.zeros(J1), np.zeros(J1)
    SFy, SFmu, SFFmu = np.zeros((J1, p)), np.zeros((J1, p)), np.zeros((J1, p, p))
    accepted = 0
    for j in range(starts.shape[0] - 1):
        lo, hi = starts[j], starts[j + 1]
        sy, smu = 0.0, 0.0
        for r in range(lo, hi):
            e = _row_eta(r, offset, F, a, Z, index, z_off, q, b_off, b, ones)
            m = np.exp(min(e, 700.0))
            eta[r] = e
            buf[r - lo] = m
            sy += y[r]
            smu += m
        ok, d, _ = _ones_step(b[o0 + j], sinv, cphi, s2, sy, smu, z[j], u[j], hastings)
        if ok:
            accepted += 1
            b[o0 + j] += d
        E = np.exp(d)
        for r in range(lo, hi):
            e = eta[r] + d
            eta[r] = e
            add_level_sums(index[1, r], r, y[r], e, buf[r - lo] * E, F, Syeta, Sy, Smu, SFy, SFmu, SFFmu)
    return accepted / max(starts.shape[0] - 1, 1), Syeta, Sy, Smu, SFy, SFmu, SFFmu


@njit(cache=True, inline="always")
def add_level_sums(k, r, yr, e, m, F, Syeta, Sy, Smu, SFy, SFmu, SFFmu):
    """Row r (response yr, eta e, mu m) into level k's sums of y eta, y, mu, F y, F mu and F F' mu
    (lower triangle): what :func:`fixed_terms_from_levels` reads."""
    Syeta[k] += yr * e
    add_response_sums(k, r, yr, F, Sy, SFy)
    add_mean_sums(k, r, m, F, Smu, SFmu, SFFmu)


@njit(cache=True, inline="always")
def add_response_sums(k, r, yr, F, Sy, SFy):
    """Row r (response yr) into level k's sums of y and F y: the part of :func:`add_level_sums`
    that no move changes."""
    Sy[k] += yr
    for c in range(F.shape[1]):
        SFy[k, c] += F[r, c] * yr


@njit(cache=True, inline="always")
def add_mean_sums(k, r, m, F, Smu, SFmu, SFFmu):
    """Row r (mu m) into level k's sums of mu, F mu and F F' mu (lower triangle): the part of
    :func:`add_level_sums` that moves with eta."""
    Smu[k] += m
    for c in range(F.shape[1]):
        fm = F[r, c] * m
        SFmu[k, c] += fm
        for c2 in range(c + 1):
            SFFmu[k, c, c2] += fm * F[r, c2]


@njit(cache=True)
def fixed_terms_from_levels(Syeta, Sy, Smu, SFy, SFmu, SFFmu, Dk):
    """:func:`fixed_terms` (Poisson) from :func:`paired_pass`'s per-level sums of a factor of
    :func:`intercept_only` whose level k's eta has changed by Dk[k] since: y_i eta_i -> + Dk y_i,
    mu_i -> e^Dk mu_i, so ll = sum_k Syeta_k + Dk Sy_k - e^Dk Smu_k, F'(y - mu) = sum_k SFy_k -
    e^Dk SFmu_k and F'WF = sum_k e^Dk SFFmu_k."""
    J1, p = SFy.shape
    ll, g, H = 0.0, np.zeros(p), np.zeros((p, p))
    for k in range(J1):
        E = np.exp(Dk[k])
        ll += Syeta[k] + Dk[k] * Sy[k] - E * Smu[k]
        for c in range(p):
            g[c] += SFy[k, c] - E * SFmu[k, c]
            for c2 in range(c + 1):
                H[c, c2] += E * SFFmu[k, c, c2]
    for c in range(p):
        for c2 in range(c):
            H[c2, c] = H[c, c2]
    return ll, g, H


@njit(cache=True)
def factor_shifts(rng, a, Pi, Pim, b, b_off, q, J, sig_off, Siginv, shifts, k):
    """Step 5's moves of factor k (``shifts`` = :class:`ShiftGroups`'s arrays); False when a
    precision was not positive definite."""
    sh_factor, sh_col, sh_cols_off, sh_cols, sh_W_off, sh_W = shifts
    qk, Jk = q[k], J[k]
    Sk_inv = Siginv[sig_off[k]:sig_off[k] + qk * qk].reshape((qk, qk)).copy()
    for g in range(sh_factor.shape[0]):
        if sh_factor[g] != k:
            continue
        cols = sh_cols[sh_cols_off[g]:sh_cols_off[g + 1]]
        W = sh_W[sh_W_off[g]:sh_W_off[g] + Jk * cols.shape[0]].reshape((Jk, cols.shape[0]))
        if not shift_move(rng, a, Pi, Pim, b, b_off[k], Jk, qk, sh_col[g], cols, W, Sk_inv):
            return False
    return True


@njit(cache=True)
def mwg_sweep(rng, code, y, n, offset, F, Pi, Pim, Z, z_off, index, b_off, q, J, sig_off, blk_start, blk_size,
              blk_factor, blk_eta, S0, sh_factor, sh_col, sh_cols_off, sh_cols, sh_W_off, sh_W, ns_inner, ns_col_in,
              ns_outer, ns_col_out, ns_parent_off, ns_parent, ones, starts, buf_size, jn, a, b, Sig, log_phi, log_step,
              scale_moves, hastings, jacobian=True, n_nested=1):
    """One sweep (module docstring) from (a, b, Sigma) with the angles exp(log_phi) (per factor,
    then a) and scale steps exp(log_step) (per block); ``ones[k]``: factor k's moves take the
    closed forms (:func:`intercept_only`); ``starts`` (empty: not so) the first factor's rows when
    the sweep may take :func:`paired_pass` (two such factors, the rows sorted by the first, at
    most ``buf_size`` rows a level); ``jn`` the nested pair (an index into the ``ns_`` arrays) whose
    variances take step 7 (:func:`nested_scale_move`, steps exp(log_step[-2:]), the inner's then
    the outer's), -1 for none. Returns (a, b, Sigma, acceptance per factor then a, acceptance per
    block then of step 7's two moves (-1: no such move), status): status 0, 1 + k when factor k's
    covariance was not positive definite, 1 + K when a shift move's precision was not.
    ``jacobian=False`` drops step 7's Jacobian (a deliberate error, for the tests).

    eta is written by the passes that read it: a move's change of eta is owed (dA, D, pend) and
    taken by the next pass over the rows (:func:`_row_pending`), and none is made for the last.
    With :func:`paired_pass` (when the first factor makes no scale move) the sweep is two passes:
    the first factor's moves and the second's sums in one, the second's moves from its sums, the
    fixed move last, its terms at a from the same pass (:func:`fixed_terms_from_levels`) and one
    pass at a*."""
    a, b, Sig = a.copy(), b.copy(), Sig.copy()
    K, p = q.shape[0], a.shape[0]
    Siginv = np.zeros_like(Sig)
    acc = np.zeros(K + 1)
    acc_scale = np.full(log_step.shape[0], -1.0)
    nblk = blk_start.shape[0]
    # step 7: the nested pair's factors and blocks, the inner factor's level sums kept when it comes first
    kin, kout = (ns_inner[jn], ns_outer[jn]) if jn >= 0 else (-1, -1)
    bl_in, bl_out = -1, -1
    for bl in range(nblk):
        if blk_factor[bl] == kin:
            bl_in = bl
        elif blk_factor[bl] == kout:
            bl_out = bl
    Sy_in, Smu_in = np.zeros(J[kin] if jn >= 0 else 0), np.zeros(J[kin] if jn >= 0 else 0)
    for k in range(K):
        if not _block_inverse(Sig, Siginv, sig_off, q, blk_start, blk_size, blk_factor, k):
            return a, b, Sig, acc, acc_scale, 1 + k
    dA, D = np.zeros(p), np.zeros_like(b)
    pA, pend = False, np.zeros(K, dtype=np.bool_)
    # factor 0's sums from the fixed move's passes (at a and at a*) when it takes the closed forms
    Sy0 = np.zeros(J[0] if ones[0] else 0)
    Sw0, Sw1 = np.zeros_like(Sy0), np.zeros_like(Sy0)
    first_known = False
    paired = starts.shape[0] > 0 and p > 0
    for bl in range(blk_start.shape[0]):
        if scale_moves and blk_factor[bl] == 0 and blk_size[bl] == 1 and log_step[bl] > SCALE_OFF:
            paired = False
    if kin == 0:  # paired_pass keeps no sums of the first factor's levels
        paired = False
    Syeta, Sy1, Smu1 = np.zeros(0), np.zeros(0), np.zeros(0)
    SFy, SFmu, SFFmu = np.zeros((0, p)), np.zeros((0, p)), np.zeros((0, p, p))
    if paired:  # eta computed in the first factor's pass, the fixed move last
        eta = np.empty(y.shape[0])
        z0, u0 = np.empty(J[0]), np.empty(J[0])
        for j in range(J[0]):
            z0[j] = rng.standard_normal()
        for j in range(J[0]):
            u0[j] = rng.random()
        acc[0], Syeta, Sy1, Smu1, SFy, SFmu, SFFmu = paired_pass(
            y, eta, offset, F, a, Z, index, z_off, q, b_off, b, ones, starts, np.empty(buf_size), Siginv[sig_off[0]],
            np.exp(log_phi[0]), z0, u0, hastings, J[1])
    elif p:  # eta computed in the fixed move's first pass
        eta = np.empty(y.shape[0])
        rows = (offset, a, Z, index, z_off, q, b_off, b, ones)
        if ones[0]:
            xs, moved = fixed_update(rng, code, y, n, eta, F, Pi, Pim, a, np.exp(log_phi[K]), hastings, rows,
                                     (index[0], Sy0, Sw0, Sw1))
            first_known = True
        else:
            xs, moved = fixed_update(rng, code, y, n, eta, F, Pi, Pim, a, np.exp(log_phi[K]), hastings, rows)
        acc[K] = 1.0 if moved else 0.0
        if moved:
            copy_into(dA, xs - a)
            pA = True
            a = xs
    else:
        eta = linear_predictor(offset, F, a, Z, index, z_off, q, b_off, b)
    for k in range(K):
        qk, Jk, o, base = q[k], J[k], b_off[k], sig_off[k]
        Sk_inv = Siginv[base:base + qk * qk].reshape((qk, qk)).copy()
        if paired and k == 0:  # its moves made in paired_pass
            ll0, g0, H0 = np.zeros(Jk), np.zeros((Jk, 1)), np.zeros((Jk, 1, 1))
        elif paired and k == 1:
            ll0, g0, H0 = np.zeros(Jk), (Sy1 - Smu1).reshape((Jk, 1)), Smu1.copy().reshape((Jk, 1, 1))
        elif k == 0 and first_known:
            Sw = Sw1 if pA else Sw0
            ll0, g0, H0 = np.zeros(Jk), (Sy0 - Sw).reshape((Jk, 1)), Sw.copy().reshape((Jk, 1, 1))
        else:
            ll0, g0, H0 = level_terms(code, y, n, eta, Z, z_off[k], qk, index[k], Jk, np.zeros((Jk, qk)),
                                      (F, Z, dA, pA, z_off, q, index, b_off, D, pend, ones), ones[k])
            clear_pending(dA, D, b_off, q, J, pend)
            pA = False
        if not (paired and k == 0):
            prop = np.zeros((Jk, qk))
            acc[k] = level_update(rng, code, y, n, eta, Z, z_off[k], qk, index[k], Jk, b, o, Sk_inv,
                                  np.exp(log_phi[k]), hastings, ll0, g0, H0, ones[k], prop)
            moves = prop.ravel()
            for i in range(Jk * qk):
                D[o + i] += moves[i]
            pend[k] = True
        if not _conjugate_blocks(rng, Sig, sig_off, q, J, b, o, blk_start, blk_size, blk_factor, blk_eta, S0, k):
            return a, b, Sig, acc, acc_scale, 1 + k
        if scale_moves:
            for bl in range(blk_start.shape[0]):
                if blk_factor[bl] != k or blk_size[bl] != 1 or log_step[bl] <= SCALE_OFF:
                    continue
                c = blk_start[bl]
                pos = base + c * qk + c
                if ones[k]:
                    ok = scale_move_sums(rng, b, o, Jk, g0, H0, D, Sig, pos, blk_eta[bl], S0[pos],
                                         np.exp(log_step[bl]))
                else:
                    apply_pending(eta, F, dA, pA, Z, z_off, q, index, b_off, D, pend, ones)
                    clear_pending(dA, D, b_off, q, J, pend)
                    pA = False
                    ok = scale_move(rng, code, y, n, eta, Z, z_off[k] + c, index[k], b, o, Jk, qk, c, Sig, pos,
                                    blk_eta[bl], S0[pos], np.exp(log_step[bl]))
                acc_scale[bl] = 1.0 if ok else 0.0
        if k == kin and kin < kout:  # the inner level sums at the current values (its shift moves keep eta)
            for j in range(Jk):
                Smu_in[j] = H0[j, 0, 0]
                Sy_in[j] = g0[j, 0] + H0[j, 0, 0]
        if not _block_inverse(Sig, Siginv, sig_off, q, blk_start, blk_size, blk_factor, k):
            return a, b, Sig, acc, acc_scale, 1 + k
        shifts = (sh_factor, sh_col, sh_cols_off, sh_cols, sh_W_off, sh_W)
        if not factor_shifts(rng, a, Pi, Pim, b, b_off, q, J, sig_off, Siginv, shifts, k):
            return a, b, Sig, acc, acc_scale, 1 + K
        if jn >= 0 and k == max(kin, kout):  # step 7, with the shift moves of both factors after each pair
            if k == kin:
                for j in range(Jk):
                    Smu_in[j] = H0[j, 0, 0]
                    Sy_in[j] = g0[j, 0] + H0[j, 0, 0]
            else:  # the outer levels' changes since, the same for all rows of an inner level
                par = ns_parent[ns_parent_off[jn]:ns_parent_off[jn] + J[kin]]
                for j in range(J[kin]):
                    Smu_in[j] *= np.exp(D[b_off[kout] + par[j]])
            acc_scale[nblk], acc_scale[nblk + 1] = 0.0, 0.0
            par = ns_parent[ns_parent_off[jn]:ns_parent_off[jn] + J[kin]]
            for r in range(n_nested):
                Hn, hn = nested_terms(b, b_off[kin], J[kin], b_off[kout], par, Sy_in, Smu_in)
                for m in range(2):
                    ok = nested_scale_move(rng, b, b_off[kin], J[kin], b_off[kout], J[kout], par, Sy_in, Smu_in, Hn, hn,
                                           Sig, sig_off[kin], sig_off[kout], blk_eta[bl_in], S0[sig_off[kin]],
                                           blk_eta[bl_out], S0[sig_off[kout]], np.exp(log_step[nblk]) if m == 0 else 0.0,
                                           np.exp(log_step[nblk + 1]) if m == 1 else 0.0, D, jacobian)
                    acc_scale[nblk + m] += (1.0 if ok else 0.0) / n_nested
                for kk in (kin, kout):
                    if not _block_inverse(Sig, Siginv, sig_off, q, blk_start, blk_size, blk_factor, kk):
                        return a, b, Sig, acc, acc_scale, 1 + kk
                if r < n_nested - 1:
                    for kk in (kin, kout):
                        if not factor_shifts(rng, a, Pi, Pim, b, b_off, q, J, sig_off, Siginv, shifts, kk):
                            return a, b, Sig, acc, acc_scale, 1 + K
                    one, zero = np.int64(1), np.int64(0)  # not literals, which would compile nested_move twice
                    nested_move(rng, b, b_off[kin], one, zero, J[kin], b_off[kout], one, zero, J[kout], par,
                                Siginv[sig_off[kin]:sig_off[kin] + 1].reshape((1, 1)).copy(),
                                Siginv[sig_off[kout]:sig_off[kout] + 1].reshape((1, 1)).copy())
            pend[kin] = True
            if k == kin:
                for j in range(Jk):
                    H0[j, 0, 0] = Smu_in[j]
                    g0[j, 0] = Sy_in[j] - Smu_in[j]
    if paired:
        llf, gf, Hf = fixed_terms_from_levels(Syeta, Sy1, Smu1, SFy, SFmu, SFFmu, D[b_off[1]:b_off[1] + J[1]])
        a, moved = fixed_step(rng, code, y, n, eta, F, Pi, Pim, a, np.exp(log_phi[K]), hastings, llf, gf, Hf, None,
                              (F, Z, dA, pA, z_off, q, index, b_off, D, pend, ones))
        acc[K] = 1.0 if moved else 0.0
    for g in range(ns_inner.shape[0]):
        k, l = ns_inner[g], ns_outer[g]
        nested_move(rng, b, b_off[k], q[k], ns_col_in[g], J[k], b_off[l], q[l], ns_col_out[g], J[l],
                    ns_parent[ns_parent_off[g]:ns_parent_off[g] + J[k]],
                    Siginv[sig_off[k]:sig_off[k] + q[k] * q[k]].reshape((q[k], q[k])).copy(),
                    Siginv[sig_off[l]:sig_off[l] + q[l] * q[l]].reshape((q[l], q[l])).copy())
    return a, b, Sig, acc, acc_scale, 0


class CrossedMetropolis:
    """The kernel: ``init(rng)``, ``step(state, rng)``, ``warmup_step(state, rng, i, n_warmup)``,
    ``record(state)`` over :class:`MWGState`.

    Parameters
    ----------
    design : the :class:`~multilevel.design.CrossedDesign` (Poisson, binomial or Bernoulli).
    layout : :func:`multilevel.blockstats.factor_layout` of it with every factor large
        (``small_columns=0``): b holds every factor's effects, t the fixed effects.
    priors : resolved priors (:func:`multilevel.priors.resolve_crossed_priors`).
    a_start : the fixed effects the chains start near (the pooled ML fit).
    code : the family's log-likelihood code (:data:`multilevel.families.CODES`).
    scale_moves : make the scale moves (step 4 of the module docstring).
    nested_scale_moves : make step 7's moves where the design has them (:attr:`joint`).
    """

    State = MWGState

    def __init__(self, design: Any, layout: FactorLayout, priors: Any, a_start: np.ndarray, code: int,
                 scale_moves: bool = True, nested_scale_moves: bool = True):
        if not np.all(layout.large):
            raise ValueError("the Metropolis kernel keeps every factor's effects in b: use factor_layout(design, 0)")
        from .polya_gamma import singleton_groups

        self.layout, self.priors, self.code, self.scale_moves = layout, priors, int(code), bool(scale_moves)
        #: the rows in the kernel's order (:func:`row_order`); eta and the arrays below follow it
        self.order = row_order(design)
        self.rows = factor_rows(design, self.order)
        self.y = np.ascontiguousarray(np.asarray(design.y, dtype=float)[self.order])
        self.trials = np.ascontiguousarray(np.asarray(design.trials, dtype=float)[self.order])
        self.offset = np.ascontiguousarray(np.asarray(design.offset, dtype=float)[self.order])
        self.F = np.ascontiguousarray(np.asarray(design.F, dtype=float)[self.order])
        p = self.F.shape[1]
        nb = int(np.sum(layout.J * layout.q))
        zeros_ptr = np.zeros(nb + 1, dtype=np.int64)
        # the statistics' shape with no values: what CrossedGibbs reads for the priors, start and records
        template = BlockStats(G=np.zeros((p, p)), Xty_t=np.zeros(p), Xty_b=np.zeros(nb), A=np.zeros(0),
                              W_ptr=zeros_ptr, W_col=np.zeros(0, dtype=np.int32), W_val=np.zeros(0), C_ptr=zeros_ptr,
                              C_col=np.zeros(0, dtype=np.int32), C_val=np.zeros(0), u_ref_t=np.zeros(p), rtr=0.0,
                              Xtr_t=np.zeros(p), Xtr_b=np.zeros(nb), n_obs=design.n_obs, logw=0.0, p=p)
        self.inner = CrossedGibbs(template, layout, priors, design, sigma2_known=1.0,
                                  groups=singleton_groups(layout, nb, p))
        self.shifts = shift_groups(design)
        #: per factor: its moves take the closed forms of the intercept alone (:func:`intercept_only`)
        self.ones = np.array([intercept_only(self.code, self.rows.Z, int(self.rows.z_off[k]), int(layout.q[k]))
                              for k in range(len(layout.q))], dtype=np.bool_)
        #: the first factor's rows (level j's from paired_starts[j]) when the sweep may take
        #: paired_pass: two factors, both of intercept_only, the rows sorted by the first
        self.paired_starts, self.paired_buf = np.zeros(0, dtype=np.int64), 0
        if len(self.ones) == 2 and self.ones.all() and self.F.shape[1] and np.all(np.diff(self.rows.index[0]) >= 0):
            counts = np.bincount(self.rows.index[0], minlength=int(layout.J[0]))
            self.paired_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            self.paired_buf = int(counts.max())
        self.nested = nested_shifts(design)
        #: the nested pair whose variances take step 7 (an index into ``nested``), -1 for none: two
        #: factors, both of intercept_only, one nested in the other
        self.joint = -1
        #: how many times a sweep makes step 7's pair of moves (with the shift moves between)
        self.n_nested = NESTED_REPEATS
        if nested_scale_moves and len(self.ones) == 2 and self.ones.all() and self.nested.inner.shape[0]:
            self.joint = 0
        self._a0 = np.asarray(a_start, dtype=float)
        self.names = self.inner.names
        self.sigma_names, self.beta_names = self.inner.sigma_names, self.inner.beta_names
        self.group_variables = self.inner.group_variables

    # -- pieces ----------------------------------------------------------------------
    def eta(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The linear predictor of every row at (a, b), rows in the kernel's order (``order``)."""
        r, L = self.rows, self.layout
        return linear_predictor(self.offset, self.F, a, r.Z, r.index, r.z_off, L.q, L.off, b)

    def loglik(self, a: np.ndarray, b: np.ndarray) -> float:
        """ll(eta) at (a, b) (module docstring)."""
        return float(total_loglik(self.code, self.y, self.trials, self.eta(a, b)))

    def sweep(self, state: MWGState, rng: np.random.Generator, hastings: bool = True, jacobian: bool = True
              ) -> tuple[MWGState, np.ndarray, np.ndarray]:
        """:func:`mwg_sweep` from ``state`` (tuning unchanged); returns the new state and the
        acceptance rates (per factor then a; per block, then step 7's two moves where made, -1
        where no scale move). ``hastings=False`` / ``jacobian=False``: deliberate errors (warm-up's
        greedy sweeps; for the tests)."""
        r, L, g = self.rows, self.layout, self.inner
        n_steps = L.block_start.shape[0] + (2 if self.joint >= 0 else 0)
        if state.log_step.shape[0] < n_steps:  # a state without step 7's steps (an earlier version's, resumed)
            state = state._replace(log_step=np.concatenate(
                [state.log_step, np.full(n_steps - state.log_step.shape[0], np.log(0.3))]))
        a, b, Sigma, acc, acc_scale, status = mwg_sweep(
            rng, self.code, self.y, self.trials, self.offset, self.F, g._Pi_fixed, g._Pim_fixed, *r, L.off, L.q, L.J,
            L.sig_off, L.block_start, L.block_size, L.block_factor, g._blk_eta, g._S0, *self.shifts, *self.nested,
            self.ones, self.paired_starts, self.paired_buf, self.joint, state.t, state.b, state.Sigma, state.log_phi,
            state.log_step, self.scale_moves, hastings, jacobian, self.n_nested)
        if status:
            what = (f"the covariance of factor {self.names[status - 1]!r}" if status <= len(self.names)
                    else "the precision of a shift move of the fixed effects")
            raise FloatingPointError(f"{what} became not positive definite")
        return state._replace(t=a, b=b, Sigma=Sigma), acc, acc_scale

    # -- the kernel ------------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> MWGState:
        """Start near the pooled fit (:meth:`CrossedGibbs.start`), angles at pi / 2 (the Laplace
        approximation's independent draw), scale steps 0.3 (per block, then step 7's two where made)."""
        t, b, Sigma = self.inner.start(rng, self._a0)
        n_steps = self.layout.block_start.shape[0] + (2 if self.joint >= 0 else 0)
        return MWGState(t=t, b=b, Sigma=Sigma, log_phi=np.full(len(self.names) + 1, np.log(PHI_MAX)),
                        log_step=np.full(n_steps, np.log(0.3)))

    def step(self, state: MWGState, rng: np.random.Generator) -> MWGState:
        """One sweep with the tuning frozen."""
        return self.sweep(state, rng)[0]

    def warmup_step(self, state: MWGState, rng: np.random.Generator, i: int, n_warmup: int) -> MWGState:
        """One sweep, then Robbins-Monro steps of the tuning (gain (i + 1)^-0.6): log phi towards
        :data:`TARGET` acceptance (at most :data:`PHI_MAX`), log h towards :data:`SCALE_TARGET`.
        The first :data:`GREEDY_SHARE` of warm-up accepts the rotation moves by the target's ratio
        alone (no Hastings correction): from a start far in a level's tail (many rows, an effect
        many prior sds from 0) the reverse Newton step is improbable and the exact move stalls for
        thousands of sweeps (measured: 4,458 from 10 posterior sds); the greedy sweeps reach the
        bulk, and the rest of warm-up, with the correction, forgets their bias."""
        greedy = i < GREEDY_SHARE * n_warmup
        new, acc, acc_scale = self.sweep(state, rng, hastings=not greedy)
        log_phi, log_step = state.log_phi, new.log_step  # new's: padded where state's lacked step 7's
        if not greedy:
            gain = (i + 1.0) ** -0.6
            log_phi = np.minimum(log_phi + gain * (acc - TARGET), np.log(PHI_MAX))
            log_step = np.where(acc_scale >= 0, log_step + gain * (acc_scale - SCALE_TARGET), log_step)
        if i == n_warmup - 1:  # the last warm-up sweep: scale moves off where they buy nothing
            shares = self.prior_shares(new)
            log_step = log_step.copy()
            nb = shares.shape[0]
            log_step[:nb] = np.where(shares < SCALE_SHARE, SCALE_OFF, log_step[:nb])
        return new._replace(log_phi=log_phi, log_step=log_step)

    def prior_shares(self, state: MWGState) -> np.ndarray:
        """Per covariance block of one column c of factor k: mean_j 1 / (1 + tau_kc H_kj,cc), the
        share of tau_kc that level j's data leave to the prior (H the level's Fisher information at
        the state), averaged over the levels; inf for blocks of several columns."""
        r, L = self.rows, self.layout
        eta = self.eta(state.t, state.b)
        out = np.full(L.block_start.shape[0], np.inf)
        for bl in range(out.shape[0]):
            k, c = int(L.block_factor[bl]), int(L.block_start[bl])
            if L.block_size[bl] != 1:
                continue
            qk, Jk = int(L.q[k]), int(L.J[k])
            H = level_terms(self.code, self.y, self.trials, eta, r.Z, int(r.z_off[k]), qk, r.index[k], Jk,
                            np.zeros((Jk, qk)))[2]
            tau = state.Sigma[L.sig_off[k] + c * qk + c]
            out[bl] = float(np.mean(1.0 / (1.0 + tau * H[:, c, c])))
        return out

    def record(self, state: MWGState) -> dict[str, np.ndarray]:
        """theta, alpha, per factor Sigma and beta (:meth:`CrossedGibbs.location_record`) and the
        log-likelihood ll(eta)."""
        out = self.inner.location_record(state)
        out["loglik"] = np.float64(self.loglik(state.t, state.b))
        return out


__all__ = ["CrossedMetropolis", "FactorRows", "MWGState", "factor_rows", "row_order", "linear_predictor", "mwg_sweep",
           "total_loglik"]
