"""Posterior summaries and convergence diagnostics of draws (chain, draw), in NumPy alone.

The estimators are those of Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021),
"Rank-normalization, folding, and localization: an improved R-hat", as ArviZ computes them
(``az.summary``; the tests check agreement to rounding):

* split chains: each chain's first and last ``draws // 2`` draws are two chains;
* rank normalisation: z = Phi^-1((r - 3/8) / (S - 3/4 + 1)) of the average ranks r of all
  S draws;
* ESS: S / tau with tau = -1 + 2 sum_t rho_t, the autocorrelations rho_t from the FFT
  autocovariance of each chain combined with the between-chain variance, truncated by
  Geyer's initial positive sequence and made monotone (Geyer's initial monotone sequence);
  tau is at least 1 / log10(S);
* ``ess_bulk``: ESS of the rank-normalised split chains; ``ess_tail``: the smaller ESS of
  the indicators I(x <= q_5%) and I(x <= q_95%); ``r_hat``: the larger split R-hat of the
  rank-normalised draws and of the rank-normalised folded draws |x - median|;
* ``mcse_mean`` = sd / sqrt(ESS of the split chains); ``mcse_sd`` by the delta method on
  the split-chain ESS of (x - mean)^2;
* the HDI: the narrowest interval that holds floor(prob S) + 1 of the sorted draws
  (:func:`hdi`, for many columns at once: also what predictions and plots use).

ArviZ does all this too, but importing it costs about two CPU seconds (it compiles numba
code and loads its plotting stack), more than a whole small fit; this module makes the
report of a fit without it. ``Fit.idata`` still gives ArviZ everything.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtri



def hdi_names(hdi_prob: float) -> tuple[str, str]:
    """Column names of the HDI bounds: ``hdi_3%`` and ``hdi_97%`` for 0.94."""
    alpha = 1.0 - hdi_prob
    return f"hdi_{100 * alpha / 2:g}%", f"hdi_{100 * (1 - alpha / 2):g}%"


def split_chains(x: np.ndarray) -> np.ndarray:
    """(chains, draws) -> (2 chains, draws // 2): each chain's first and last halves."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened ``x``, ties given their average rank (``rankdata(method="average")``)."""
    flat = x.ravel()
    order = np.argsort(flat, kind="mergesort")
    ordered = flat[order]
    new = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], flat.size)
    ranks = np.empty(flat.size)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(new) - 1]
    return ranks.reshape(x.shape)


def z_scale(x: np.ndarray) -> np.ndarray:
    """Rank normalisation: Phi^-1((r - 3/8) / (S + 1/4)) of the average ranks r."""
    return ndtri((average_ranks(x) - 0.375) / (x.size + 0.25))


def autocovariance(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row of ``x`` at every lag (FFT, divided by the row's length)."""
    n = x.shape[1]
    size = 1 << int(2 * n - 1).bit_length()
    centred = x - x.mean(axis=1, keepdims=True)
    f = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(f * np.conjugate(f), n=size, axis=1)[:, :n] / n


def ess(x: np.ndarray) -> float:
    """Effective sample size of draws ``x`` (chains, draws), chains as given (not split)."""
    x = np.asarray(x, dtype=float)
    if np.isnan(x).any():
        return np.nan
    if np.max(x) - np.min(x) < np.finfo(float).resolution:
        return float(x.size)
    n_chain, n_draw = x.shape
    acov = autocovariance(x)
    mean_var = acov[:, 0].mean() * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus += np.var(x.mean(axis=1), ddof=1)
    rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus  # rho[t] for every lag; rho[0] = 1 below
    rho_t = np.zeros(n_draw)
    rho_t[0], rho_t[1] = 1.0, rho[1]
    even, odd = 1.0, rho[1]
    t = 1
    while t < n_draw - 3 and even + odd > 0.0:  # Geyer's initial positive sequence, in pairs
        even, odd = rho[t + 1], rho[t + 2]
        if even + odd >= 0:
            rho_t[t + 1], rho_t[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        rho_t[max_t + 1] = even
    t = 1
    while t <= max_t - 2:  # Geyer's initial monotone sequence
        if rho_t[t + 1] + rho_t[t + 2] > rho_t[t - 1] + rho_t[t]:
            rho_t[t + 1] = rho_t[t + 2] = (rho_t[t - 1] + rho_t[t]) / 2.0
        t += 2
    total = n_chain * n_draw
    tau = -1.0 + 2.0 * rho_t[:max_t + 1].sum() + rho_t[max_t + 1:max_t + 2].sum()
    return float(total / max(tau, 1.0 / np.log10(total)))


def _enough(x: np.ndarray, min_chains: int = 1) -> bool:
    return x.shape[1] >= 4 and x.shape[0] >= min_chains and not np.isnan(x).any()


def ess_bulk(x: np.ndarray) -> float:
    """Bulk ESS: of the rank-normalised split chains."""
    return ess(z_scale(split_chains(x))) if _enough(x) else np.nan


def ess_tail(x: np.ndarray, probs: tuple[float, float] = (0.05, 0.95)) -> float:
    """Tail ESS: the smaller ESS of the split chains' indicators of the 5% and 95% quantiles."""
    if not _enough(x):
        return np.nan
    return min(ess(split_chains((x <= np.quantile(x, p)).astype(float))) for p in probs)


def _rhat_split(x: np.ndarray) -> float:
    n = x.shape[1]
    within = np.var(x, axis=1, ddof=1).mean()
    between = n * np.var(x.mean(axis=1), ddof=1)
    return float(np.sqrt((between / within + n - 1) / n))


def r_hat(x: np.ndarray) -> float:
    """Rank-normalised split R-hat: the larger of the bulk and the folded (tail) one."""
    if not _enough(x, min_chains=2):
        return np.nan
    split = split_chains(x)
    folded = np.abs(split - np.median(split))
    return max(_rhat_split(z_scale(split)), _rhat_split(z_scale(folded)))


def mcse_mean(x: np.ndarray) -> float:
    """Monte Carlo standard error of the mean: sd / sqrt(ESS of the split chains)."""
    return float(np.std(x, ddof=1) / np.sqrt(ess(split_chains(x)))) if _enough(x) else np.nan


def mcse_sd(x: np.ndarray) -> float:
    """Monte Carlo standard error of the sd, by the delta method on (x - mean)^2."""
    if not _enough(x):
        return np.nan
    sq = (x - x.mean()) ** 2
    e = sq.mean()
    var_var = ((sq ** 2).mean() - e ** 2) / ess(split_chains(sq))
    return float(np.sqrt(var_var / e / 4))


def hdi(flat: np.ndarray, hdi_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Highest density interval of each column of ``flat`` (draws x columns): the narrowest
    of the intervals between sorted draws k and k + floor(hdi_prob n), as ArviZ computes it
    for unimodal distributions."""
    if not 0 < hdi_prob < 1:
        from .errors import ModelError

        raise ModelError(f"hdi_prob must be between 0 and 1, got {hdi_prob!r}")
    s = np.sort(flat, axis=0)
    n = s.shape[0]
    k = int(np.floor(hdi_prob * n))
    if k >= n or k == 0:
        return s[0], s[-1]
    j = np.argmin(s[k:] - s[:n - k], axis=0)
    cols = np.arange(s.shape[1])
    return s[j, cols], s[j + k, cols]


def summarize_draws(x: np.ndarray, hdi_prob: float) -> dict[str, float]:
    """Every column of :func:`summary` for one parameter's draws (chains, draws)."""
    x = np.asarray(x, dtype=float)
    low, high = (float(v[0]) for v in hdi(x.reshape(-1, 1), hdi_prob))
    lo_name, hi_name = hdi_names(hdi_prob)
    with np.errstate(invalid="ignore", divide="ignore"):  # constant draws: NaN R-hat and MCSE of the sd, as ArviZ
        return _columns(x, low, high, lo_name, hi_name)


def _columns(x: np.ndarray, low: float, high: float, lo_name: str, hi_name: str) -> dict[str, float]:
    return {"mean": float(x.mean()), "sd": float(np.std(x, ddof=1)), lo_name: low, hi_name: high,
            "mcse_mean": mcse_mean(x), "mcse_sd": mcse_sd(x), "ess_bulk": ess_bulk(x), "ess_tail": ess_tail(x),
            "r_hat": r_hat(x)}


def summary(draws: dict[str, np.ndarray], hdi_prob: float = 0.94) -> pd.DataFrame:
    """The table of ``az.summary`` for named draws, each (chains, draws): one row per name;
    columns mean, sd, the HDI bounds, mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat."""
    hdi(np.zeros((2, 1)), hdi_prob)  # checks hdi_prob
    rows = {name: summarize_draws(x, hdi_prob) for name, x in draws.items()}
    columns = ["mean", "sd", *hdi_names(hdi_prob), "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


__all__ = ["summary", "ess", "ess_bulk", "ess_tail", "r_hat", "mcse_mean", "mcse_sd", "hdi", "hdi_names"]
