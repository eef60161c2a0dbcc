"""Rank statistics and uniformity tests of simulation-based calibration (Talts et al. 2018).

For each replication: draw parameters from the prior, data from the model, L roughly
independent posterior draws; the rank of the true value of a scalar parameter among the
draws, #{draws < truth}, is uniform on 0..L when the sampler targets the right
posterior. Ranks are pooled into equal-width bins and tested with a chi-square test per
parameter, Bonferroni-corrected over the parameters.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import stats


def scalar_parameters(
    theta: np.ndarray, Sigma: np.ndarray, sigma2: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
    free: np.ndarray, groups: tuple[int, ...] = (0,),
) -> dict[str, np.ndarray]:
    """Named scalar parameters, over any leading batch axes (e.g. draws).

    theta (..., p) [free components only], Sigma (..., p, p) [lower triangle],
    sigma2 (...), alpha (..., r), beta (..., m, p) [the groups listed].
    """
    out: dict[str, np.ndarray] = {}
    p = Sigma.shape[-1]
    for k in np.flatnonzero(free):
        out[f"theta[{k}]"] = theta[..., k]
    for a, b in zip(*np.tril_indices(p)):
        out[f"Sigma[{a},{b}]"] = Sigma[..., a, b]
    out["sigma2"] = np.asarray(sigma2)
    for k in range(alpha.shape[-1]):
        out[f"alpha[{k}]"] = alpha[..., k]
    for j in groups:
        for k in range(p):
            out[f"beta[{j},{k}]"] = beta[..., j, k]
    return out


def thin(draws: np.ndarray, L: int) -> np.ndarray:
    """L draws evenly spaced along the first axis, ending at the last draw."""
    n = draws.shape[0]
    if n < L:
        raise ValueError(f"need at least {L} draws, got {n}")
    step = n // L
    return draws[n - 1 - step * np.arange(L)[::-1]]


def ranks(truth: dict[str, float], draws: dict[str, np.ndarray]) -> dict[str, int]:
    """Rank of each true scalar among its (L,) posterior draws: #{draws < truth}, in 0..L."""
    return {k: int(np.sum(np.asarray(draws[k]) < truth[k])) for k in truth}


def chi2_uniform_pvalue(r: np.ndarray, L: int, bins: int) -> float:
    """Chi-square test that ranks ``r`` in 0..L are uniform, with (L + 1) / bins rank values per bin."""
    if (L + 1) % bins:
        raise ValueError(f"bins ({bins}) must divide L + 1 ({L + 1})")
    counts = np.bincount(np.asarray(r) * bins // (L + 1), minlength=bins)
    return float(stats.chisquare(counts).pvalue)


@dataclass
class SBCResult:
    """Ranks (replications x parameters) and the per-parameter uniformity tests."""

    names: list[str]
    ranks: np.ndarray  # (n_reps, K)
    L: int
    bins: int
    alpha: float = 0.01
    pvalues: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.pvalues = np.array([chi2_uniform_pvalue(self.ranks[:, k], self.L, self.bins) for k in range(len(self.names))])

    @property
    def threshold(self) -> float:
        """Bonferroni: family-wise level ``alpha`` over the parameters tested."""
        return self.alpha / len(self.names)

    @property
    def rejected(self) -> list[str]:
        return [n for n, p in zip(self.names, self.pvalues) if p < self.threshold]

    def report(self) -> str:
        lines = [f"SBC: {self.ranks.shape[0]} replications, L = {self.L}, {self.bins} bins, "
                 f"Bonferroni threshold {self.threshold:.2g}"]
        for k, name in enumerate(self.names):
            counts = np.bincount(self.ranks[:, k] * self.bins // (self.L + 1), minlength=self.bins)
            lines.append(f"  {name:>12}  p = {self.pvalues[k]:.3g}  counts {counts.tolist()}")
        return "\n".join(lines)


def collect(rank_dicts: list[dict[str, int]], L: int, bins: int, alpha: float = 0.01) -> SBCResult:
    """Assemble the per-replication rank dicts into an :class:`SBCResult`.

    With the environment variable ``MULTILEVEL_SBC_OUT`` set (``make validate`` sets it),
    the result is also written there as JSON, named after the running test, for
    ``validation/render.py`` to turn into docs/validation.md.
    """
    names = list(rank_dicts[0])
    result = SBCResult(names, np.array([[d[n] for n in names] for d in rank_dicts]), L, bins, alpha)
    save(result)
    return result


def save(result: SBCResult) -> None:
    out = os.environ.get("MULTILEVEL_SBC_OUT")
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]  # "<node id> (call)"; ids may hold spaces
    if not out or not test:
        return
    name = test.split("::")[-1]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"test": test, "names": result.names, "ranks": result.ranks.tolist(), "L": result.L,
              "bins": result.bins, "alpha": result.alpha, "pvalues": result.pvalues.tolist(),
              "threshold": result.threshold, "rejected": result.rejected,
              "run_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}
    (folder / f"{re.sub(r'[^A-Za-z0-9_.+-]+', '_', name)}.json").write_text(json.dumps(record))
