r"""Statistics of a Gaussian model with several grouping factors, as blocks per factor and
per pair of factors, computed in one pass over the rows.

Write all location effects as one vector u = (t, b) and the rows' design as X = [X_t X_b]:

* t, the *dense block*: the fixed effects a (columns of F) and the effects of the *small*
  factors (at most :data:`SMALL_FACTOR_COLUMNS` levels x terms), drawn jointly;
* b, the effects of the *large* factors, factor after factor, level-major
  (level j of factor k is b[off_k + j q_k : off_k + (j + 1) q_k]).

Every full conditional of y = X u + e, e ~ N(0, sigma2 W^-1), depends on the rows only through
M = X'WX and X'Wy, which are sparse in a known pattern:

* G = X_t'WX_t, dense (P x P);
* per level j of a large factor k, A_kj = Z_kj'W Z_kj (q_k x q_k): M is block-diagonal
  within a factor, since a row has one level per factor;
* W_kj = X_tj'W Z_kj, the level's block of X_t'WX_b, stored by rows of b (CSR);
* C_kl = Z_k'W Z_l between two large factors: one entry per pair of levels that share rows
  (at most the number of rows; InstEval's students x lecturers table has 73,421), CSR by
  rows of b, entries of other factors only.

After this pass a sweep never reads rows: its cost is O(nnz(C) + nnz(W) + levels q^2 + P^3),
independent of the number of rows when levels share few rows.

The residual sum of squares SSR(u) = ||y - X u||_W^2 is expanded around a reference point
u_ref = (the pooled least-squares fit of the fixed effects, zero group effects), with
r = y - X u_ref computed row by row once:

    SSR(u) = r'Wr - 2 d'X'Wr + d'M d,       d = u - u_ref,

whose terms are of the size of the residuals, not of y (no cancellation when y has a large
mean). Precision weights scale rows by sqrt(w_i), as in :mod:`multilevel.suffstats`.

The rows are read in two passes, each a sum over rows and so a sum over any batches of rows
(:class:`BlockSums`, :class:`ResidualSums`): the first gives M, X'Wy and the reference point
(the normal equations F'WF a = F'Wy), the second r'Wr and X'Wr. Rows in memory are one batch;
a partitioned data set (:mod:`multilevel.distributed`) sums each partition's and adds them in
partition order, so the statistics do not depend on which worker summed which partition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.sparse as sp

from .moments import Moments, combine_moments, moments_of

if TYPE_CHECKING:
    from .design import CrossedDesign

#: a factor with at most this many effects (levels x terms) joins the fixed effects in the
#: dense block t, drawn jointly with them (InstEval's 28 department x service cells): a
#: factor nearly nested in another (lecturers in departments) trades its effects off against
#: the other's, which one-factor-at-a-time updates cannot break
SMALL_FACTOR_COLUMNS = 60


class FactorLayout(NamedTuple):
    """Where each factor's effects and covariance live in the sampler's flat arrays (one
    entry per factor, formula order)."""

    q: np.ndarray  # (K,) terms per factor
    J: np.ndarray  # (K,) levels
    large: np.ndarray  # (K,) bool: in b (else in the dense block t)
    off: np.ndarray  # (K,) first coordinate: in b for large factors, in t for small ones
    A_off: np.ndarray  # (K,) first entry of the factor's A blocks in ``A`` (large factors)
    sig_off: np.ndarray  # (K,) first entry of the factor's q x q Sigma in flat covariance arrays
    diagonal: np.ndarray  # (K,) bool: every block is one term (Sigma_k diagonal)
    block_start: np.ndarray  # (B,) per covariance block: its first column within its factor
    block_size: np.ndarray  # (B,)
    block_factor: np.ndarray  # (B,)


class BlockStats(NamedTuple):
    """The statistics (module docstring); P = len of t, nb = len of b."""

    G: np.ndarray  # (P, P)
    Xty_t: np.ndarray  # (P,)
    Xty_b: np.ndarray  # (nb,)
    A: np.ndarray  # flat per-level q x q blocks of the large factors
    W_ptr: np.ndarray  # (nb + 1,) CSR of X_b'WX_t by rows of b
    W_col: np.ndarray
    W_val: np.ndarray
    C_ptr: np.ndarray  # (nb + 1,) CSR of X_b'WX_b between different factors
    C_col: np.ndarray
    C_val: np.ndarray
    u_ref_t: np.ndarray  # (P,) reference point of t (b's is 0)
    rtr: float  # r'Wr of the reference residuals
    Xtr_t: np.ndarray  # (P,) X_t'Wr
    Xtr_b: np.ndarray  # (nb,) X_b'Wr
    n_obs: int
    logw: float  # sum log w_i (0 unweighted)
    p: int  # fixed effects (the first p entries of t)


def factor_layout(design: CrossedDesign, small_columns: int = SMALL_FACTOR_COLUMNS) -> FactorLayout:
    """Which factors are small (dense block) and where each factor's numbers live."""
    p = design.F.shape[1]
    factors = design.factors
    q = np.array([f.q for f in factors], dtype=np.int64)
    J = np.array([f.n_levels for f in factors], dtype=np.int64)
    large = q * J > small_columns
    off = np.zeros(len(factors), dtype=np.int64)
    A_off = np.zeros(len(factors), dtype=np.int64)
    t_next, b_next, a_next = p, 0, 0
    for k in range(len(factors)):
        if large[k]:
            off[k], A_off[k] = b_next, a_next
            b_next += J[k] * q[k]
            a_next += J[k] * q[k] * q[k]
        else:
            off[k] = t_next
            t_next += J[k] * q[k]
    sig_off = np.concatenate([[0], np.cumsum(q * q)[:-1]]).astype(np.int64)
    starts, sizes, owner = [], [], []
    for k, f in enumerate(factors):
        for b in f.blocks:
            starts.append(b[0])
            sizes.append(len(b))
            owner.append(k)
    diagonal = np.array([not f.correlated for f in factors], dtype=np.bool_)
    return FactorLayout(q, J, large, off, A_off, sig_off, diagonal, np.array(starts, dtype=np.int64),
                        np.array(sizes, dtype=np.int64), np.array(owner, dtype=np.int64))


def expanded_design(design: CrossedDesign, layout: FactorLayout) -> tuple[sp.csr_matrix, int]:
    """X = [X_t X_b] as a sparse rows x (P + nb) matrix (rows scaled by sqrt(w)), and P.

    Row i holds F_i in columns 0..p-1 and, per factor k, Z_k[i] in the columns of its level."""
    n, p = design.F.shape
    P = p + int(sum(layout.J[k] * layout.q[k] for k in range(len(layout.q)) if not layout.large[k]))
    cols = [np.broadcast_to(np.arange(p, dtype=np.int64), (n, p))]
    vals = [design.F]
    for k, f in enumerate(design.factors):
        base = layout.off[k] + (0 if not layout.large[k] else P)
        cols.append(base + f.index[:, None] * f.q + np.arange(f.q, dtype=np.int64)[None, :])
        vals.append(f.Z)
    width = p + int(layout.q.sum())
    values = np.hstack(vals)
    if design.weights is not None:
        values = values * np.sqrt(design.weights)[:, None]
    X = sp.csr_matrix((values.ravel(), np.hstack(cols).ravel(), np.arange(0, n * width + 1, width, dtype=np.int64)),
                      shape=(n, P + int(sum(layout.J[k] * layout.q[k] for k in range(len(layout.q)) if layout.large[k]))))
    return X, P


class BlockSums(NamedTuple):
    """The first pass's sums over a batch of rows (a partition, or all rows): additive, so
    batches combine by :func:`add_block_sums` in a fixed order."""

    G: np.ndarray  # (P, P) X_t'WX_t
    Mbt: sp.csr_matrix  # (nb, P) X_b'WX_t
    Mbb: sp.csr_matrix  # (nb, nb) X_b'WX_b
    Xty: np.ndarray  # (P + nb,) X'Wy
    n_obs: int
    logw: float  # sum log w_i
    counts: tuple[np.ndarray, ...]  # per factor, rows per level
    y: Moments  # of y (unweighted: the priors' fallback scale)
    z: tuple[Moments, ...]  # per factor, of its covariates Z_k


class ResidualSums(NamedTuple):
    """The second pass's sums, of the reference residuals r = y - F a_ref: additive."""

    rtr: float  # r'Wr
    Xtr: np.ndarray  # (P + nb,) X'Wr
    r: Moments  # of r (unweighted)


def _weighted(design: CrossedDesign, layout: FactorLayout) -> tuple[sp.csr_matrix, int, np.ndarray, float]:
    """X (rows scaled by sqrt(w)), P, y scaled alike, and sum log w."""
    X, P = expanded_design(design, layout)
    y = np.asarray(design.y, dtype=float)
    if design.weights is None:
        return X, P, y, 0.0
    return X, P, y * np.sqrt(design.weights), float(np.sum(np.log(design.weights)))


def block_sums(design: CrossedDesign, layout: FactorLayout) -> BlockSums:
    """The first pass over ``design``'s rows (level indices are the factors' full level sets).
    X'WX is formed by blocks (the dense columns t, the sparse columns b): a product of the
    whole X would spend most of its time on t's long rows of X'X."""
    X, P, y, logw = _weighted(design, layout)
    Xt, Xb = X[:, :P].tocsc(), X[:, P:].tocsc()
    Mbb = (Xb.T @ Xb).tocsr()
    Mbb.sum_duplicates()
    Mbt = (Xb.T @ Xt).tocsr()
    Mbt.sum_duplicates()
    return BlockSums(G=(Xt.T @ Xt).toarray(), Mbt=Mbt, Mbb=Mbb, Xty=X.T @ y, n_obs=int(design.n_obs), logw=logw,
                     counts=tuple(np.bincount(f.index, minlength=J) for f, J in zip(design.factors, layout.J)),
                     y=moments_of(design.y), z=tuple(moments_of(f.Z) for f in design.factors))


def residual_sums(design: CrossedDesign, layout: FactorLayout, a_ref: np.ndarray) -> ResidualSums:
    """The second pass over ``design``'s rows: sums of r = y - F a_ref (weighted: sqrt(w) r)."""
    X, _, y, _ = _weighted(design, layout)
    r = np.asarray(design.y, dtype=float) - design.F @ a_ref
    rw = r if design.weights is None else r * np.sqrt(design.weights)
    return ResidualSums(rtr=float(rw @ rw), Xtr=X.T @ rw, r=moments_of(r))


def add_block_sums(a: BlockSums, b: BlockSums) -> BlockSums:
    """The :class:`BlockSums` of a's rows then b's."""
    return BlockSums(G=a.G + b.G, Mbt=a.Mbt + b.Mbt, Mbb=a.Mbb + b.Mbb, Xty=a.Xty + b.Xty, n_obs=a.n_obs + b.n_obs, logw=a.logw + b.logw,
                     counts=tuple(x + y for x, y in zip(a.counts, b.counts)), y=combine_moments(a.y, b.y),
                     z=tuple(combine_moments(x, y) for x, y in zip(a.z, b.z)))


def add_residual_sums(a: ResidualSums, b: ResidualSums) -> ResidualSums:
    """The :class:`ResidualSums` of a's rows then b's."""
    return ResidualSums(rtr=a.rtr + b.rtr, Xtr=a.Xtr + b.Xtr, r=combine_moments(a.r, b.r))


def reference_point(sums: BlockSums, p: int) -> np.ndarray:
    """a_ref: the pooled (weighted) least-squares fit of y on F, from the normal equations
    F'WF a = F'Wy (the first p rows and columns of the sums)."""
    if not p:
        return np.zeros(0)
    return np.linalg.lstsq(sums.G[:p, :p], sums.Xty[:p], rcond=None)[0]


def assemble(sums: BlockSums, resid: ResidualSums, layout: FactorLayout, a_ref: np.ndarray) -> BlockStats:
    """The :class:`BlockStats` of the combined sums of both passes: M split into its blocks."""
    p = a_ref.shape[0]
    P = p + int(sum(layout.J[k] * layout.q[k] for k in range(len(layout.q)) if not layout.large[k]))
    Xty, Xtr, G = sums.Xty, resid.Xtr, sums.G
    Mbt = sums.Mbt.tocsr()
    Mbt.sort_indices()
    Mbb = sums.Mbb.tocoo()
    nb = Mbb.shape[0]
    factor_of = np.zeros(nb, dtype=np.int64)
    for k in np.flatnonzero(layout.large):
        factor_of[layout.off[k]:layout.off[k] + layout.J[k] * layout.q[k]] = k
    same = factor_of[Mbb.row] == factor_of[Mbb.col]
    A = np.zeros(int(sum(layout.J[k] * layout.q[k] ** 2 for k in np.flatnonzero(layout.large))))
    rows, cols, vals = Mbb.row[same], Mbb.col[same], Mbb.data[same]
    k_of = factor_of[rows]
    q = layout.q[k_of]
    local_r, local_c = rows - layout.off[k_of], cols - layout.off[k_of]
    level = local_r // q
    np.add.at(A, layout.A_off[k_of] + level * q * q + (local_r % q) * q + (local_c % q), vals)
    C = sp.csr_matrix((Mbb.data[~same], (Mbb.row[~same], Mbb.col[~same])), shape=(nb, nb))
    C.sort_indices()
    return BlockStats(
        G=np.ascontiguousarray(G), Xty_t=np.ascontiguousarray(Xty[:P]), Xty_b=np.ascontiguousarray(Xty[P:]), A=A,
        W_ptr=Mbt.indptr.astype(np.int64), W_col=Mbt.indices.astype(np.int32), W_val=Mbt.data.astype(float),
        C_ptr=C.indptr.astype(np.int64), C_col=C.indices.astype(np.int32), C_val=C.data.astype(float),
        u_ref_t=np.concatenate([a_ref, np.zeros(P - p)]), rtr=resid.rtr,
        Xtr_t=np.ascontiguousarray(Xtr[:P]), Xtr_b=np.ascontiguousarray(Xtr[P:]),
        n_obs=int(sums.n_obs), logw=sums.logw, p=p,
    )


def level_blocks(stats: BlockStats, layout: FactorLayout, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Factor k's per-level Z_kj'WZ_kj (J, q, q) and Z_kj'Wr (J, q) of the reference residuals,
    read from the statistics (A and X_b'Wr for a large factor, G and X_t'Wr for a small one)."""
    q, J, off = int(layout.q[k]), int(layout.J[k]), int(layout.off[k])
    idx = off + np.arange(J)[:, None] * q + np.arange(q)[None, :]
    if layout.large[k]:
        A = stats.A[layout.A_off[k]:layout.A_off[k] + J * q * q].reshape(J, q, q)
        return A, stats.Xtr_b[idx]
    return stats.G[idx[:, :, None], idx[:, None, :]], stats.Xtr_t[idx]


class CrossedStatistics(NamedTuple):
    """What the sampler and the default priors read: the blocks and the sums of both passes."""

    stats: BlockStats
    sums: BlockSums
    resid: ResidualSums
    layout: FactorLayout


def block_stats(design: CrossedDesign, layout: FactorLayout) -> BlockStats:
    """Both passes over ``design``'s rows: every block of the module docstring, and the
    reference point (:func:`crossed_statistics` without the sums the priors use)."""
    return crossed_statistics(design, layout).stats


def crossed_statistics(design: CrossedDesign, layout: FactorLayout) -> CrossedStatistics:
    """The statistics of ``design``'s rows in memory: its rows as the one batch of the passes a
    partitioned design (:mod:`multilevel.distributed`) runs partition by partition."""
    sums = block_sums(design, layout)
    a_ref = reference_point(sums, design.F.shape[1])
    resid = residual_sums(design, layout, a_ref)
    return CrossedStatistics(assemble(sums, resid, layout, a_ref), sums, resid, layout)


__all__ = ["SMALL_FACTOR_COLUMNS", "BlockStats", "BlockSums", "CrossedStatistics", "FactorLayout", "ResidualSums", "add_block_sums",
           "add_residual_sums", "assemble", "block_stats", "block_sums", "crossed_statistics", "expanded_design",
           "factor_layout", "level_blocks", "reference_point", "residual_sums"]
