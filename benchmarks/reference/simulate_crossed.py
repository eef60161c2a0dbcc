"""Simulate the small data sets behind the lme4 references for several grouping factors.

Usage (from the repository root):

    python benchmarks/reference/simulate_crossed.py [OUT_DIR]

OUT_DIR defaults to ``tests/data``. Six CSV files are written there, each from its own
fixed seed (``numpy.random.default_rng(SEED)``), so each file is reproduced byte for byte
by re-running the script, independently of the others. Numbers are written with 6
significant digits (``%.6g``); the response is computed from the covariates *as written*
(already rounded), so the files follow the stated models exactly up to the rounding of
the response. Lines end with ``\\n``; the first line holds the column names. Grouping
columns are text labels, zero-padded where a factor has more than 9 levels, so that sorted
order (R's factor order) is natural order.

The models and true values (the lme4 fits are in ``lme4_crossed_reference.R``):

========================  ==========================================================
file                      model (truth)
========================  ==========================================================
crossed.csv               ``y ~ x + z + (x | subj) + (1 | item)``: 60 subjects
                          ``s01``..``s60`` crossed with 40 items ``i01``..``i40``,
                          each subject rating a random 30-40 of the items (~2100
                          rows); x ~ N(0, 1), z ~ U(0, 1) per row;
                          theta = (1.0, 0.5, 0.3), Sigma_subj = [[0.6, 0.1], [0.1,
                          0.2]], Var(item) = 0.3, sigma2 = 1.0
nested.csv                ``y ~ x + (1 | school/class)``: 25 schools ``sch01``..
                          ``sch25``, 3-6 classes each labelled ``c1``.. (labels reused
                          across schools), 8-20 pupils per class; theta = (2, 0.4),
                          Var(school) = 0.5, Var(school:class) = 0.25, sigma2 = 1
uncorrelated.csv          ``y ~ x + (x || g)``: 50 groups ``g01``..``g50``, 10-30 rows
                          each; theta = (1, 0.8), Var(b0) = 0.5, Var(b1) = 0.3
                          (independent), sigma2 = 0.8
crossed_poisson.csv       ``y ~ x + (1 | subj) + (1 | item)``, Poisson, log link: 50
                          subjects ``s01``.. crossed with 30 items ``i01``.., each
                          subject a random 20-28 items (~1200 rows); theta = (0.5,
                          0.3), Var(subj) = 0.3, Var(item) = 0.2
nested_bernoulli.csv      ``y ~ x + (1 | district/village)``, Bernoulli, logit link:
                          30 districts ``d01``.., 3-5 villages each labelled ``v1``..
                          (reused), 10-25 rows per village; theta = (-0.3, 0.6),
                          Var(district) = 0.5, Var(district:village) = 0.3
negbin.csv                ``y ~ x + (1 | g)``, negative binomial NB2 (log link): 40
                          groups ``g01``..``g40``, 10-30 rows each; mean mu =
                          exp(1 + 0.4 x + b_g), Var(b) = 0.3, Var(y) = mu + mu^2/phi
                          with phi = 3 (drawn as Poisson(Gamma(shape phi, scale
                          mu/phi)))
========================  ==========================================================

In every file x ~ N(0, 1) independently per row. Within a data set the draws are made in
a fixed order: the design (group sizes, which items a subject rates), then the random
effects, then the covariates, then the noise / response. Byte-for-byte reproduction relies
on numpy's ``Generator`` streams (PCG64 and the distributions used here), which numpy keeps
stable across versions in practice; the committed files were made with the numpy of the
project's virtualenv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SIG = 6  # significant digits written


def rounded(a) -> np.ndarray:
    """``a`` rounded to SIG significant digits (as ``%.6g`` writes it)."""
    return np.array([float(f"{v:.{SIG}g}") for v in np.asarray(a, dtype=float)])


def write_csv(path: Path, columns: dict[str, object]) -> None:
    """Write ``columns`` (name -> sequence) to ``path``: text as is, integer arrays as
    integers, floats with ``%.6g``; ``\\n`` line ends."""
    names = list(columns)
    cells = []
    for name in names:
        col = columns[name]
        if isinstance(col, np.ndarray) and col.dtype.kind == "f":
            cells.append([f"{v:.{SIG}g}" for v in col])
        elif isinstance(col, np.ndarray) and col.dtype.kind in "iu":
            cells.append([str(int(v)) for v in col])
        else:
            cells.append([str(v) for v in col])
    n = len(cells[0])
    assert all(len(c) == n for c in cells)
    lines = [",".join(names)] + [",".join(c[i] for c in cells) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="ascii", newline="")


def labels(prefix: str, n: int, width: int) -> list[str]:
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]


def crossed_design(rng, n_subj: int, n_item: int, k_low: int, k_high: int):
    """Subject and item indices: each subject rates a random ``k_low..k_high`` of the items
    (rows ordered by subject, then item)."""
    subj, item = [], []
    for s in range(n_subj):
        k = int(rng.integers(k_low, k_high + 1))
        chosen = np.sort(rng.permutation(n_item)[:k])
        subj.extend([s] * k)
        item.extend(chosen.tolist())
    return np.array(subj), np.array(item)


def nested_design(rng, n_outer: int, inner_low: int, inner_high: int, rows_low: int, rows_high: int):
    """Outer index, inner index within the outer (0-based, labels reused) and the index of
    the (outer, inner) combination, rows ordered by outer then inner."""
    outer, inner, combo = [], [], []
    c = 0
    for o in range(n_outer):
        n_inner = int(rng.integers(inner_low, inner_high + 1))
        for i in range(n_inner):
            m = int(rng.integers(rows_low, rows_high + 1))
            outer.extend([o] * m)
            inner.extend([i] * m)
            combo.extend([c] * m)
            c += 1
    return np.array(outer), np.array(inner), np.array(combo), c


def grouped_design(rng, n_groups: int, rows_low: int, rows_high: int):
    sizes = rng.integers(rows_low, rows_high + 1, size=n_groups)
    return np.repeat(np.arange(n_groups), sizes)


def crossed(out: Path) -> None:
    rng = np.random.default_rng(20240601)
    n_subj, n_item = 60, 40
    subj, item = crossed_design(rng, n_subj, n_item, 30, 40)
    sigma_subj = np.array([[0.6, 0.1], [0.1, 0.2]])
    b_subj = rng.standard_normal((n_subj, 2)) @ np.linalg.cholesky(sigma_subj).T
    b_item = np.sqrt(0.3) * rng.standard_normal(n_item)
    n = len(subj)
    x = rounded(rng.standard_normal(n))
    z = rounded(rng.uniform(0.0, 1.0, n))
    e = np.sqrt(1.0) * rng.standard_normal(n)
    y = 1.0 + 0.5 * x + 0.3 * z + b_subj[subj, 0] + b_subj[subj, 1] * x + b_item[item] + e
    s_lab, i_lab = labels("s", n_subj, 2), labels("i", n_item, 2)
    write_csv(out / "crossed.csv", {
        "subj": [s_lab[s] for s in subj], "item": [i_lab[i] for i in item], "x": x, "z": z, "y": rounded(y),
    })


def nested(out: Path) -> None:
    rng = np.random.default_rng(20240602)
    n_school = 25
    school, klass, combo, n_combo = nested_design(rng, n_school, 3, 6, 8, 20)
    b_school = np.sqrt(0.5) * rng.standard_normal(n_school)
    b_class = np.sqrt(0.25) * rng.standard_normal(n_combo)
    n = len(school)
    x = rounded(rng.standard_normal(n))
    e = rng.standard_normal(n)
    y = 2.0 + 0.4 * x + b_school[school] + b_class[combo] + e
    sch_lab = labels("sch", n_school, 2)
    write_csv(out / "nested.csv", {
        "school": [sch_lab[s] for s in school], "class": [f"c{c + 1}" for c in klass], "x": x, "y": rounded(y),
    })


def uncorrelated(out: Path) -> None:
    rng = np.random.default_rng(20240603)
    n_g = 50
    g = grouped_design(rng, n_g, 10, 30)
    b0 = np.sqrt(0.5) * rng.standard_normal(n_g)
    b1 = np.sqrt(0.3) * rng.standard_normal(n_g)
    n = len(g)
    x = rounded(rng.standard_normal(n))
    e = np.sqrt(0.8) * rng.standard_normal(n)
    y = 1.0 + 0.8 * x + b0[g] + b1[g] * x + e
    g_lab = labels("g", n_g, 2)
    write_csv(out / "uncorrelated.csv", {"g": [g_lab[i] for i in g], "x": x, "y": rounded(y)})


def crossed_poisson(out: Path) -> None:
    rng = np.random.default_rng(20240604)
    n_subj, n_item = 50, 30
    subj, item = crossed_design(rng, n_subj, n_item, 20, 28)
    b_subj = np.sqrt(0.3) * rng.standard_normal(n_subj)
    b_item = np.sqrt(0.2) * rng.standard_normal(n_item)
    n = len(subj)
    x = rounded(rng.standard_normal(n))
    y = rng.poisson(np.exp(0.5 + 0.3 * x + b_subj[subj] + b_item[item]))
    s_lab, i_lab = labels("s", n_subj, 2), labels("i", n_item, 2)
    write_csv(out / "crossed_poisson.csv", {
        "subj": [s_lab[s] for s in subj], "item": [i_lab[i] for i in item], "x": x, "y": y.astype(np.int64),
    })


def nested_bernoulli(out: Path) -> None:
    rng = np.random.default_rng(20240605)
    n_district = 30
    district, village, combo, n_combo = nested_design(rng, n_district, 3, 5, 10, 25)
    b_d = np.sqrt(0.5) * rng.standard_normal(n_district)
    b_dv = np.sqrt(0.3) * rng.standard_normal(n_combo)
    n = len(district)
    x = rounded(rng.standard_normal(n))
    eta = -0.3 + 0.6 * x + b_d[district] + b_dv[combo]
    y = (rng.uniform(0.0, 1.0, n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)
    d_lab = labels("d", n_district, 2)
    write_csv(out / "nested_bernoulli.csv", {
        "district": [d_lab[d] for d in district], "village": [f"v{v + 1}" for v in village], "x": x, "y": y,
    })


def negbin(out: Path) -> None:
    rng = np.random.default_rng(20240606)
    n_g, phi = 40, 3.0
    g = grouped_design(rng, n_g, 10, 30)
    b = np.sqrt(0.3) * rng.standard_normal(n_g)
    n = len(g)
    x = rounded(rng.standard_normal(n))
    mu = np.exp(1.0 + 0.4 * x + b[g])
    y = rng.poisson(rng.gamma(shape=phi, scale=mu / phi))
    g_lab = labels("g", n_g, 2)
    write_csv(out / "negbin.csv", {"g": [g_lab[i] for i in g], "x": x, "y": y.astype(np.int64)})


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2] / "tests" / "data"
    out.mkdir(parents=True, exist_ok=True)
    for make in (crossed, nested, uncorrelated, crossed_poisson, nested_bernoulli, negbin):
        make(out)


if __name__ == "__main__":
    main(sys.argv)
