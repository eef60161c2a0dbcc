"""Crossed Gaussian random-intercept samplers on InstEval: a measurement prototype.

Model: y = X a + sum_k b_k[idx_k] + e,  e ~ N(0, s2),  b_kj ~ N(0, tau_k)
Priors: a ~ N(0, 1e4 I); tau_k ~ IG(A_TAU, B_TAU); s2 ~ IG(A_S2, B_S2).

Sweep (all variants): s2 | rest (conjugate IG, SSR), then for each factor k:
  a | b_{-k}, tau, s2 with b_k integrated out (GLS on per-level sums),
  [marg] tau_k | a, b_{-k}, s2 with b_k integrated out (slice on log tau, density
         evaluated on levels grouped by n_j: O(#distinct n_j) per evaluation),
  b_k | a, b_{-k}, tau_k, s2 (independent normals per level),
  [conj] tau_k | b_k (conjugate IG).
The per-level sums sr_j = sum_{i in j} r_i and sxr_j = X_j' r (r = y - sum_{l!=k} b_l)
come either from rows (one fused pass over rows per factor) or from tables
(per-level X'y and the sparse cross tables sum_{i in (j,m)} x_i, never reading rows).
"""
import os
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
from numba import njit

A_TAU, B_TAU = 1.0, 0.01
A_S2, B_S2 = 1.0, 0.01
PRIOR_PREC_A = 1e-4

# ----------------------------------------------------------------- data


def load():
    import multilevel
    import pandas as pd
    df = multilevel.load_dataset("insteval")
    y = df["y"].to_numpy(np.float64)
    X = np.column_stack([np.ones(len(df)), df["service"].to_numpy(np.float64)])
    facs = [df["s"].astype(str), df["d"].astype(str),
            df["dept"].astype(str) + ":" + df["service"].astype(str)]
    idx, L = [], []
    for f in facs:
        codes, uniq = pd.factorize(f, sort=True)
        idx.append(codes.astype(np.int32))
        L.append(len(uniq))
    return y, X, np.array(idx), np.array(L, np.int64)


def build(y, X, idx, L):
    """Per-level statistics, n-groups for the marginal tau step, and cross tables."""
    K, N = idx.shape
    p = X.shape[1]
    off = np.zeros(K + 1, np.int64)
    off[1:] = np.cumsum(L)
    Lt = off[-1]
    gidx = idx + off[:K, None]                     # global level index per row
    n = np.zeros(Lt)
    U = np.zeros((Lt, p))                          # X_j' 1
    Xy = np.zeros((Lt, p))                         # X_j' y
    Zy = np.zeros(Lt)
    for k in range(K):
        np.add.at(n, gidx[k], 1.0)
        np.add.at(Zy, gidx[k], y)
        for c in range(p):
            np.add.at(U[:, c], gidx[k], X[:, c])
            np.add.at(Xy[:, c], gidx[k], X[:, c] * y)
    # groups of levels by n_j (per factor): grp[j] in 0..G_k-1, gn[k, g] = n value
    grp = np.zeros(Lt, np.int64)
    goff = np.zeros(K + 1, np.int64)
    gvals = []
    for k in range(K):
        vals, inv = np.unique(n[off[k]:off[k + 1]], return_inverse=True)
        grp[off[k]:off[k + 1]] = inv
        gvals.append(vals)
        goff[k + 1] = goff[k] + len(vals)
    gn = np.concatenate(gvals)
    # cross tables: one CSR per factor k over its levels; entries = (global level m
    # of another factor, sum of x_i over rows in (j, m), flag m belongs to l < k)
    ptr = np.zeros(Lt + 1, np.int64)
    cols_l, vals_l, low_l = [], [], []
    for k in range(K):
        ents = []
        for l in range(K):
            if l == k:
                continue
            key = gidx[k].astype(np.int64) * Lt + gidx[l]
            uk, inv = np.unique(key, return_inverse=True)
            v = np.zeros((len(uk), p))
            for c in range(p):
                np.add.at(v[:, c], inv, X[:, c])
            ents.append((uk // Lt, uk % Lt, v, np.full(len(uk), l < k)))
        j = np.concatenate([e[0] for e in ents]); m = np.concatenate([e[1] for e in ents])
        v = np.concatenate([e[2] for e in ents]); lo = np.concatenate([e[3] for e in ents])
        o = np.lexsort((m, j))
        j, m, v, lo = j[o], m[o], v[o], lo[o]
        cnt = np.bincount(j - off[k], minlength=L[k])
        ptr[off[k] + 1:off[k + 1] + 1] = cnt
        cols_l.append(m); vals_l.append(v); low_l.append(lo)
    ptr = np.cumsum(ptr)
    cols = np.concatenate(cols_l).astype(np.int64)
    vals = np.ascontiguousarray(np.concatenate(vals_l))
    low = np.concatenate(low_l).astype(np.bool_)
    XtX = X.T @ X
    return dict(y=y, X=np.ascontiguousarray(X), gidx=np.ascontiguousarray(gidx.astype(np.int32)),
                off=off, n=n, U=U, Xy=Xy, Zy=Zy, grp=grp, goff=goff, gn=gn,
                ptr=ptr, cols=cols, vals=vals, low=low, XtX=XtX, yy=float(y @ y), Xty=X.T @ y)


# ----------------------------------------------------------------- kernels

@njit(cache=True)
def draw_ig(rng, a, b):
    return b / rng.gamma(a, 1.0)


@njit(cache=True)
def chol_draw(rng, Q, h):
    """Draw from N(Q^-1 h, Q^-1)."""
    p = Q.shape[0]
    Lc = np.linalg.cholesky(Q)
    # solve L w = h ; L' m = w ; x = m + L'^-1 z
    w = np.zeros(p)
    for i in range(p):
        s = h[i]
        for t in range(i):
            s -= Lc[i, t] * w[t]
        w[i] = s / Lc[i, i]
    rhs = w + rng.standard_normal(p)
    x = np.zeros(p)
    for i in range(p - 1, -1, -1):
        s = rhs[i]
        for t in range(i + 1, p):
            s -= Lc[t, i] * x[t]
        x[i] = s / Lc[i, i]
    return x


@njit(cache=True)
def log_marg_tau(u, cnt, S, gn, s2, G):
    tau = np.exp(u)
    lp = -(A_TAU + 1.0) * u - B_TAU / tau + u       # IG prior on tau + Jacobian of log
    for g in range(G):
        v = tau + s2 / gn[g]
        lp -= 0.5 * (cnt[g] * np.log(v) + S[g] / v)
    return lp


@njit(cache=True)
def slice_log_tau(rng, u0, cnt, S, gn, s2, G, w):
    f0 = log_marg_tau(u0, cnt, S, gn, s2, G)
    logy = f0 - rng.exponential(1.0)
    lo = u0 - w * rng.random()
    hi = lo + w
    nev = 1
    while log_marg_tau(lo, cnt, S, gn, s2, G) > logy:
        lo -= w; nev += 1
    while log_marg_tau(hi, cnt, S, gn, s2, G) > logy:
        hi += w; nev += 1
    while True:
        u = lo + (hi - lo) * rng.random()
        nev += 1
        if log_marg_tau(u, cnt, S, gn, s2, G) > logy:
            return u, nev
        if u < u0:
            lo = u
        else:
            hi = u


@njit(cache=True)
def table_ssr(yy, Xty, XtX, U, Zy, n, crs, a, b):
    """SSR from statistics: yy - 2 a'X'y + a'X'Xa + sum_j b_j (-2 Zy_j + 2 U_j'a + n_j b_j + 2 crs_j),
    crs_j the cross-factor sums sum_{l<k} N_kl b_l for level j."""
    p = a.shape[0]
    ssr = yy
    for r in range(p):
        ssr -= 2.0 * a[r] * Xty[r]
        for q in range(p):
            ssr += a[r] * XtX[r, q] * a[q]
    for j in range(b.shape[0]):
        ua = 0.0
        for r in range(p):
            ua += U[j, r] * a[r]
        ssr += b[j] * (-2.0 * Zy[j] + 2.0 * ua + n[j] * b[j] + 2.0 * crs[j])
    return ssr


@njit(cache=True)
def factor_step(rng, k, sr, sxr, a, b, tau, s2, off, n, U, XtX, grp, goff, gn, marg, conj, px):
    """Collapsed a-draw, optional marginal tau draw, b_k draw, optional conjugate tau."""
    p = a.shape[0]
    lo_, hi_ = off[k], off[k + 1]
    t = tau[k]
    Q = XtX.copy()
    h = np.zeros(p)
    for j in range(lo_, hi_):
        c = t / (s2 + n[j] * t)
        for r in range(p):
            h[r] += sxr[j, r] - c * U[j, r] * sr[j]
            for q in range(p):
                Q[r, q] -= c * U[j, r] * U[j, q]
    for r in range(p):
        Q[r, r] += PRIOR_PREC_A * s2
    a[:] = chol_draw(rng, Q / s2, h / s2)
    nev = 0
    if marg:
        G = goff[k + 1] - goff[k]
        cnt = np.zeros(G)
        S = np.zeros(G)
        for j in range(lo_, hi_):
            res = sr[j]
            for r in range(p):
                res -= U[j, r] * a[r]
            rb = res / n[j]
            g = grp[j]
            cnt[g] += 1.0
            S[g] += rb * rb
        u, nev = slice_log_tau(rng, np.log(t), cnt, S, gn[goff[k]:goff[k + 1]], s2, G, 1.0)
        t = np.exp(u)
        tau[k] = t
    ss = 0.0
    for j in range(lo_, hi_):
        res = sr[j]
        for r in range(p):
            res -= U[j, r] * a[r]
        prec = n[j] / s2 + 1.0 / t
        bj = res / s2 / prec + rng.standard_normal() / np.sqrt(prec)
        b[j] = bj
        ss += bj * bj
    if conj:
        tau[k] = draw_ig(rng, A_TAU + 0.5 * (hi_ - lo_), B_TAU + 0.5 * ss)
    return nev


@njit(cache=True)
def run_rows(y, X, gidx, off, n, U, XtX, grp, goff, gn, n_sweeps, rng, marg, conj, px):
    K, N = gidx.shape
    p = X.shape[1]
    Lt = off[K]
    a = np.zeros(p)
    a[0] = np.mean(y)
    b = np.zeros(Lt)
    bold = np.zeros(Lt)
    tau = np.full(K, 0.1)
    s2 = np.var(y)
    eta = np.zeros(N)                 # sum_k b_k[idx_k]
    sr = np.zeros(Lt)
    sxr = np.zeros((Lt, p))
    out = np.zeros((n_sweeps, p + 1 + K))
    nev_tot = 0
    for it in range(n_sweeps):
        for k in range(K):
            # one fused pass: apply the previous factor's change to eta, (k == 0: SSR with
            # the current a), and accumulate the per-level sums for factor k
            kp = (k - 1) % K
            for j in range(off[k], off[k + 1]):
                sr[j] = 0.0
                for r in range(p):
                    sxr[j, r] = 0.0
            ssr = 0.0
            gp = gidx[kp]
            gk = gidx[k]
            for i in range(N):
                jp = gp[i]
                e = eta[i] + (b[jp] - bold[jp])
                eta[i] = e
                jk = gk[i]
                rr = y[i] - e + b[jk]
                if k == 0:
                    fit = e
                    for r in range(p):
                        fit += X[i, r] * a[r]
                    d_ = y[i] - fit
                    ssr += d_ * d_
                sr[jk] += rr
                for r in range(p):
                    sxr[jk, r] += X[i, r] * rr
            for j in range(off[kp], off[kp + 1]):
                bold[j] = b[j]
            if k == 0:
                if it > 0:
                    s2 = draw_ig(rng, A_S2 + 0.5 * N, B_S2 + 0.5 * ssr)
            nev_tot += factor_step(rng, k, sr, sxr, a, b, tau, s2, off, n, U, XtX, grp, goff, gn,
                                   marg, conj, px)
        out[it, :p] = a
        out[it, p] = s2
        out[it, p + 1:] = tau
    return out, nev_tot


@njit(cache=True)
def run_tables(Zy, Xy, ptr, cols, vals, low, yy, Xty, K, off, n, U, XtX, grp, goff, gn,
               N, n_sweeps, rng, marg, conj, px):
    p = Xy.shape[1]
    Lt = off[K]
    a = np.zeros(p)
    a[0] = Xty[0] / N
    b = np.zeros(Lt)
    tau = np.full(K, 0.1)
    s2 = (yy - Xty[0] ** 2 / N) / N
    sr = np.zeros(Lt)
    sxr = np.zeros((Lt, p))
    crs = np.zeros(Lt)                # sum over lower factors of N_kl b_l (channel 0)
    out = np.zeros((n_sweeps, p + 1 + K))
    nev_tot = 0
    for it in range(n_sweeps):
        if it > 0:
            # SSR from statistics: yy - 2 a'X'y - 2 sum b'Zy + a'X'Xa + 2 sum a'U_k b_k
            #   + sum n b^2 + 2 sum_{l<k} b_k' N_kl b_l
            ssr = table_ssr(yy, Xty, XtX, U, Zy, n, crs, a, b)
            s2 = draw_ig(rng, A_S2 + 0.5 * N, B_S2 + 0.5 * ssr)
        for k in range(K):
            for j in range(off[k], off[k + 1]):
                s0 = Zy[j]
                c0 = 0.0
                sx = Xy[j].copy()
                for e in range(ptr[j], ptr[j + 1]):
                    bm = b[cols[e]]
                    s0 -= vals[e, 0] * bm
                    for r in range(1, p):
                        sx[r] -= vals[e, r] * bm
                    if low[e]:
                        c0 += vals[e, 0] * bm
                sr[j] = s0
                sxr[j, 0] = s0
                for r in range(1, p):
                    sxr[j, r] = sx[r]
                crs[j] = c0
            nev_tot += factor_step(rng, k, sr, sxr, a, b, tau, s2, off, n, U, XtX, grp, goff, gn,
                                   marg, conj, px)
        out[it, :p] = a
        out[it, p] = s2
        out[it, p + 1:] = tau
    return out, nev_tot


# ----------------------------------------------------------------- block sampler
# Factors 0..nbig-1 are "big" (collapsed one at a time); factors nbig..K-1 are "small" and
# folded into the fixed block theta = (a, b_small) (prior precision 1/tau on their columns).
# Per big factor k: theta | b_{other big} with b_k integrated (dense P x P GLS, P = p + small
# levels, built from sparse per-level f_j = F_j'1), [marg] tau_k | theta, b_other (slice),
# b_k | theta, b_other. Small factors: tau | b conjugate IG [or marginal, see msmall].


def build_block(D, nbig):
    off, p = D["off"], D["X"].shape[1]
    K = len(off) - 1
    Lt = off[-1]
    s0 = off[nbig]
    P_ = p + (Lt - s0)
    # sparse f_j = F_j' 1 for big levels: intercept/service from U, small cols from table counts
    fptr = np.zeros(s0 + 1, np.int64); fidx = []; fval = []
    for j in range(s0):
        ii = list(range(p)); vv = list(D["U"][j])
        for e in range(D["ptr"][j], D["ptr"][j + 1]):
            m = D["cols"][e]
            if m >= s0:
                ii.append(p + m - s0); vv.append(D["vals"][e, 0])
        fidx += ii; fval += vv; fptr[j + 1] = len(fidx)
    # F'F
    FtF = np.zeros((P_, P_))
    FtF[:p, :p] = D["XtX"]
    for g in range(s0, Lt):
        FtF[:p, p + g - s0] = D["U"][g]; FtF[p + g - s0, :p] = D["U"][g]
        FtF[p + g - s0, p + g - s0] = D["n"][g]
        for e in range(D["ptr"][g], D["ptr"][g + 1]):
            m = D["cols"][e]
            if m >= s0:
                FtF[p + g - s0, p + m - s0] = D["vals"][e, 0]
    Fty = np.concatenate([D["Xty"], D["Zy"][s0:]])
    facof = np.zeros(Lt, np.int64)
    for k in range(K):
        facof[off[k]:off[k + 1]] = k
    # big rows: entries with other big factors only; small rows: all entries
    bptr = np.zeros(Lt + 1, np.int64); bcol = []; bval = []; blow = []
    for j in range(Lt):
        for e in range(D["ptr"][j], D["ptr"][j + 1]):
            m = D["cols"][e]
            if j >= s0 or m < s0:
                bcol.append(m); bval.append(D["vals"][e, 0]); blow.append(D["low"][e])
        bptr[j + 1] = len(bcol)
    # per-n-group sums M_g = sum_{j: n_j = n_g} f_j f_j' (c_j depends on n_j only); used for a
    # factor when G_k P^2 < sum_j nnz(f_j)^2
    goff = D["goff"]; Mg = np.zeros((goff[nbig], P_, P_)); useM = np.zeros(nbig, np.bool_)
    for k in range(nbig):
        cost_sparse = sum((fptr[j + 1] - fptr[j]) ** 2 for j in range(off[k], off[k + 1]))
        useM[k] = (goff[k + 1] - goff[k]) * P_ * P_ < cost_sparse
        for j in range(off[k], off[k + 1]):
            ii = np.array(fidx[fptr[j]:fptr[j + 1]]); vv = np.array(fval[fptr[j]:fptr[j + 1]])
            Mg[goff[k] + D["grp"][j]][np.ix_(ii, ii)] += np.outer(vv, vv)
    return dict(Mg=Mg, useM=useM, fptr=fptr, fidx=np.array(fidx, np.int64), fval=np.array(fval), FtF=FtF, Fty=Fty,
                facof=facof, bptr=bptr, bcol=np.array(bcol, np.int32), bval=np.array(bval),
                blow=np.array(blow, np.bool_))


@njit(cache=True)
def chol_draw_gen(rng, Q, h):
    P_ = Q.shape[0]
    Lc = np.linalg.cholesky(Q)
    w = np.linalg.solve(Lc, h) if False else _fwd(Lc, h)
    return _bwd(Lc, w + rng.standard_normal(P_))


@njit(cache=True)
def _fwd(Lc, h):
    n_ = h.shape[0]; w = np.zeros(n_)
    for i in range(n_):
        s = h[i]
        for t in range(i):
            s -= Lc[i, t] * w[t]
        w[i] = s / Lc[i, i]
    return w


@njit(cache=True)
def _bwd(Lc, w):
    n_ = w.shape[0]; x = np.zeros(n_)
    for i in range(n_ - 1, -1, -1):
        s = w[i]
        for t in range(i + 1, n_):
            s -= Lc[t, i] * x[t]
        x[i] = s / Lc[i, i]
    return x


@njit(cache=True)
def run_block(Zy, ptr, cols, vals, low, lowbig, yy, Xty, XtX, K, nbig, off, n, U, grp, goff, gn,
              fptr, fidx, fval, Mg, useM, FtF, Fty, facof, N, n_sweeps, rng, marg, msmall):
    p = XtX.shape[0]
    Lt = off[K]
    s0 = off[nbig]
    P_ = FtF.shape[0]
    a = np.zeros(p)
    a[0] = Xty[0] / N
    b = np.zeros(Lt)
    tau = np.full(K, 0.1)
    s2 = (yy - Xty[0] ** 2 / N) / N
    sr = np.zeros(Lt)
    crs = np.zeros(Lt)
    theta = np.zeros(P_)
    out = np.zeros((n_sweeps, p + 1 + K))
    nev_tot = 0
    Q = np.zeros((P_, P_))
    h = np.zeros(P_)
    Fr = np.zeros(P_)
    for it in range(n_sweeps):
        if it > 0:
            # cross terms of small rows (all entries with lower factors), then SSR
            for g in range(s0, Lt):
                c0 = 0.0
                for e in range(ptr[g], ptr[g + 1]):
                    if low[e]:
                        c0 += vals[e] * b[cols[e]]
                crs[g] = c0
            ssr = table_ssr(yy, Xty, XtX, U, Zy, n, crs, a, b)
            s2 = draw_ig(rng, A_S2 + 0.5 * N, B_S2 + 0.5 * ssr)
        for k in range(nbig):
            lo_, hi_ = off[k], off[k + 1]
            # per-level sums of r = y - sum_{other big} b for levels of k
            for j in range(lo_, hi_):
                s_ = 0.0
                for e in range(ptr[j], ptr[j + 1]):
                    s_ += vals[e] * b[cols[e]]
                sr[j] = Zy[j] - s_
                crs[j] = s_ if lowbig[k] else 0.0
            # global F'r
            for r in range(P_):
                Fr[r] = Fty[r]
            for m in range(s0):
                if facof[m] != k:
                    bm = b[m]
                    for r in range(p):
                        Fr[r] -= U[m, r] * bm
            for g in range(s0, Lt):
                acc = 0.0
                for e in range(ptr[g], ptr[g + 1]):
                    m = cols[e]
                    if m < s0 and facof[m] != k:
                        acc += vals[e] * b[m]
                Fr[p + g - s0] -= acc
            # collapsed GLS for theta
            t = tau[k]
            for r in range(P_):
                h[r] = Fr[r]
                for q in range(P_):
                    Q[r, q] = FtF[r, q]
            for r in range(p):
                Q[r, r] += PRIOR_PREC_A * s2
            for g in range(s0, Lt):
                Q[p + g - s0, p + g - s0] += s2 / tau[facof[g]]
            for j in range(lo_, hi_):
                c = t / (s2 + n[j] * t)
                sj = sr[j]
                for e in range(fptr[j], fptr[j + 1]):
                    r = fidx[e]
                    cv = c * fval[e]
                    h[r] -= cv * sj
                    if not useM[k]:
                        for e2 in range(fptr[j], fptr[j + 1]):
                            Q[r, fidx[e2]] -= cv * fval[e2]
            if useM[k]:
                for g in range(goff[k + 1] - goff[k]):
                    c = t / (s2 + gn[goff[k] + g] * t)
                    Mk = Mg[goff[k] + g]
                    for r in range(P_):
                        for q in range(P_):
                            Q[r, q] -= c * Mk[r, q]
            for r in range(P_):
                h[r] /= s2
                for q in range(P_):
                    Q[r, q] /= s2
            theta[:] = chol_draw_gen(rng, Q, h)
            a[:] = theta[:p]
            for g in range(s0, Lt):
                b[g] = theta[p + g - s0]
            # residual per level after theta
            for j in range(lo_, hi_):
                ft = 0.0
                for e in range(fptr[j], fptr[j + 1]):
                    ft += fval[e] * theta[fidx[e]]
                sr[j] -= ft
            if marg:
                G = goff[k + 1] - goff[k]
                cnt = np.zeros(G)
                S = np.zeros(G)
                for j in range(lo_, hi_):
                    rb = sr[j] / n[j]
                    g = grp[j]
                    cnt[g] += 1.0
                    S[g] += rb * rb
                u, nev = slice_log_tau(rng, np.log(t), cnt, S, gn[goff[k]:goff[k + 1]], s2, G, 1.0)
                nev_tot += nev
                t = np.exp(u)
                tau[k] = t
            else:
                ss = 0.0
            for j in range(lo_, hi_):
                prec = n[j] / s2 + 1.0 / t
                bj = sr[j] / s2 / prec + rng.standard_normal() / np.sqrt(prec)
                b[j] = bj
            if not marg:
                ss = 0.0
                for j in range(lo_, hi_):
                    ss += b[j] * b[j]
                tau[k] = draw_ig(rng, A_TAU + 0.5 * (hi_ - lo_), B_TAU + 0.5 * ss)
            # small factors' variances given their effects (conjugate), after each theta draw
            for l in range(nbig, K):
                ss = 0.0
                for g in range(off[l], off[l + 1]):
                    ss += b[g] * b[g]
                tau[l] = draw_ig(rng, A_TAU + 0.5 * (off[l + 1] - off[l]), B_TAU + 0.5 * ss)
        out[it, :p] = a
        out[it, p] = s2
        out[it, p + 1:] = tau
    return out, nev_tot
