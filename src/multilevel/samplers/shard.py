r"""One shard of a GLM: the rows of a contiguous range of the sharded factor's levels, and the
per-level work of the sharded Metropolis-within-Gibbs kernel (:mod:`multilevel.samplers.sharded`).

A shard holds whole levels of the sharded factor (every row of its levels, sorted by level), so
that the moves of its levels' effects b_j read its rows alone; it keeps each chain's b_j (the
effects live where their rows are) and, with several factors, a copy of the other factors'
effects (the kernel's, sent when they change), and answers the kernel's messages with sums:

* :meth:`LevelShard.sweep` takes the population values (a, Sigma^-1, the angle phi), the changes
  of b owed by the last sweep's scale and shift moves and the other factors' b, computes eta
  (the full linear predictor) and makes every level's rotation move (the Laplace proposal of
  :mod:`multilevel.samplers.crossed_metropolis`, step 2: b*_j = m_j + cos(phi) (b_j - m_j) +
  sin(phi) L_j'^-1 z_j about the Newton point m_j of b_j | y_j, a, Sigma, with its
  Metropolis-Hastings ratio; Poisson with the intercept alone in closed form from the level's
  sums of y and mu), with z_j and the acceptance test's u_j keyed by (chain, sweep, level)
  (:mod:`multilevel.samplers.keyed`). It returns sum_j b_j, sum_j b_j b_j', the shift moves' sums
  sum_j w_j b_j', and ll, F'(y - mu) and F'WF at the new values (the fixed move's terms at a), or
  with several factors the first other factor's per-level sums (O(J_k q_k^2) numbers).
* :meth:`LevelShard.terms` takes the other factors' b (their changes owed to eta) and returns an
  other factor's per-level sums ll_j, Z_j'(y - mu), Z_j'WZ_j at eta or at proposals (the
  kernel's level moves of that factor), or the fixed move's terms at a.
* :meth:`LevelShard.evaluate` returns the terms at the fixed move's proposal a* and the change
  of ll under a scale move's b_kc -> e^s b_kc (of any factor) at a and at a*.
* :meth:`LevelShard.dispersion_terms` (negative binomial) returns, at eta after the fixed and
  scale moves the kernel accepted, sum_i [lgamma(y_i + phi) - lgamma(phi) + phi log phi
  - (y_i + phi) log(phi + mu_i)] + y_i eta_i at phi and at the proposal phi*
  (:func:`multilevel.samplers.negbinomial.nb_phi_loglik`): the phi move's likelihood ratio.

For the negative binomial (code :data:`multilevel.families.NEGBINOMIAL_CODE`) the row terms are
those of NB2 given phi (:func:`~multilevel.samplers.crossed_metropolis._row_terms`), whose ``n``
is phi in every row: the shard sets it from the phi each sweep's message carries. Its fits for
the priors and the start (:meth:`LevelShard.pooled_terms`, :meth:`LevelShard.fit_terms`) are
Poisson fits, as :func:`multilevel.families.fitting_family`.

The level move is split in pieces (:func:`rotation_proposals`, the sums at the proposals,
:func:`rotation_accept`; :func:`ones_rotation` for the closed form) so that the kernel makes
the other factors' moves with the same code from sums over the shards.

Each chain's eta is recomputed by the first pass of a sweep (so nothing a move owes to the rows
is kept between sweeps) into one buffer shared by the chains: a sweep's messages come one after
the other for one chain; within a sweep the changes owed to eta (the levels' accepted changes,
the other factors' b) are taken by the next pass over the rows.

One case keeps more: Poisson with one factor and its intercept alone (the commonest GLM; a
shard that *carries*). Its level moves and the fixed move's terms read per-level sums of y eta,
y, mu, F y, F mu and F F' mu alone (:func:`intercept_pass`; those of y, which no move changes,
computed once, :func:`response_level_sums`), and every change of eta between
two fixed moves is a per-level constant d_j (the level moves, a scale move b_j -> e^s b_j) or
none at all (a shift move: a_D + d and b_j - w_j'd leave eta as it is), under which the sums
change in closed form (:func:`moved_level_sums`). So the chain keeps its sums at its current
values and, from :meth:`LevelShard.evaluate`'s pass, at the fixed move's proposal
(:class:`CarriedSums`, of the chain that swept last); the next sweep starts from whichever
the kernel accepted (``SweepMessage.moved``): one pass over the rows a sweep,
:meth:`~LevelShard.evaluate`'s, where there were two. The sums carried are
refreshed from the rows by every accepted fixed move; in between they take the closed forms'
rounding, a few units in the last place a sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from .crossed import _backward
from ..families import NEGBINOMIAL_CODE
from ..linalg import copy_into
from .crossed_metropolis import (_ones_step, _row_pending, _row_terms, add_fixed_row, add_level_sums, add_mean_sums,
                                 add_response_sums, apply_pending, fixed_terms, fixed_terms_from_levels,
                                 intercept_only, laplace_point, level_multiples, level_terms, linear_predictor,
                                 mirror_lower, nested_inner_map, nested_laplace_sums, nested_terms, rotation_log_ratio)
from .keyed import level_draws
from .negbinomial import distinct_counts, nb_phi_loglik


@njit(cache=True)
def ones_rotation(b, sinv, phi, g0, H0, z, u, hastings, D):
    """Every level's rotation move of a Poisson factor with the intercept alone in closed form
    (:func:`~multilevel.samplers.crossed_metropolis._ones_step`) from its sums g0 = Sy - Smu,
    H0 = Smu at b (J, 1), prior precision ``sinv``, noise z (J, 1) and uniforms u (J,): b
    updated in place, D (J, 1) receives the accepted changes. Returns the number accepted."""
    cphi, s2 = np.cos(phi), np.sin(phi) ** 2
    accepted = 0
    for j in range(b.shape[0]):
        smu = H0[j, 0, 0]
        ok, d, _ = _ones_step(b[j, 0], sinv, cphi, s2, g0[j, 0] + smu, smu, z[j, 0], u[j], hastings)
        D[j, 0] = d
        if ok:
            accepted += 1
            b[j, 0] += d
    return accepted


@njit(cache=True)
def rotation_proposals(b, g0, H0, Sinv, phi, z, D):
    """Every level's rotation proposal from its sums at b (J, q) (the likelihood's gradient g0
    and information H0) with the noise z (J, q): D (J, q) receives b*_j - b_j. Returns what the
    acceptance needs (:func:`rotation_accept`): per level the log prior, the Newton point, the
    Cholesky factor and whether it exists."""
    J, q = b.shape
    cphi, sphi = np.cos(phi), np.sin(phi)
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
        lp0[j] = lp
        copy_into(M0[j], m)
        copy_into(Ls[j], L)
        copy_into(w, z[j])
        _backward(L, w, q)
        for c in range(q):
            D[j, c] = m[c] + cphi * (b[j, c] - m[c]) + sphi * w[c] - b[j, c]
    return lp0, M0, Ls, valid


@njit(cache=True)
def rotation_accept(b, D, ll0, ll1, g1, H1, lp0, M0, Ls, valid, Sinv, phi, hastings, u):
    """Every level's acceptance test (the uniforms u (J,)) of the proposals D of
    :func:`rotation_proposals` from its sums at b (ll0) and at b + D (ll1, g1, H1): b updated
    in place, D zeroed where rejected. Returns the number accepted."""
    J, q = b.shape
    zero = np.zeros(q)
    accepted = 0
    for j in range(J):
        if not valid[j]:
            continue
        x = b[j].copy()
        xs = x + D[j]
        lp1, m1, L1, ok = laplace_point(xs, g1[j], H1[j], Sinv, zero)
        if ok and np.log(u[j]) < rotation_log_ratio(x, xs, ll0[j], ll1[j], lp0[j], lp1, M0[j], Ls[j], m1, L1, phi,
                                                    hastings):
            accepted += 1
            copy_into(b[j], xs)
        else:
            D[j] = 0.0
    return accepted


@njit(cache=True)
def level_rotation(code, y, n, eta, Z, index, J, b, Sinv, phi, hastings, z, u, ones, ll0, g0, H0, D):
    """Every level's rotation move at once from its sums at b (ll0, g0, H0 of
    :func:`~multilevel.samplers.crossed_metropolis.level_terms`) with the noise z (J, q) and the
    uniforms u (J,): b (J, q) updated in place, D (J, q) receives the accepted changes. ``ones``:
    Poisson with the intercept alone, the closed form (no pass at the proposals). Returns the
    number of levels accepted. The factor's covariates are Z's first q columns."""
    if ones:
        return ones_rotation(b, Sinv[0, 0], phi, g0, H0, z, u, hastings, D)
    q = b.shape[1]
    lp0, M0, Ls, valid = rotation_proposals(b, g0, H0, Sinv, phi, z, D)
    ll1, g1, H1 = level_terms(code, y, n, eta, Z, np.int64(0), q, index, J, D)  # int64: as the other callers'
    return rotation_accept(b, D, ll0, ll1, g1, H1, lp0, M0, Ls, valid, Sinv, phi, hastings, u)


@njit(cache=True)
def response_level_sums(y, offset, F, index, J):
    """Per level j the sums of :func:`intercept_pass` that move with neither a nor b: of
    y_i offset_i, y_i and F_i y_i (a shard's, once)."""
    Syoff, Sy, SFy = np.zeros(J), np.zeros(J), np.zeros((J, F.shape[1]))
    for i in range(y.shape[0]):
        Syoff[index[i]] += y[i] * offset[i]
        add_response_sums(index[i], i, y[i], F, Sy, SFy)
    return Syoff, Sy, SFy


@njit(cache=True)
def intercept_pass(y, offset, F, a, b, index, J, Syoff, Sy, SFy):
    """For Poisson with the intercept alone, at eta_i = offset_i + F_i a + b_j(i): per level j the
    sums of y_i eta_i, y_i, mu_i, F_i y_i, F_i mu_i and F_i F_i' mu_i (lower triangle): the levels'
    closed-form moves read Sy and Smu, and the fixed move's terms after them follow from the rest
    (:func:`~multilevel.samplers.crossed_metropolis.fixed_terms_from_levels`). One pass over the
    rows for the sums of mu; those of y come from :func:`response_level_sums`' Syoff, Sy, SFy
    (returned as they are: callers do not write them), y eta's as Syoff_j + SFy_j'a + Sy_j b_j.
    eta itself is not kept (the sums are, module docstring)."""
    p = F.shape[1]
    Smu, SFmu, SFFmu = np.zeros(J), np.zeros((J, p)), np.zeros((J, p, p))
    for i in range(y.shape[0]):
        j = index[i]
        e = offset[i] + b[j, 0]
        for c in range(p):
            e += F[i, c] * a[c]
        add_mean_sums(j, i, np.exp(min(e, 700.0)), F, Smu, SFmu, SFFmu)
    Syeta = np.empty(J)
    for j in range(J):
        s = Syoff[j] + Sy[j] * b[j, 0]
        for c in range(p):
            s += SFy[j, c] * a[c]
        Syeta[j] = s
    return Syeta, Sy, Smu, SFy, SFmu, SFFmu


@njit(cache=True)
def level_fixed_sums(y, eta, F, index_k, Jk, sync):
    """For another factor of Poisson's intercept alone: eta_i first takes the change still owed to
    it (``sync`` as :func:`~multilevel.samplers.crossed_metropolis.level_terms`'s), then per level
    j of that factor the sums of :func:`intercept_pass` (its level sums, and the fixed move's terms
    once the levels' changes are known), in one pass."""
    p = F.shape[1]
    Syeta, Sy, Smu = np.zeros(Jk), np.zeros(Jk), np.zeros(Jk)
    SFy, SFmu, SFFmu = np.zeros((Jk, p)), np.zeros((Jk, p)), np.zeros((Jk, p, p))
    for i in range(y.shape[0]):
        e = eta[i] + _row_pending(i, sync[0], sync[2], sync[3], sync[1], sync[4], sync[5], sync[6], sync[7], sync[8],
                                  sync[9], sync[10])
        eta[i] = e
        add_level_sums(index_k[i], i, y[i], e, np.exp(min(e, 700.0)), F, Syeta, Sy, Smu, SFy, SFmu, SFFmu)
    return Syeta, Sy, Smu, SFy, SFmu, SFFmu


@njit(cache=True)
def scale_terms(code, y, n, eta, F, da, Z, zc, c, index, b, f):
    """The change of ll when b_jc -> (1 + f) b_jc (eta_i + f Z_i,zc+c b_jc, the factor's
    covariates from Z's column zc), at eta and at eta + F da: one pass over the rows."""
    d0, d1 = 0.0, 0.0
    for i in range(eta.shape[0]):
        e0 = eta[i]
        e1 = e0
        for k in range(F.shape[1]):
            e1 += F[i, k] * da[k]
        de = f * Z[i, zc + c] * b[index[i], c]
        d0 += _row_terms(code, y[i], n[i], e0 + de)[0] - _row_terms(code, y[i], n[i], e0)[0]
        d1 += _row_terms(code, y[i], n[i], e1 + de)[0] - _row_terms(code, y[i], n[i], e1)[0]
    return d0, d1


@njit(cache=True)
def poisson_scale_pass(y, eta, F, da, index_k, Jk, sync):
    """Poisson, for a scale move of a factor with the intercept alone (``index_k`` its rows'
    levels): eta_i first takes the change still owed to it (``sync`` as
    :func:`~multilevel.samplers.crossed_metropolis.level_terms`'), then in one pass ll,
    F'(y - mu) and F'WF at eta + F da (:func:`~multilevel.samplers.crossed_metropolis.fixed_terms`')
    and per level j the sums Sy_j of y_i, S0_j of mu_i at eta and S1_j of mu_i at eta + F da:
    :func:`ones_scale_terms` gives the scale move's changes of ll from them, two exps a row
    where :func:`scale_terms` takes four."""
    N, p = F.shape
    ll, g, H = 0.0, np.zeros(p), np.zeros((p, p))
    Sy, S0, S1 = np.zeros(Jk), np.zeros(Jk), np.zeros(Jk)
    for i in range(N):
        e0 = eta[i] + _row_pending(i, sync[0], sync[2], sync[3], sync[1], sync[4], sync[5], sync[6], sync[7], sync[8],
                                   sync[9], sync[10])
        eta[i] = e0
        e = e0
        for c in range(p):
            e += F[i, c] * da[c]
        l, r, mu = _row_terms(0, y[i], 1.0, e)
        j = index_k[i]
        Sy[j] += y[i]
        S0[j] += np.exp(min(e0, 700.0))
        S1[j] += mu
        ll += l
        add_fixed_row(F, i, r, mu, g, H)
    mirror_lower(H)
    return ll, g, H, Sy, S0, S1


def ones_scale_terms(Sy: np.ndarray, S0: np.ndarray, S1: np.ndarray, b: np.ndarray, f: float) -> tuple[float, float]:
    """The change of Poisson's ll when b_j -> (1 + f) b_j for a factor with the intercept alone,
    at eta and at eta + F da, from :func:`poisson_scale_pass`' level sums: its rows' eta_i gain
    d_j = f b_j, so ll changes by sum_j [d_j Sy_j - (e^d_j - 1) S_j] with S_j = S0_j or S1_j."""
    d = f * b
    grow = np.expm1(d)
    return float(np.sum(d * Sy - grow * S0)), float(np.sum(d * Sy - grow * S1))


class LevelPart(NamedTuple):
    """A shard's per-level sums of another factor, for the levels its rows touch (``levels``,
    sorted, or ``slice(None)`` for all; row m of each array in ``sums`` is level levels[m]'s): a
    nested factor's shard touches a few of the outer factor's levels, and its answer is that
    much smaller. Summed over the shards in shard order by
    :func:`multilevel.samplers.sharded.level_summed`."""

    levels: Any
    sums: tuple


def touched_levels(index: np.ndarray, J: int) -> Any:
    """The levels among ``index`` (sorted), or ``slice(None)`` when they are all J."""
    levels = np.unique(index).astype(np.int64)
    return slice(None) if levels.shape[0] == J else levels


def level_part(sums: tuple, levels: Any) -> LevelPart:
    """The rows ``levels`` of each per-level array in ``sums`` (all of a factor's levels)."""
    return LevelPart(levels, tuple(np.ascontiguousarray(x[levels]) for x in sums))


def sums_by_parent(x: np.ndarray, parent: np.ndarray, J_out: int) -> np.ndarray:
    """Per outer level l, the sum of x_j (x: (J, ...) per inner level) over the inner levels j
    with parent[j] = l: (J_out, ...)."""
    flat = x.reshape(x.shape[0], -1)
    out = np.stack([np.bincount(parent, weights=flat[:, i], minlength=J_out) for i in range(flat.shape[1])], axis=1)
    return out.reshape((J_out, *x.shape[1:]))


class ShardRows(NamedTuple):
    """The rows of levels [lo, lo + J) of the sharded factor, sorted by its level: response y,
    trials n, offset, fixed design F (N, p), every factor's covariates Z (N, sum_k q_k) side by
    side (the sharded factor's first, then the other factors' in formula order), ``index``
    (K, N) each row's level per factor (the sharded factor's - lo, the others' global, int32),
    ``q`` (K,) the factors' columns and ``levels`` (K,) their levels (the sharded factor's: J)."""

    y: np.ndarray
    n: np.ndarray
    offset: np.ndarray
    F: np.ndarray
    Z: np.ndarray
    index: np.ndarray
    lo: int
    J: int
    q: np.ndarray
    levels: np.ndarray


class SweepMessage(NamedTuple):
    """What a sweep sends every shard: the chain's key and sweep number, a and Sigma^-1 (of the
    sharded factor), its levels' angle, whether the Hastings correction is made, the changes of b
    the last sweep's moves owe (``scale`` (q,) factors, ``shift`` the shift moves' d one after
    the other, 0 where not made), whether b, once they are made, is a kept draw, tau =
    diag(Sigma) (for the levels' prior shares, :class:`SweepSums`), the other factors' effects
    ``other`` (flat, factor after factor, level-major; empty with one factor) and ``then``: the
    other factor (its position, 1, 2, ...) whose per-level sums the answer carries, or 0 for the
    fixed move's terms; ``fold``: those sums are :func:`level_fixed_sums`'s (the factor ``then``
    is the last and Poisson's intercept alone); ``dispersion``: the negative binomial's phi (the
    rows' ``n`` this sweep; unused by the other families); ``joint``: the sweep makes the nested
    variance move (:meth:`LevelShard.joint_terms`), for which the folded sums are summed per
    level of this shard's factor first and kept; ``moved``: the last sweep's fixed move was
    accepted (a shard that carries its sums starts from those at its proposal, module docstring)."""

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
    other: np.ndarray
    then: int
    fold: bool = False
    dispersion: float = 1.0
    joint: bool = False
    moved: bool = False


class SweepSums(NamedTuple):
    """A shard's answer to a sweep: levels accepted; sum_j b_j, sum_j b_j b_j'; per shift move
    sum_j w_j b_j'; sum_j 1 / (1 + tau_c H_j,cc) per column (the prior's share); ll, F'(y - mu)
    and F'WF at the new values (``then`` 0), or per level of the other factor ``then`` its ll_j,
    Z'(y - mu) and Z'WZ (``levels``; ll, g, H then 0); per nested pair (:meth:`LevelShard.set_nested`)
    the sums of b over the levels of each outer level, (J_out, q) (``Sbp``)."""

    accepted: int
    Sb: np.ndarray
    Sbb: np.ndarray
    Swb: tuple
    shares: np.ndarray
    ll: float
    g: np.ndarray
    H: np.ndarray
    levels: tuple | None = None
    Sbp: tuple = ()


def moved_level_sums(sums: tuple, d: np.ndarray) -> tuple:
    """:func:`intercept_pass`' per-level sums once level j's rows have eta_i + d_j: y eta gains
    d_j y, mu, F mu and F F' mu take the factor e^d_j; y and F y are as they were."""
    Syeta, Sy, Smu, SFy, SFmu, SFFmu = sums
    E = np.exp(d)
    return Syeta + d * Sy, Sy, E * Smu, SFy, E[:, None] * SFmu, E[:, None, None] * SFFmu


@dataclass
class ChainSlot:
    """One chain's effects in a shard (the sharded factor's ``b``, the copy ``other`` of the other
    factors' the kernel sent last) and its kept draws."""

    b: np.ndarray
    other: np.ndarray
    draws: list = field(default_factory=list)


@dataclass
class CarriedSums:
    """What a shard that carries its sums (module docstring) keeps of the chain that swept last
    (``key``): the a of that sweep, :func:`intercept_pass`' sums at the chain's current values
    (``at``) and at the fixed move's proposal (``proposed``; None: not made). One chain's, as the
    shard's eta buffer: a sweep of another chain starts with a pass over the rows."""

    key: bytes
    a: np.ndarray
    at: tuple
    proposed: tuple | None = None


class LevelShard:
    """The rows and effects of one shard (module docstring); ``code`` the family's
    log-likelihood code (:data:`multilevel.families.CODES`)."""

    def __init__(self, rows: ShardRows, code: int):
        self.rows, self.code = rows, int(code)
        self.negbinomial = self.code == NEGBINOMIAL_CODE
        #: the code of the fits for the priors and the start (Poisson's for the negative binomial)
        self.fit_code = 0 if self.negbinomial else self.code
        #: the rows' n as the row terms read it: the trials, or phi in every row (negative binomial)
        self.n = np.ones(rows.y.shape[0]) if self.negbinomial else rows.n
        #: the distinct responses and their counts (the phi move's log Gamma terms; negative binomial)
        self.y_values, self.y_counts = distinct_counts(rows.y) if self.negbinomial else (np.zeros(0), np.zeros(0))
        q = np.asarray(rows.q, dtype=np.int64)
        self.q = int(q[0])
        #: per factor (position): its first column in Z, and its first effect in the flat b of all factors
        self.z_off = np.concatenate([[0], np.cumsum(q)[:-1]]).astype(np.int64)
        J = np.asarray(rows.levels, dtype=np.int64).copy()
        J[0] = rows.J
        self.J_all = J
        self.b_off = np.concatenate([[0], np.cumsum(J * q)[:-1]]).astype(np.int64)
        self.eta = np.empty(rows.y.shape[0])
        self.pending = np.zeros((rows.J, self.q))  # the levels' changes eta has not taken yet
        self.pending_other = np.zeros(int(np.sum(J[1:] * q[1:])))  # and the other factors'
        #: per factor: Poisson with the intercept alone in this shard's rows (closed forms)
        self.ones_all = np.array([bool(intercept_only(self.code, rows.Z, int(self.z_off[k]), int(q[k])))
                                  for k in range(q.shape[0])], dtype=np.bool_)
        self.ones = bool(rows.y.shape[0]) and bool(self.ones_all[0])
        #: Poisson, one factor, its intercept alone: the chains' level sums carried between sweeps
        self.carries = self.ones and q.shape[0] == 1
        self.carried: CarriedSums | None = None
        #: a shard that carries: its levels' sums of y offset, y and F y (:func:`response_level_sums`)
        self.response_sums = (response_level_sums(rows.y, rows.offset, rows.F, rows.index[0], rows.J) if self.carries
                              else ())
        self.chains: dict[bytes, ChainSlot] = {}
        #: per other factor (position 1, 2, ...), the levels this shard's rows touch (all: a slice)
        self.touched: list[Any] = [slice(None)] + [touched_levels(rows.index[k], int(rows.levels[k]))
                                                   for k in range(1, q.shape[0])]
        self.shifts: list[tuple[int, np.ndarray, np.ndarray]] = []  # (column, fixed columns, W (J, |D|))
        #: nested pairs (factor position, column, its column, parent per level here, levels): set_nested
        self.nested: list[tuple[int, int, int, np.ndarray, int]] = []
        #: the nested variance move's kept sums per level, the changes of u_j since, its H_j, h_j
        #: and proposed b*_in (:meth:`joint_terms`, one sweep's, for the chain whose sweep it is)
        self.joint_sums: tuple[np.ndarray, ...] = ()
        self.joint_change = self.joint_H = self.joint_h = np.zeros(0)
        self.joint_new: np.ndarray | None = None
        self.joint_out: np.ndarray | None = None
        self.joint_d: np.ndarray | None = None

    # -- what the priors and the set-up read ----------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Rows, sums of y and n, the moments, extremes and first row of F's columns, per factor
        the moments of its Z columns and whether it is Poisson's intercept alone here, and (negative
        binomial) sum log y_i!."""
        from scipy.special import gammaln

        from ..moments import moments_of

        r = self.rows
        return {"rows": r.y.shape[0], "y": float(r.y.sum()), "n": float(r.n.sum()), "F": moments_of(r.F),
                "F_min": r.F.min(axis=0, initial=np.inf), "F_max": r.F.max(axis=0, initial=-np.inf),
                "F_abs": np.abs(r.F).max(axis=0, initial=0.0), "F_first": r.F[0] if len(r.F) else None,
                "Z": [moments_of(r.Z[:, o:o + qk]) for o, qk in zip(self.z_off, r.q)], "ones": self.ones_all.copy(),
                "levels": np.asarray(r.levels, dtype=np.int64), "log_y_factorial": float(np.sum(gammaln(r.y + 1.0))) if self.negbinomial else 0.0}

    def pooled_terms(self, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """F'(y - mu) and F'WF at eta = offset + F coef (the pooled fit's Newton terms)."""
        r = self.rows
        eta = r.offset + r.F @ coef
        _, g, H = fixed_terms(self.fit_code, r.y, r.n, eta, r.F, np.zeros(r.F.shape[1]))
        return g, H

    def dispersion_moments(self, a: np.ndarray) -> tuple[float, float]:
        """:func:`multilevel.priors.dispersion_moments` of the rows at eta = offset + F a."""
        from ..priors import dispersion_moments

        r = self.rows
        return dispersion_moments(r.y, np.exp(np.minimum(r.offset + r.F @ a, 700.0)))

    def negbinomial_information(self, a: np.ndarray, s_mu2: float, excess: float) -> np.ndarray:
        """:func:`multilevel.priors.negbinomial_information` of the rows at eta = offset + F a, with
        the sums of :meth:`dispersion_moments` over all shards."""
        from ..priors import negbinomial_information

        r = self.rows
        return negbinomial_information(r.F, np.exp(np.minimum(r.offset + r.F @ a, 700.0)), s_mu2, excess)

    def level_fits(self, family: Any, a: np.ndarray) -> np.ndarray:
        """The sharded factor's levels' own fits of y on Z given offset + F a that count
        (:func:`multilevel.glmfit.group_fits`)."""
        from ..glmfit import group_fits

        r = self.rows
        starts = np.searchsorted(r.index[0], np.arange(r.J + 1)).astype(np.int64)
        fits, own = group_fits(family, r.Z[:, :self.q], r.y, r.n, r.offset + r.F @ a, starts, np.zeros(self.q))
        return fits[own]

    def fit_terms(self, k: int, a: np.ndarray, bk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per level of the other factor at position k, at eta = offset + F a + Z_k b_k: Z_k'(y - mu),
        Z_k'WZ_k and the rows (the Newton terms of its levels' own fits, summed over the shards)."""
        r = self.rows
        Jk, qk = int(r.levels[k]), int(r.q[k])
        _, g, H = level_terms(self.fit_code, r.y, r.n, r.offset + r.F @ a, r.Z, int(self.z_off[k]), qk, r.index[k], Jk,
                              np.ascontiguousarray(bk, dtype=float))
        return g, H, np.bincount(r.index[k], minlength=Jk)

    def multiples(self) -> list[np.ndarray]:
        """Per covariate c of the sharded factor, the fixed columns that are level multiples of it
        in this shard (:func:`~multilevel.samplers.crossed_metropolis.level_multiples`)."""
        r = self.rows
        return [level_multiples(r.F, np.ascontiguousarray(r.Z[:, c]), r.index[0], r.J)[0] for c in range(self.q)]

    def same_columns(self, pairs: list[tuple[int, int, int]]) -> list[bool]:
        """Per (factor position k, its column c, fixed column m): Z_k[:, c] = F[:, m] in every row
        here (the other factors' shift moves, w_j = 1)."""
        r = self.rows
        return [bool(np.array_equal(r.Z[:, self.z_off[k] + c], r.F[:, m])) for k, c, m in pairs]

    def nesting(self, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Whether the sharded factor is nested in the factor at position k here: (the first
        level here, per level the level of factor k its rows are in, -1 where they are in
        several, and per (column c of the sharded factor, column d of factor k) whether
        Z[:, c] = Z_k[:, d] in every row)."""
        r = self.rows
        parent = np.full(r.J, -1, dtype=np.int64)
        parent[r.index[0]] = r.index[k]
        parent[r.index[0][parent[r.index[0]] != r.index[k]]] = -1
        equal = np.array([[np.array_equal(r.Z[:, c], r.Z[:, self.z_off[k] + d]) for d in range(int(r.q[k]))]
                          for c in range(self.q)], dtype=bool).reshape(self.q, int(r.q[k]))
        return int(r.lo), parent, equal

    def set_nested(self, pairs: list[tuple[int, int, int]]) -> list[list[np.ndarray]]:
        """Keep the nested pairs (factor position k the sharded factor is nested in, column c of
        the sharded factor, column d of k's: :meth:`nesting`); returns per pair and per shift
        move the sums of its weights w_j over the levels of each outer level (J_k, D)."""
        r = self.rows
        self.nested = []
        out = []
        for k, c, d in pairs:
            parent = self.nesting(k)[1]
            Jk = int(r.levels[k])
            self.nested.append((int(k), int(c), int(d), parent, Jk))
            out.append([sums_by_parent(W, parent, Jk) for _, _, W in self.shifts])
        return out

    def nest(self, key: np.ndarray, i: int, d: np.ndarray) -> None:
        """Nested pair i's shift (:mod:`multilevel.samplers.sharded`): b_jc - d_parent(j) for the
        sharded factor's levels and b_k,l,d + d_l in the copy of the outer factor's effects, both
        owed to eta, where they cancel."""
        k, c, col, parent, Jk = self.nested[i]
        slot, r = self.chains[bytes(key)], self.rows
        change = np.asarray(d, dtype=float)[parent]
        slot.b[:, c] -= change
        self.pending[:, c] -= change
        o, qk = int(self.b_off[k] - self.b_off[1]), int(r.q[k])
        slot.other[o + col:o + Jk * qk:qk] += d
        self.pending_other[o + col:o + Jk * qk:qk] += d

    def set_shifts(self, groups: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """Keep the shift moves (column c, fixed columns D) and their weights; returns per move
        sum_j w_j w_j'."""
        r = self.rows
        self.shifts = []
        out = []
        for c, cols in groups:
            found, W = level_multiples(r.F, np.ascontiguousarray(r.Z[:, c]), r.index[0], r.J)
            W = np.ascontiguousarray(W[:, [int(np.flatnonzero(found == m)[0]) for m in cols]]) if len(cols) else W
            self.shifts.append((c, np.asarray(cols), W))
            out.append(W.T @ W)
        return out

    # -- the chains -----------------------------------------------------------------------------
    def start(self, key: np.ndarray) -> None:
        """A chain's effects at 0."""
        self.chains[bytes(key)] = ChainSlot(np.zeros((self.rows.J, self.q)), np.zeros(self.pending_other.shape[0]))

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

    def _owe(self, slot: ChainSlot, other: np.ndarray) -> None:
        """Take the kernel's other factors' effects: their changes since the last copy are owed to eta."""
        if other.shape[0]:
            self.pending_other += other - slot.other
            slot.other = np.array(other, dtype=float)

    def sweep(self, m: SweepMessage) -> SweepSums:
        """The levels' moves of one sweep (module docstring): three passes over the rows (eta
        with the levels' sums at b, their sums at the proposals, the fixed move's terms or the
        next factor's level sums), or in a shard that carries its sums none (the levels' closed
        form and the fixed move's terms from the sums the chain carries, :func:`intercept_pass`'s
        at its first sweep)."""
        r, slot = self.rows, self.chains[bytes(m.key)]
        c = self.carried
        carried = (c.proposed if m.moved else c.at) if c is not None and c.key == bytes(m.key) else None
        if carried is not None and np.any(m.scale != 1.0):  # the last scale move's change of eta
            carried = moved_level_sums(carried, (m.scale[0] - 1.0) * slot.b[:, 0])
        self._settle(slot, m.scale, m.shift, m.keep_previous)
        if self.negbinomial:
            self.n[:] = m.dispersion
        if m.other.shape[0]:
            slot.other = np.array(m.other, dtype=float)
        self.pending_other[:] = 0.0
        b, q, J, p = slot.b, self.q, r.J, r.F.shape[1]
        z, u = level_draws(m.key, m.sweep, r.lo, r.lo + J, q)
        D = np.zeros((J, q))
        levels = None
        if self.carries:
            sums = carried if carried is not None else intercept_pass(r.y, r.offset, r.F, m.a, b, r.index[0], J,
                                                                      *self.response_sums)
            Sy, Smu = sums[1], sums[2]
            g0, H0 = (Sy - Smu).reshape(J, 1), Smu.reshape(J, 1, 1)
            shares = np.sum(1.0 / (1.0 + m.tau[0] * Smu), keepdims=True)
            accepted = level_rotation(self.code, r.y, self.n, self.eta, r.Z, r.index[0], J, b, m.Sinv, m.phi, m.hastings,
                                      z, u, True, np.zeros(J), g0, H0, D)
            self.carried = CarriedSums(bytes(m.key), m.a, moved_level_sums(sums, D[:, 0]))
            ll, g, H = fixed_terms_from_levels(*self.carried.at, np.zeros(J))
        else:
            self.eta[:] = linear_predictor(r.offset, r.F, m.a, r.Z, r.index, self.z_off, r.q, self.b_off,
                                           np.concatenate([b.ravel(), slot.other]))
            ll0, g0, H0 = level_terms(self.code, r.y, self.n, self.eta, r.Z, 0, q, r.index[0], J, np.zeros((J, q)), None,
                                      self.ones)
            shares = np.sum(1.0 / (1.0 + m.tau[None, :] * np.diagonal(H0, axis1=1, axis2=2)), axis=0)
            accepted = level_rotation(self.code, r.y, self.n, self.eta, r.Z, r.index[0], J, b, m.Sinv, m.phi, m.hastings,
                                      z, u, self.ones, ll0, g0, H0, D)
            self.pending = D
            if m.then:
                ll, g, H = 0.0, np.zeros(p), np.zeros((p, p))
                levels = self._joint_sums() if m.joint else self._level_sums(m.then, None, m.fold)
            else:
                ll, g, H = fixed_terms(self.code, r.y, self.n, self.eta, r.F, np.zeros(p), None, None, self._sync())
        Swb = tuple(W.T @ b for _, _, W in self.shifts)
        Sbp = tuple(sums_by_parent(b, parent, Jk) for _, _, _, parent, Jk in self.nested)
        return SweepSums(accepted, b.sum(axis=0), b.T @ b, Swb, shares, ll, g, H, levels, Sbp)

    def _sync(self) -> tuple:
        """The changes still owed to eta (the sharded factor's levels' ``pending``, the other
        factors' ``pending_other``), as the passes of :mod:`~multilevel.samplers.crossed_metropolis`
        take them; nothing owed after the pass."""
        r, p = self.rows, self.rows.F.shape[1]
        D = np.concatenate([self.pending.ravel(), self.pending_other])
        pend = np.array([np.any(D[o:o + n]) for o, n in zip(self.b_off, self.J_all * r.q)], dtype=np.bool_)
        self.pending = np.zeros((r.J, self.q))
        self.pending_other = np.zeros(self.pending_other.shape[0])
        return (r.F, r.Z, np.zeros(p), False, self.z_off, np.asarray(r.q, dtype=np.int64), r.index, self.b_off, D,
                pend, self.ones_all)

    def _level_sums(self, k: int, D: np.ndarray | None, fold: bool = False) -> LevelPart:
        """Per level of the other factor at position k: ll_j, Z_j'(y - mu), Z_j'WZ_j at eta + Z_k D
        (D None: at eta), or with ``fold`` :func:`level_fixed_sums`'s sums at eta; eta first taking
        what it is owed."""
        r = self.rows
        Jk, qk = int(r.levels[k]), int(r.q[k])
        if fold:
            return level_part(level_fixed_sums(r.y, self.eta, r.F, r.index[k], Jk, self._sync()), self.touched[k])
        delta = np.zeros((Jk, qk)) if D is None else np.ascontiguousarray(D, dtype=float)
        return level_part(level_terms(self.code, r.y, self.n, self.eta, r.Z, int(self.z_off[k]), qk, r.index[k], Jk,
                                      delta, self._sync(), bool(self.ones_all[k])), self.touched[k])

    def terms(self, key: np.ndarray, other: np.ndarray, k: int, D: np.ndarray | None, fold: bool = False
              ) -> tuple[Any, ...] | LevelPart:
        """After taking the kernel's other factors' effects ``other`` (their changes owed to eta):
        per level of the other factor at position k (those this shard's rows touch,
        :class:`LevelPart`) its ll_j, Z'(y - mu) and Z'WZ at eta + Z_k D
        (D None: at eta; the current sums or a proposal's; ``fold``: :func:`level_fixed_sums`'s),
        or with k = 0 ll, F'(y - mu) and F'WF at eta (the fixed move's terms at a)."""
        r = self.rows
        self._owe(self.chains[bytes(key)], other)
        if k == 0:
            return fixed_terms(self.code, r.y, self.n, self.eta, r.F, np.zeros(r.F.shape[1]), None, None, self._sync())
        return self._level_sums(k, D, fold)

    # -- the nested variance move (step 7 of the crossed kernel) ------------------------------------
    def _joint_sums(self) -> LevelPart:
        """The folded sums (:func:`level_fixed_sums`) per level of this shard's factor (the inner
        one of the nested pair, its rows contiguous), kept for the move with the changes of u_j
        since (none yet), and returned summed per level of the outer factor, as the fold's."""
        r = self.rows
        _, _, _, parent, J_out = self.nested[0]
        self.joint_sums = level_fixed_sums(r.y, self.eta, r.F, r.index[0], r.J, self._sync())
        self.joint_change = np.zeros(r.J)
        return level_part(tuple(sums_by_parent(x, parent, J_out) for x in self.joint_sums), self.touched[1])

    def joint_terms(self, key: np.ndarray, nest: tuple | None, other: np.ndarray, tau_in: float, tin: float
                    ) -> LevelPart:
        """The nested variance move's first round (:mod:`multilevel.samplers.sharded`): make the
        nested shift move ``nest`` = (pair, d) if given (:meth:`nest`), take the kernel's other
        factors' effects (the outer levels' moves change u_j = b_in,j + b_out,parent(j) of every
        inner level here), then per inner level H_j, h_j at the current values
        (:func:`~multilevel.samplers.crossed_metropolis.nested_terms`, Smu_j the kept sum times
        e^{change of u_j}); returns their parts of S_l and S_l m_l per outer level at tau_in and
        at tin (:func:`~multilevel.samplers.crossed_metropolis.nested_laplace_sums`)."""
        slot = self.chains[bytes(key)]
        if nest is not None:
            self.nest(key, *nest)
        k, _, _, parent, J_out = self.nested[0]
        before = self._effects(slot, k)[:, 0].copy()
        self._owe(slot, other)
        b_out = self._effects(slot, k)[:, 0]
        self.joint_change += (b_out - before)[parent]
        _, Sy, Smu = self.joint_sums[:3]
        b = np.concatenate([slot.b[:, 0], b_out])
        self.joint_H, self.joint_h = nested_terms(b, 0, self.rows.J, self.rows.J, parent, Sy,
                                                  Smu * np.exp(self.joint_change))
        return level_part((*nested_laplace_sums(tau_in, self.joint_H, self.joint_h, parent, J_out),
                           *nested_laplace_sums(tin, self.joint_H, self.joint_h, parent, J_out)), self.touched[k])

    def joint_propose(self, key: np.ndarray, new_out: np.ndarray, tau_in: float, tin: float,
                      previous: bool | None = None) -> tuple[Any, ...]:
        """A nested variance move's second round (after :meth:`joint_settle` of the move before,
        ``previous``, if any): the inner levels' part of the move given the outer levels' b*_out
        (:func:`~multilevel.samplers.crossed_metropolis.nested_inner_map`, kept until settled);
        returns its part of the log ratio, the fixed move's terms ll, F'(y - mu), F'WF at a if the
        move is accepted (the kept sums with the changes of u_j,
        :func:`~multilevel.samplers.crossed_metropolis.fixed_terms_from_levels`) and the shift
        moves' sums sum_j w_j b*_j' then."""
        if previous is not None:
            self.joint_settle(key, previous)
        slot = self.chains[bytes(key)]
        k, _, _, parent, _ = self.nested[0]
        Syeta, Sy, Smu, SFy, SFmu, SFFmu = self.joint_sums
        new_out = np.asarray(new_out, dtype=float)
        new_in, d, _, log_r = nested_inner_map(slot.b[:, 0].copy(), self._effects(slot, k)[:, 0].copy(), new_out,
                                               parent, self.joint_H, self.joint_h, Sy, Smu * np.exp(self.joint_change),
                                               float(tau_in), float(tin), True)
        self.joint_new, self.joint_out, self.joint_d = new_in, new_out, d
        ll, g, H = fixed_terms_from_levels(Syeta, Sy, Smu, SFy, SFmu, SFFmu, self.joint_change + d)
        b = slot.b.copy()
        b[:, 0] = new_in
        return (log_r, ll, g, H, *(W.T @ b for _, _, W in self.shifts))

    def joint_settle(self, key: np.ndarray, accepted: bool) -> None:
        """Make the proposed nested variance move if it was accepted: the inner levels' b*_in and
        this shard's copy of the outer levels' b*_out, their changes owed to eta."""
        if accepted:
            slot = self.chains[bytes(key)]
            k = self.nested[0][0]
            self.pending[:, 0] += self.joint_new - slot.b[:, 0]
            slot.b[:, 0] = self.joint_new
            out = self._effects(slot, k)[:, 0]
            o = int(self.b_off[k] - self.b_off[1])
            self.pending_other[o:o + out.shape[0]] += self.joint_out - out
            out[:] = self.joint_out
            self.joint_change += self.joint_d
        self.joint_new = self.joint_out = self.joint_d = None

    def evaluate(self, key: np.ndarray, da: np.ndarray, k: int, c: int, f: float, other: np.ndarray,
                 joint: bool | None = None) -> tuple[float, np.ndarray, np.ndarray, float, float]:
        """ll, F'(y - mu), F'WF at a + da (the fixed move's proposal), and the change of ll when
        b_jc -> (1 + f) b_jc for factor position k (0: the sharded one) at a and at a + da (0, 0
        when c < 0); eta first takes the changes still owed to it (``other``: the other factors'
        effects, as :meth:`terms`; ``joint``: whether this sweep's nested variance move was
        accepted, :meth:`joint_settle`, None when none was made)."""
        r, slot = self.rows, self.chains[bytes(key)]
        if joint is not None:
            self.joint_settle(key, joint)
        self._owe(slot, other)
        if self.carries:  # the sums at a + da kept for the next sweep; the scale move from them
            da, carried = np.asarray(da, dtype=float), self.carried
            prop = carried.at if not np.any(da) else intercept_pass(r.y, r.offset, r.F, carried.a + da, slot.b,
                                                                    r.index[0], r.J, *self.response_sums)
            carried.proposed = prop
            ll1, g1, H1 = fixed_terms_from_levels(*prop, np.zeros(r.J))
            if c < 0:
                return ll1, g1, H1, 0.0, 0.0
            return ll1, g1, H1, *ones_scale_terms(prop[1], carried.at[2], prop[2], slot.b[:, 0], f)
        if c >= 0 and self.ones_all[k]:  # Poisson, the intercept alone: the scale move from level sums
            ll1, g1, H1, Sy, S0, S1 = poisson_scale_pass(r.y, self.eta, r.F, np.asarray(da, dtype=float), r.index[k],
                                                         int(self.J_all[k]), self._sync())
            return ll1, g1, H1, *ones_scale_terms(Sy, S0, S1, self._effects(slot, k)[:, 0], f)
        ll1, g1, H1 = fixed_terms(self.code, r.y, self.n, self.eta, r.F, da, None, None, self._sync())
        d0 = d1 = 0.0
        if c >= 0:
            d0, d1 = scale_terms(self.code, r.y, self.n, self.eta, r.F, da, r.Z, int(self.z_off[k]), c, r.index[k],
                                 self._effects(slot, k), f)
        return ll1, g1, H1, d0, d1

    def _effects(self, slot: ChainSlot, k: int) -> np.ndarray:
        """The chain's effects (J_k, q_k) of the factor at position k (0: the sharded one's b, else
        this shard's copy of the kernel's)."""
        if k == 0:
            return slot.b
        r = self.rows
        o = int(self.b_off[k] - self.b_off[1])
        return slot.other[o:o + int(r.levels[k] * r.q[k])].reshape(int(r.levels[k]), int(r.q[k]))

    def dispersion_terms(self, key: np.ndarray, da: np.ndarray, k: int, c: int, f: float,
                         log_phis: np.ndarray) -> tuple[np.ndarray]:
        """The negative binomial's phi moves (:mod:`multilevel.samplers.sharded`): at eta + F da
        (the fixed move's accepted change) + f Z_kc b_kc (the accepted scale move of column c of
        the factor at position k, b as before it; none when c < 0), eta first taking the changes
        still owed to it, sum_i [lgamma(y_i + phi) - lgamma(phi) + phi log phi + y_i eta_i
        - (y_i + phi) log(phi + mu_i)] at each phi = exp(log_phis[m]), in one pass
        (:func:`~multilevel.samplers.negbinomial.nb_phi_loglik`)."""
        r, slot = self.rows, self.chains[bytes(key)]
        sync = self._sync()
        if np.any(sync[9]):
            apply_pending(self.eta, sync[0], sync[2], sync[3], sync[1], sync[4], sync[5], sync[6], sync[7], sync[8],
                          sync[9], sync[10])
        eta = self.eta + r.F @ np.asarray(da, dtype=float)
        if c >= 0:
            eta += f * r.Z[:, int(self.z_off[k]) + c] * self._effects(slot, k)[r.index[k], c]
        return (nb_phi_loglik(r.y, eta, self.y_values, self.y_counts, np.asarray(log_phis, dtype=float)),)

    def flush(self, key: np.ndarray, scale: np.ndarray, shift: np.ndarray, keep: bool) -> None:
        """Make what the chain's last sweep owes (and keep that draw): the end of a run."""
        self._settle(self.chains[bytes(key)], scale, shift, keep)

    def group_draws(self, key: np.ndarray, n: int) -> np.ndarray:
        """The chain's first ``n`` kept draws of b, (n, J, q)."""
        draws = self.chains[bytes(key)].draws[:n]
        return np.stack(draws) if draws else np.zeros((0, self.rows.J, self.q))


__all__ = ["LevelPart", "LevelShard", "ShardRows", "SweepMessage", "SweepSums", "level_rotation", "moved_level_sums",
           "ones_rotation", "ones_scale_terms", "poisson_scale_pass", "rotation_accept", "rotation_proposals",
           "scale_terms"]
