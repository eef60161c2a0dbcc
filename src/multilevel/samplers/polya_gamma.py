r"""Polya-Gamma augmented Gibbs sampler for binomial and Bernoulli models with one or several
grouping factors (crossed, nested, uncorrelated).

Model (:class:`multilevel.design.CrossedDesign`, logit link)::

    y_i ~ Binomial(n_i, logistic(eta_i)),   eta_i = offset_i + F_i a + sum_k Z_ki b_k,j_k(i)
    b_kj ~ MVN(0, Sigma_k),   a ~ MVN(m0, Pi_a^-1),   Sigma_k[block] ~ IW(eta_kb, S0_k[block])

with the priors of the Gaussian crossed model (:mod:`multilevel.samplers.crossed`) and no
sigma2 (defaults: :func:`multilevel.priors.default_crossed_glm_priors`). Bernoulli is n_i = 1.

Augmentation (Polson, Scott and Windle 2013). With kappa_i = y_i - n_i / 2,

    exp(eta)^y / (1 + exp(eta))^n = 2^-n exp(kappa eta) E[exp(-omega eta^2 / 2)],  omega ~ PG(n, 0),

so the posterior is the marginal of p(u, Sigma, omega | y) proportional to
p(u, Sigma) prod_i exp(kappa_i eta_i - omega_i eta_i^2 / 2) PG(omega_i | n_i, 0), u = (a, b).
Its full conditionals:

* omega_i | u ~ PG(n_i, eta_i) (the exponentially tilted PG(n_i, 0)), independently per row;
* (u, Sigma) | omega: since kappa eta - omega eta^2 / 2 = -omega (z - x'u)^2 / 2 + const with the
  pseudo-response z_i = kappa_i / omega_i - offset_i and x_i'u = eta_i - offset_i, this is the
  posterior of the Gaussian crossed model with response z, precision weights omega and
  sigma2 = 1.

One sweep:

1. eta at the current u and omega_i ~ PG(n_i, eta_i) for every row (``polyagamma``, drawing
   from the chain's NumPy Generator);
2. the block statistics of that weighted model (:mod:`multilevel.blockstats`): G = X_t'ΩX_t,
   per level A_kj = Z_kj'ΩZ_kj, W = X_b'ΩX_t, C = X_b'ΩX_b across factors, and the linear
   terms X'Ωz = X'(kappa - Ω offset), in one compiled pass over the rows
   (:func:`weighted_stats`, O(N x terms^2)). The sparsity patterns of W and C do not depend
   on the weights: they are built once from the rows' levels (:func:`row_design`), with the
   position in W and C of every product a row contributes, so a refresh only adds values;
3. one sweep of :func:`multilevel.samplers.crossed.crossed_sweep` with sigma2 held at 1
   (``sigma2_known``): the small factors' variances, the dense block t, each large factor's
   variances and effects b_k, the correlated covariances; its moves are Gibbs (partially
   collapsed) moves of (u, Sigma) | omega, so they keep p(u, Sigma, omega | y) invariant.
   The levels are not grouped by equal A_kj (the weights make every level's A distinct):
   one group per level (:func:`singleton_groups`).

Steps 1 and 3 each leave the joint posterior invariant, so the chain's (u, Sigma) targets the
model's posterior; omega is redrawn from u at the start of every sweep and is not kept.
Each sweep reads the rows twice (eta and the statistics); each kept draw once more for its
log-likelihood, sum_i [y_i eta_i - n_i log(1 + exp(eta_i))] (without log binomial(n_i, y_i),
as the Metropolis kernel's), recorded as ``loglik`` (computed in :meth:`PolyaGammaGibbs.record`,
so warm-up sweeps do not pay for it).

The negative binomial reuses this kernel with n_i = y_i + phi, kappa_i = (y_i - phi) / 2 and the
offset shifted by -log phi (:meth:`PolyaGammaGibbs.draw_omega` and
:meth:`PolyaGammaGibbs.statistics` take them as arguments), plus a Metropolis step for phi:
:mod:`multilevel.samplers.negbinomial`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from ..blockstats import BlockStats, FactorLayout
from .crossed import CrossedGibbs


class PolyaGammaState(NamedTuple):
    """The chain's state: t = (a, small factors' effects), b = large factors' effects and Sigma
    (flat), as in :class:`~multilevel.samplers.crossed.CrossedState`."""

    t: np.ndarray
    b: np.ndarray
    Sigma: np.ndarray


class RowDesign(NamedTuple):
    """Each row's entries of X = [X_t X_b] (the same slots in every row: the fixed columns and
    the small factors' terms in t, the large factors' terms in b), and where each product of
    two entries lands in the block statistics.

    ``W_pos[i, s, c]``: position in ``W_val`` of (b row ``b_col[i, s]``, t column ``t_col[i, c]``);
    ``C_pos[i, s, s2]``: position in ``C_val`` of (``b_col[i, s]``, ``b_col[i, s2]``), -1 for two
    slots of one factor (their product goes to that level's A block)."""

    t_col: np.ndarray  # (N, nt) int64
    t_val: np.ndarray  # (N, nt)
    b_col: np.ndarray  # (N, nbs) int64
    b_val: np.ndarray  # (N, nbs)
    b_factor: np.ndarray  # (nbs,) the factor of each b slot
    b_term: np.ndarray  # (nbs,) its term within the factor
    W_ptr: np.ndarray
    W_col: np.ndarray
    W_pos: np.ndarray  # (N, nbs, nt) int64
    C_ptr: np.ndarray
    C_col: np.ndarray
    C_pos: np.ndarray  # (N, nbs, nbs) int64


def _pattern(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int, mask: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSR pattern (ptr, col) of every (rows[i, s], cols[i, c]) pair with ``mask[s, c]``, and
    each pair's position in it ((N, S, C), -1 where not ``mask``)."""
    keys = rows[:, :, None] * n_cols + cols[:, None, :]
    chosen = keys[:, mask]
    unique = np.unique(chosen)
    pos = np.full(keys.shape, -1, dtype=np.int64)
    pos[:, mask] = np.searchsorted(unique, chosen)
    ptr = np.searchsorted(unique // max(n_cols, 1), np.arange(n_rows + 1)).astype(np.int64)
    return ptr, (unique % max(n_cols, 1)).astype(np.int32), pos


def sizes(layout: FactorLayout, p: int) -> tuple[int, int, int]:
    """(P, nb, A entries): the lengths of t and b and of the large factors' A blocks, for p
    fixed effects."""
    large, n = layout.large, layout.J * layout.q
    return (p + int(n[~large].sum()), int(n[large].sum()), int((n * layout.q)[large].sum()))


def row_design(design: Any, layout: FactorLayout) -> RowDesign:
    """The :class:`RowDesign` of ``design`` (rows in its order) in the layout's t and b coordinates."""
    N, p = design.F.shape
    t_col = [np.broadcast_to(np.arange(p, dtype=np.int64), (N, p))]
    t_val = [np.asarray(design.F, dtype=float)]
    b_col, b_val, b_factor, b_term = [], [], [], []
    for k, f in enumerate(design.factors):
        cols = layout.off[k] + f.index[:, None] * f.q + np.arange(f.q, dtype=np.int64)[None, :]
        if layout.large[k]:
            b_col.append(cols)
            b_val.append(np.asarray(f.Z, dtype=float))
            b_factor.extend([k] * f.q)
            b_term.extend(range(f.q))
        else:
            t_col.append(cols)
            t_val.append(np.asarray(f.Z, dtype=float))
    tc = np.ascontiguousarray(np.hstack(t_col), dtype=np.int64)
    bc = np.ascontiguousarray(np.hstack(b_col) if b_col else np.zeros((N, 0)), dtype=np.int64)
    factor = np.array(b_factor, dtype=np.int64)
    P, nb, _ = sizes(layout, p)
    W_ptr, W_col, W_pos = _pattern(bc, tc, nb, P, np.ones((bc.shape[1], tc.shape[1]), dtype=bool))
    C_ptr, C_col, C_pos = _pattern(bc, bc, nb, nb, factor[:, None] != factor[None, :])
    return RowDesign(tc, np.ascontiguousarray(np.hstack(t_val)), bc,
                     np.ascontiguousarray(np.hstack(b_val) if b_val else np.zeros((N, 0))), factor,
                     np.array(b_term, dtype=np.int64), W_ptr, W_col, W_pos, C_ptr, C_col, C_pos)


@njit(cache=True)
def linear_predictor(t_col, t_val, b_col, b_val, offset, t, b):
    """eta_i = offset_i + X_t,i t + X_b,i b for every row."""
    N = t_col.shape[0]
    eta = np.empty(N)
    for i in range(N):
        s = offset[i]
        for c in range(t_col.shape[1]):
            s += t_val[i, c] * t[t_col[i, c]]
        for c in range(b_col.shape[1]):
            s += b_val[i, c] * b[b_col[i, c]]
        eta[i] = s
    return eta


@njit(cache=True)
def logit_loglik(y, n, eta):
    """sum_i [y_i eta_i - n_i log(1 + exp(eta_i))]: the binomial log-likelihood without log binomial(n_i, y_i)."""
    total = 0.0
    for i in range(eta.shape[0]):
        e = eta[i]
        softplus = e + np.log1p(np.exp(-e)) if e > 0.0 else np.log1p(np.exp(e))
        total += y[i] * e - n[i] * softplus
    return total


@njit(cache=True)
def weighted_stats(t_col, t_val, b_col, b_val, b_factor, b_term, W_pos, C_pos, n_w, n_c, omega, lin, P, nb, A_size, off,
                   A_off, q):
    """The weighted statistics of step 2 (module docstring) in one pass over the rows: with
    weights ``omega`` and weighted response ``lin`` = omega z (kappa - omega offset),
    G = X_t'ΩX_t, X_t'lin, X_b'lin, the A blocks, W_val and C_val (on :func:`row_design`'s
    patterns, ``n_w`` and ``n_c`` entries). Returns (G, Xty_t, Xty_b, A, W_val, C_val)."""
    G = np.zeros((P, P))
    Xty_t = np.zeros(P)
    Xty_b = np.zeros(nb)
    A = np.zeros(A_size)
    W_val = np.zeros(n_w)
    C_val = np.zeros(n_c)
    nt, nbs = t_col.shape[1], b_col.shape[1]
    for i in range(t_col.shape[0]):
        w, r = omega[i], lin[i]
        for s in range(nt):
            c, v = t_col[i, s], t_val[i, s]
            Xty_t[c] += r * v
            wv = w * v
            for s2 in range(nt):
                G[c, t_col[i, s2]] += wv * t_val[i, s2]
        for s in range(nbs):
            row, v = b_col[i, s], b_val[i, s]
            Xty_b[row] += r * v
            wv = w * v
            for s2 in range(nt):
                W_val[W_pos[i, s, s2]] += wv * t_val[i, s2]
            k = b_factor[s]
            base = A_off[k] + (row - off[k]) * q[k]
            for s2 in range(nbs):
                if C_pos[i, s, s2] >= 0:
                    C_val[C_pos[i, s, s2]] += wv * b_val[i, s2]
                else:  # the same factor and level: its A block, entry (term of s, term of s2)
                    A[base + b_term[s2]] += wv * b_val[i, s2]
    return G, Xty_t, Xty_b, A, W_val, C_val


def singleton_groups(layout: FactorLayout, nb: int, P: int) -> tuple[np.ndarray, ...]:
    """:func:`multilevel.samplers.crossed.level_groups`'s arrays with one group per level of
    each one-term large factor (group g of factor k = level g - first group of k), and no
    grouped precision sums; the groups' A values (``[3]``) are filled per sweep
    (:meth:`PolyaGammaGibbs.statistics`)."""
    K = layout.q.shape[0]
    group = np.full(nb, -1, dtype=np.int64)
    offsets = np.zeros(K + 1, dtype=np.int64)
    for k in range(K):
        one = bool(layout.large[k]) and layout.q[k] == 1
        if one:
            group[layout.off[k]:layout.off[k] + layout.J[k]] = offsets[k] + np.arange(layout.J[k])
        offsets[k + 1] = offsets[k] + (layout.J[k] if one else 0)
    return (group, offsets, np.ones(offsets[-1]), np.zeros(offsets[-1]), np.zeros(K, dtype=np.bool_),
            np.zeros((0, P, P)))


class PolyaGammaGibbs:
    """The kernel: ``init(rng)``, ``step(state, rng)``, ``record(state)`` over :class:`PolyaGammaState`.

    Parameters
    ----------
    design : the :class:`~multilevel.design.CrossedDesign` (binomial or Bernoulli response,
        ``trials``, ``offset``).
    layout : :func:`multilevel.blockstats.factor_layout` of it.
    priors : resolved priors (:func:`multilevel.priors.resolve_crossed_priors`).
    a_start : the fixed effects the chains start near (the pooled ML fit).
    """

    State = PolyaGammaState

    def __init__(self, design: Any, layout: FactorLayout, priors: Any, a_start: np.ndarray):
        self.layout = layout
        self.rows = row_design(design, layout)
        self.y = np.ascontiguousarray(design.y, dtype=float)
        self.trials = np.ascontiguousarray(design.trials, dtype=float)
        self.offset = np.ascontiguousarray(design.offset, dtype=float)
        self.kappa = self.y - 0.5 * self.trials
        p = design.F.shape[1]
        P, nb, self._A_size = sizes(layout, p)
        r = self.rows
        # the statistics' shape, zero values: the patterns and sizes the crossed kernel reads
        template = BlockStats(
            G=np.zeros((P, P)), Xty_t=np.zeros(P), Xty_b=np.zeros(nb), A=np.zeros(self._A_size),
            W_ptr=r.W_ptr, W_col=r.W_col, W_val=np.zeros(r.W_col.shape[0]), C_ptr=r.C_ptr, C_col=r.C_col,
            C_val=np.zeros(r.C_col.shape[0]), u_ref_t=np.zeros(P), rtr=0.0, Xtr_t=np.zeros(P), Xtr_b=np.zeros(nb),
            n_obs=design.n_obs, logw=0.0, p=p)
        groups = singleton_groups(layout, nb, P)
        self.inner = CrossedGibbs(template, layout, priors, design, sigma2_known=1.0, groups=groups)
        # each one-term large factor's A entries, in the order of the groups' A values
        self._group_A = np.concatenate([np.arange(layout.A_off[k], layout.A_off[k] + layout.J[k])
                                        for k in range(len(layout.q)) if layout.large[k] and layout.q[k] == 1]
                                       or [np.zeros(0, dtype=np.int64)]).astype(np.int64)
        self._groups = groups
        self._t0 = np.concatenate([np.asarray(a_start, dtype=float), np.zeros(P - p)])
        self.sigma_names, self.beta_names = self.inner.sigma_names, self.inner.beta_names
        self.group_variables = self.inner.group_variables
        self.priors = priors

    # -- pieces ----------------------------------------------------------------------
    def eta(self, t: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The linear predictor of every row at (t, b)."""
        r = self.rows
        return linear_predictor(r.t_col, r.t_val, r.b_col, r.b_val, self.offset, t, b)

    def loglik(self, t: np.ndarray, b: np.ndarray) -> float:
        """sum_i [y_i eta_i - n_i log(1 + exp(eta_i))] at (t, b) (module docstring)."""
        return float(logit_loglik(self.y, self.trials, self.eta(t, b)))

    def draw_omega(self, eta: np.ndarray, rng: np.random.Generator, n: np.ndarray | None = None) -> np.ndarray:
        """omega_i ~ PG(n_i, eta_i) (``n`` default: the trials), from ``rng`` (the same generator
        state gives the same draws)."""
        from polyagamma import random_polyagamma

        omega = np.empty(eta.shape[0])
        random_polyagamma(self.trials if n is None else n, eta, out=omega, random_state=rng, disable_checks=True)
        return omega

    def statistics(self, omega: np.ndarray, kappa: np.ndarray | None = None, offset: np.ndarray | None = None
                   ) -> tuple[BlockStats, tuple[np.ndarray, ...]]:
        """The weighted model's statistics (:func:`weighted_stats`) and its level groups, for
        pseudo-response z = kappa / omega - offset (defaults: the binomial kappa and the offset)."""
        r, L, st = self.rows, self.layout, self.inner.stats
        kappa = self.kappa if kappa is None else kappa
        offset = self.offset if offset is None else offset
        G, Xty_t, Xty_b, A, W_val, C_val = weighted_stats(
            r.t_col, r.t_val, r.b_col, r.b_val, r.b_factor, r.b_term, r.W_pos, r.C_pos, r.W_col.shape[0],
            r.C_col.shape[0], omega, kappa - omega * offset, st.G.shape[0], st.Xty_b.shape[0],
            self._A_size, L.off, L.A_off, L.q)
        stats = st._replace(G=G, Xty_t=Xty_t, Xty_b=Xty_b, A=A, W_val=W_val, C_val=C_val)
        g = self._groups
        return stats, (g[0], g[1], g[2], A[self._group_A], g[4], g[5])

    # -- the kernel ------------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> PolyaGammaState:
        """Start near the pooled fit (:meth:`CrossedGibbs.start`): fixed effects jittered by about
        a standard error, zero group effects, covariances at S0 times a factor in about [0.5, 2]."""
        t, b, Sigma = self.inner.start(rng, self._t0)
        return PolyaGammaState(t=t, b=b, Sigma=Sigma)

    def step(self, state: PolyaGammaState, rng: np.random.Generator) -> PolyaGammaState:
        """One sweep (module docstring)."""
        omega = self.draw_omega(self.eta(state.t, state.b), rng)
        stats, groups = self.statistics(omega)
        t, b, Sigma, _, _ = self.inner.sweep(rng, stats, groups, state.t, state.b, state.Sigma)
        return PolyaGammaState(t=t, b=b, Sigma=Sigma)

    def record(self, state: PolyaGammaState) -> dict[str, np.ndarray]:
        """theta, alpha, per factor Sigma and beta (:meth:`CrossedGibbs.location_record`) and
        the log-likelihood (no sigma2)."""
        out = self.inner.location_record(state)
        out["loglik"] = np.float64(self.loglik(state.t, state.b))
        return out


__all__ = ["PolyaGammaGibbs", "PolyaGammaState", "RowDesign", "linear_predictor", "row_design", "singleton_groups",
           "sizes", "weighted_stats"]
