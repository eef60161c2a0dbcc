r"""One shard of a one-factor GLM: the rows of a contiguous range of the factor's levels, and
the per-level work of the sharded Metropolis-within-Gibbs kernel (:mod:`multilevel.samplers.sharded`).

A shard holds whole levels (every row of its levels, sorted by level), so that the moves of
its levels' effects b_j read its rows alone; it keeps each chain's b_j (the effects live where
their rows are) and answers the kernel's messages with sums of O(p^2) numbers:

* :meth:`LevelShard.sweep` takes the population values (a, Sigma^-1, the angle phi) and the
  changes of b owed by the last sweep's scale and shift moves, and makes every level's
  rotation move (the Laplace proposal of :mod:`multilevel.samplers.crossed_metropolis`, step 2:
  b*_j = m_j + cos(phi) (b_j - m_j) + sin(phi) L_j'^-1 z_j about the Newton point m_j of
  b_j | y_j, a, Sigma, with its Metropolis-Hastings ratio; Poisson with the intercept alone in
  closed form from the level's sums of y and mu), with z_j and the acceptance test's u_j keyed
  by (chain, sweep, level) (:mod:`multilevel.samplers.keyed`). It returns sum_j b_j,
  sum_j b_j b_j', the shift moves' sums sum_j w_j b_j', and ll, F'(y - mu) and F'WF at the new
  values (the fixed move's terms at a).
* :meth:`LevelShard.evaluate` returns the terms at the fixed move's proposal a* and the change
  of ll under a scale move's b_jc -> e^s b_jc at a and at a*.

Each chain's eta is recomputed by the first pass of a sweep (so nothing a move owes to the rows
is kept between messages) into one buffer shared by the chains: a sweep's two messages come
one after the other for one chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from .crossed import _backward
from .crossed_metropolis import (_ones_step, _row_terms, fixed_terms, fixed_terms_from_levels,
                                 intercept_only, laplace_point, level_multiples, level_terms, linear_predictor,
                                 rotation_log_ratio)
from .keyed import level_draws


@njit(cache=True)
def level_rotation(code, y, n, eta, Z, index, J, b, Sinv, phi, hastings, z, u, ones, ll0, g0, H0, D):
    """Every level's rotation move at once from its sums at b (ll0, g0, H0 of
    :func:`~multilevel.samplers.crossed_metropolis.level_terms`) with the noise z (J, q) and the
    uniforms u (J,): b (J, q) updated in place, D (J, q) receives the accepted changes. ``ones``:
    Poisson with the intercept alone, the closed form (no pass at the proposals). Returns the
    number of levels accepted."""
    q = b.shape[1]
    accepted = 0
    cphi, sphi = np.cos(phi), np.sin(phi)
    if ones:
        sinv = Sinv[0, 0]
        for j in range(J):
            smu = H0[j, 0, 0]
            ok, d, _ = _ones_step(b[j, 0], sinv, cphi, sphi * sphi, g0[j, 0] + smu, smu, z[j, 0], u[j], hastings)
            D[j, 0] = d
            if ok:
                accepted += 1
                b[j, 0] += d
        return accepted
    zero = np.zeros(q)
    lp0 = np.zeros(J)
    M0 = np.zeros((J, q))
    Ls = np.zeros((J, q, q))
    valid = np.ones(J, dtype=np.bool_)
    w = np.empty(q)
    for j in range(J):
        lp, m, L, ok = laplace_point(b[j].copy(), g0[j], H0[j], Sinv, zero)
        if not ok:
            valid[j] = False
            D[j] = 0.0
            continue
        lp0[j], M0[j], Ls[j] = lp, m, L
        w[:] = z[j]
        _backward(L, w, q)
        for c in range(q):
            D[j, c] = m[c] + cphi * (b[j, c] - m[c]) + sphi * w[c] - b[j, c]
    ll1, g1, H1 = level_terms(code, y, n, eta, Z, 0, q, index, J, D)
    for j in range(J):
        if not valid[j]:
            continue
        x = b[j].copy()
        xs = x + D[j]
        lp1, m1, L1, ok = laplace_point(xs, g1[j], H1[j], Sinv, zero)
        if ok and np.log(u[j]) < rotation_log_ratio(x, xs, ll0[j], ll1[j], lp0[j], lp1, M0[j], Ls[j], m1, L1, phi,
                                                    hastings):
            accepted += 1
            b[j] = xs
        else:
            D[j] = 0.0
    return accepted


@njit(cache=True)
def intercept_pass(y, offset, F, a, b, index, J, eta):
    """For Poisson with the intercept alone: eta_i = offset_i + F_i a + b_j(i) (written to ``eta``)
    and per level j the sums of y_i eta_i, y_i, mu_i, F_i y_i, F_i mu_i and F_i F_i' mu_i (lower
    triangle), in one pass: the levels' closed-form moves read Sy and Smu, and the fixed move's
    terms after them follow from the rest
    (:func:`~multilevel.samplers.crossed_metropolis.fixed_terms_from_levels`)."""
    p = F.shape[1]
    Syeta, Sy, Smu = np.zeros(J), np.zeros(J), np.zeros(J)
    SFy, SFmu, SFFmu = np.zeros((J, p)), np.zeros((J, p)), np.zeros((J, p, p))
    for i in range(y.shape[0]):
        j = index[i]
        e = offset[i] + b[j, 0]
        for c in range(p):
            e += F[i, c] * a[c]
        eta[i] = e
        mu = np.exp(min(e, 700.0))
        Syeta[j] += y[i] * e
        Sy[j] += y[i]
        Smu[j] += mu
        for c in range(p):
            SFy[j, c] += F[i, c] * y[i]
            fm = F[i, c] * mu
            SFmu[j, c] += fm
            for c2 in range(c + 1):
                SFFmu[j, c, c2] += fm * F[i, c2]
    return Syeta, Sy, Smu, SFy, SFmu, SFFmu


@njit(cache=True)
def scale_terms(code, y, n, eta, F, da, Z, c, index, b, f):
    """The change of ll when b_jc -> (1 + f) b_jc (eta_i + f Z_ic b_jc), at eta and at eta + F da:
    one pass over the rows."""
    d0, d1 = 0.0, 0.0
    for i in range(eta.shape[0]):
        e0 = eta[i]
        e1 = e0
        for k in range(F.shape[1]):
            e1 += F[i, k] * da[k]
        de = f * Z[i, c] * b[index[i], c]
        d0 += _row_terms(code, y[i], n[i], e0 + de)[0] - _row_terms(code, y[i], n[i], e0)[0]
        d1 += _row_terms(code, y[i], n[i], e1 + de)[0] - _row_terms(code, y[i], n[i], e1)[0]
    return d0, d1


class ShardRows(NamedTuple):
    """The rows of levels [lo, lo + J) of the factor, sorted by level: response y, trials n,
    offset, fixed design F (N, p), the factor's covariates Z (N, q), each row's level - lo."""

    y: np.ndarray
    n: np.ndarray
    offset: np.ndarray
    F: np.ndarray
    Z: np.ndarray
    index: np.ndarray
    lo: int
    J: int


class SweepMessage(NamedTuple):
    """What a sweep sends every shard: the chain's key and sweep number, a and Sigma^-1, the
    levels' angle, whether the Hastings correction is made, the changes of b the last sweep's
    moves owe (``scale`` (q,) factors, ``shift`` the shift moves' d one after the other, 0 where
    not made), whether b, once they are made, is a kept draw, and tau = diag(Sigma) (for the
    levels' prior shares, :class:`SweepSums`)."""

    key: np.ndarray
    sweep: int
    a: np.ndarray
    Sinv: np.ndarray
    phi: float
    hastings: bool
    scale: np.ndarray
    shift: np.ndarray
    keep_previous: bool
    tau: np.ndarray


class SweepSums(NamedTuple):
    """A shard's answer to a sweep: levels accepted; sum_j b_j, sum_j b_j b_j'; per shift move
    sum_j w_j b_j'; sum_j 1 / (1 + tau_c H_j,cc) per column (the prior's share); ll, F'(y - mu)
    and F'WF at the new values."""

    accepted: int
    Sb: np.ndarray
    Sbb: np.ndarray
    Swb: tuple
    shares: np.ndarray
    ll: float
    g: np.ndarray
    H: np.ndarray


@dataclass
class ChainSlot:
    """One chain's effects in a shard and its kept draws."""

    b: np.ndarray
    draws: list = field(default_factory=list)


class LevelShard:
    """The rows and effects of one shard (module docstring); ``code`` the family's
    log-likelihood code (:data:`multilevel.families.CODES`)."""

    def __init__(self, rows: ShardRows, code: int):
        self.rows, self.code = rows, int(code)
        self.q = rows.Z.shape[1]
        self.eta = np.empty(rows.y.shape[0])
        self.pending = np.zeros((rows.J, self.q))  # the levels' changes eta has not taken yet
        self.ones = bool(rows.y.shape[0]) and bool(intercept_only(self.code, rows.Z, 0, self.q))
        self.chains: dict[bytes, ChainSlot] = {}
        self.shifts: list[tuple[int, np.ndarray, np.ndarray]] = []  # (column, fixed columns, W (J, |D|))

    # -- what the priors and the set-up read ----------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Rows, sums of y and n, and the moments, extremes and first row of F's and Z's columns."""
        from ..moments import moments_of

        r = self.rows
        return {"rows": r.y.shape[0], "y": float(r.y.sum()), "n": float(r.n.sum()), "F": moments_of(r.F),
                "F_min": r.F.min(axis=0, initial=np.inf), "F_max": r.F.max(axis=0, initial=-np.inf),
                "F_abs": np.abs(r.F).max(axis=0, initial=0.0), "F_first": r.F[0] if len(r.F) else None,
                "Z": moments_of(r.Z)}

    def pooled_terms(self, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """F'(y - mu) and F'WF at eta = offset + F coef (the pooled fit's Newton terms)."""
        r = self.rows
        eta = r.offset + r.F @ coef
        _, g, H = fixed_terms(self.code, r.y, r.n, eta, r.F, np.zeros(r.F.shape[1]))
        return g, H

    def level_fits(self, family: Any, a: np.ndarray) -> np.ndarray:
        """The levels' own fits of y on Z given offset + F a that count (:func:`multilevel.glmfit.group_fits`)."""
        from ..glmfit import group_fits

        r = self.rows
        starts = np.searchsorted(r.index, np.arange(r.J + 1)).astype(np.int64)
        fits, own = group_fits(family, r.Z, r.y, r.n, r.offset + r.F @ a, starts, np.zeros(self.q))
        return fits[own]

    def multiples(self) -> list[np.ndarray]:
        """Per covariate c, the fixed columns that are level multiples of it in this shard
        (:func:`~multilevel.samplers.crossed_metropolis.level_multiples`)."""
        r = self.rows
        return [level_multiples(r.F, np.ascontiguousarray(r.Z[:, c]), r.index, r.J)[0] for c in range(self.q)]

    def set_shifts(self, groups: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """Keep the shift moves (column c, fixed columns D) and their weights; returns per move
        sum_j w_j w_j'."""
        r = self.rows
        self.shifts = []
        out = []
        for c, cols in groups:
            found, W = level_multiples(r.F, np.ascontiguousarray(r.Z[:, c]), r.index, r.J)
            W = np.ascontiguousarray(W[:, [int(np.flatnonzero(found == m)[0]) for m in cols]]) if len(cols) else W
            self.shifts.append((c, np.asarray(cols), W))
            out.append(W.T @ W)
        return out

    # -- the chains -----------------------------------------------------------------------------
    def start(self, key: np.ndarray) -> None:
        """A chain's effects at 0."""
        self.chains[bytes(key)] = ChainSlot(np.zeros((self.rows.J, self.q)))

    def release(self, key: np.ndarray) -> None:
        self.chains.pop(bytes(key), None)

    def _settle(self, slot: ChainSlot, scale: np.ndarray, shift: np.ndarray, keep: bool) -> None:
        """Make the changes of b the last sweep's scale and shift moves owe; keep b if asked."""
        slot.b *= scale
        start = 0
        for c, cols, W in self.shifts:
            d = shift[start:start + len(cols)]
            start += len(cols)
            if np.any(d):
                slot.b[:, c] -= W @ d
        if keep:
            slot.draws.append(slot.b.copy())

    def sweep(self, m: SweepMessage) -> SweepSums:
        """The levels' moves of one sweep (module docstring): three passes over the rows (eta
        with the levels' sums at b, their sums at the proposals, the fixed move's terms), or one
        for Poisson with the intercept alone (:func:`intercept_pass`: the levels' closed form
        and the fixed move's terms from per-level sums; eta takes the levels' changes in the
        next pass, :meth:`evaluate`'s)."""
        r, slot = self.rows, self.chains[bytes(m.key)]
        self._settle(slot, m.scale, m.shift, m.keep_previous)
        b, q, J, p = slot.b, self.q, r.J, r.F.shape[1]
        z, u = level_draws(m.key, m.sweep, r.lo, r.lo + J, q)
        D = np.zeros((J, q))
        if self.ones:
            Syeta, Sy, Smu, SFy, SFmu, SFFmu = intercept_pass(r.y, r.offset, r.F, m.a, b, r.index, J, self.eta)
            g0, H0 = (Sy - Smu).reshape(J, 1), Smu.reshape(J, 1, 1)
            shares = np.sum(1.0 / (1.0 + m.tau[0] * Smu), keepdims=True)
            accepted = level_rotation(self.code, r.y, r.n, self.eta, r.Z, r.index, J, b, m.Sinv, m.phi, m.hastings,
                                      z, u, True, np.zeros(J), g0, H0, D)
            ll, g, H = fixed_terms_from_levels(Syeta, Sy, Smu, SFy, SFmu, SFFmu, D[:, 0])
            self.pending = D
        else:
            self.eta[:] = linear_predictor(r.offset, r.F, m.a, r.Z, r.index.reshape(1, -1), np.zeros(1, np.int64),
                                           np.array([q], np.int64), np.zeros(1, np.int64), b.ravel())
            ll0, g0, H0 = level_terms(self.code, r.y, r.n, self.eta, r.Z, 0, q, r.index, J, np.zeros((J, q)))
            shares = np.sum(1.0 / (1.0 + m.tau[None, :] * np.diagonal(H0, axis1=1, axis2=2)), axis=0)
            accepted = level_rotation(self.code, r.y, r.n, self.eta, r.Z, r.index, J, b, m.Sinv, m.phi, m.hastings,
                                      z, u, False, ll0, g0, H0, D)
            self.pending = D
            ll, g, H = fixed_terms(self.code, r.y, r.n, self.eta, r.F, np.zeros(p), None, None, self._sync())
        Swb = tuple(W.T @ b for _, _, W in self.shifts)
        return SweepSums(accepted, b.sum(axis=0), b.T @ b, Swb, shares, ll, g, H)

    def _sync(self) -> tuple:
        """The levels' changes still owed to eta (``pending``), as the passes of
        :mod:`~multilevel.samplers.crossed_metropolis` take them; nothing owed after the pass."""
        r, q, p = self.rows, self.q, self.rows.F.shape[1]
        D, self.pending = self.pending, np.zeros((r.J, q))
        return (r.F, r.Z, np.zeros(p), False, np.zeros(1, np.int64), np.array([q], np.int64), r.index.reshape(1, -1),
                np.zeros(1, np.int64), D.ravel(), np.ones(1, np.bool_), np.array([self.ones]))

    def evaluate(self, key: np.ndarray, da: np.ndarray, c: int, f: float) -> tuple[float, np.ndarray, np.ndarray,
                                                                                    float, float]:
        """ll, F'(y - mu), F'WF at a + da (the fixed move's proposal), and the change of ll when
        b_jc -> (1 + f) b_jc at a and at a + da (0, 0 when c < 0); eta first takes the levels'
        changes still owed to it."""
        r, slot = self.rows, self.chains[bytes(key)]
        ll1, g1, H1 = fixed_terms(self.code, r.y, r.n, self.eta, r.F, da, None, None, self._sync())
        d0 = d1 = 0.0
        if c >= 0:
            d0, d1 = scale_terms(self.code, r.y, r.n, self.eta, r.F, da, r.Z, c, r.index, slot.b, f)
        return ll1, g1, H1, d0, d1

    def flush(self, key: np.ndarray, scale: np.ndarray, shift: np.ndarray, keep: bool) -> None:
        """Make what the chain's last sweep owes (and keep that draw): the end of a run."""
        self._settle(self.chains[bytes(key)], scale, shift, keep)

    def group_draws(self, key: np.ndarray, n: int) -> np.ndarray:
        """The chain's first ``n`` kept draws of b, (n, J, q)."""
        draws = self.chains[bytes(key)].draws[:n]
        return np.stack(draws) if draws else np.zeros((0, self.rows.J, self.q))


__all__ = ["LevelShard", "ShardRows", "SweepMessage", "SweepSums", "level_rotation", "scale_terms"]
