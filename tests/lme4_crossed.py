"""lme4 reference figures for models with several grouping factors, on simulated test data.

Where the figures come from
---------------------------
Copied from ``benchmarks/reference/lme4_crossed_reference.txt``, the output of

    Rscript benchmarks/reference/lme4_crossed_reference.R > benchmarks/reference/lme4_crossed_reference.txt

run from the repository root with R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1-31,
Matrix 1.5-3, MASS 7.3-58.2 (Debian's r-cran-lme4), x86_64-pc-linux-gnu. The data are the
CSV files in ``tests/data/``, written by ``benchmarks/reference/simulate_crossed.py``
(numpy, fixed seeds; its docstring gives each model's true values). Text columns are read
by R as factors.

Fits: the Gaussian models by REML (``lmer``), the Poisson and Bernoulli ones by Laplace
(``glmer``), the negative binomial by ``glmer.nb`` (Laplace, phi = lme4's theta estimated
alongside). Figures are lme4's, printed with 10 significant digits.

Layout of ``LME4_CROSSED[name]``
--------------------------------
* ``file``: the CSV's name in ``tests/data/`` (:data:`DATA_DIR`); ``formula`` as lme4 was
  given it; ``family`` in the project's spelling (``"bernoulli"``: a 0/1 response, which
  lme4 fits as ``binomial``; ``"negative_binomial"``: NB2, Var(y) = mu + mu^2 / phi) and
  ``link``.
* ``fixef``: {term: (estimate, standard error)}.
* ``varcorr``: {factor: {"terms": [...], "cov": variance matrix as nested lists}}, the
  matrix's rows and columns in the order of ``terms``.
* ``sigma2``: the residual variance (Gaussian only); ``phi``: the negative binomial's
  dispersion (lme4's theta; negbin only).
* ``nobs`` and ``groups``: {factor: number of levels}, as lme4 counts them.
* ``lme4_names``: {factor as keyed here: factor as lme4 prints it}, only where they differ.

Names are the project's: ``"Intercept"`` for lme4's ``(Intercept)``, other terms by their
column name; a nested factor as the project writes it, ``"school:class"`` for
``(1 | school/class)``, which lme4 prints as ``class:school`` (its interaction factor
``class:school`` has the same levels). For ``(x || g)`` lme4 fits two terms, ``(1 | g)``
and ``(0 + x | g)``, which it prints as factors ``g`` and ``g.1``; here both variances sit
under factor ``"g"`` with terms ``["Intercept", "x"]``, as a diagonal matrix whose zero
covariance is fixed by the model, not estimated.
"""

from __future__ import annotations

from pathlib import Path

#: the folder holding the data sets' CSV files
DATA_DIR = Path(__file__).resolve().parent / "data"

LME4_VERSION = "1.1-31"
R_VERSION = "R version 4.2.2 Patched (2022-11-10 r83330)"

LME4_CROSSED = {
    "crossed": {
        "file": "crossed.csv",
        "formula": "y ~ x + z + (x | subj) + (1 | item)",
        "family": "gaussian",
        "link": "identity",
        "method": "REML",
        "fixef": {
            "Intercept": (0.8033440264, 0.1352147894),
            "x": (0.6425284107, 0.06031943079),
            "z": (0.3125063123, 0.07846789957),
        },
        "varcorr": {
            "subj": {
                "terms": ["Intercept", "x"],
                "cov": [[0.4571365825, 0.06868251936], [0.06868251936, 0.1871891857]],
            },
            "item": {"terms": ["Intercept"], "cov": [[0.3448440497]]},
        },
        "sigma2": 1.007809046,
        "nobs": 2101,
        "groups": {"subj": 60, "item": 40},
    },
    "nested": {
        "file": "nested.csv",
        "formula": "y ~ x + (1 | school/class)",
        "family": "gaussian",
        "link": "identity",
        "method": "REML",
        "fixef": {
            "Intercept": (1.964760569, 0.1644921747),
            "x": (0.3883784727, 0.02577866668),
        },
        "varcorr": {
            "school": {"terms": ["Intercept"], "cov": [[0.5969788278]]},
            "school:class": {"terms": ["Intercept"], "cov": [[0.2697215247]]},
        },
        "sigma2": 0.9948590963,
        "nobs": 1594,
        "groups": {"school": 25, "school:class": 116},
        "lme4_names": {"school:class": "class:school"},
    },
    "uncorrelated": {
        "file": "uncorrelated.csv",
        "formula": "y ~ x + (x || g)",
        "family": "gaussian",
        "link": "identity",
        "method": "REML",
        "fixef": {
            "Intercept": (0.9299146866, 0.09288016887),
            "x": (0.8716353422, 0.07798275072),
        },
        "varcorr": {
            # lme4: factor g (Intercept) 0.3840674588 and factor g.1 x 0.253987253; the
            # covariance is 0 by the model (two terms), not an estimate.
            "g": {"terms": ["Intercept", "x"], "cov": [[0.3840674588, 0.0], [0.0, 0.253987253]]},
        },
        "sigma2": 0.8054392503,
        "nobs": 1012,
        "groups": {"g": 50},
        "lme4_names": {"g": ["g", "g.1"]},
    },
    "crossed_poisson": {
        "file": "crossed_poisson.csv",
        "formula": "y ~ x + (1 | subj) + (1 | item)",
        "family": "poisson",
        "link": "log",
        "method": "Laplace",
        "fixef": {
            "Intercept": (0.5634438697, 0.1060252896),
            "x": (0.3231083749, 0.02050415492),
        },
        "varcorr": {
            "subj": {"terms": ["Intercept"], "cov": [[0.2975248663]]},
            "item": {"terms": ["Intercept"], "cov": [[0.140995618]]},
        },
        "nobs": 1192,
        "groups": {"subj": 50, "item": 30},
    },
    "nested_bernoulli": {
        "file": "nested_bernoulli.csv",
        "formula": "y ~ x + (1 | district/village)",
        "family": "bernoulli",
        "link": "logit",
        "method": "Laplace",
        "fixef": {
            "Intercept": (-0.02116136007, 0.1545240554),
            "x": (0.6910351361, 0.05523657958),
        },
        "varcorr": {
            "district": {"terms": ["Intercept"], "cov": [[0.5488207754]]},
            "district:village": {"terms": ["Intercept"], "cov": [[0.3423843381]]},
        },
        "nobs": 2113,
        "groups": {"district": 30, "district:village": 121},
        "lme4_names": {"district:village": "village:district"},
    },
    "negbin": {
        "file": "negbin.csv",
        "formula": "y ~ x + (1 | g)",
        "family": "negative_binomial",
        "link": "log",
        "method": "Laplace (glmer.nb)",
        "fixef": {
            "Intercept": (1.02236761, 0.07673659567),
            "x": (0.4331463705, 0.03072789536),
        },
        "varcorr": {
            "g": {"terms": ["Intercept"], "cov": [[0.1935720914]]},
        },
        "phi": 2.730385406,
        "nobs": 828,
        "groups": {"g": 40},
    },
}


def assert_agrees_with_glmer(post, ref: dict) -> None:
    """A GLM posterior against glmer's figures ``ref``: each fixed effect's mean within half a
    standard error and its sd within 15% of it; each variance's median within half a posterior sd."""
    import numpy as np
    import pytest

    for term, (est, se) in ref["fixef"].items():
        draws = (post["theta"].sel(term=term) if term in post["term"] else post["alpha"].sel(fixed_term=term)).values
        print(term, (draws.mean() - est) / se, draws.std() / se)
        assert abs(draws.mean() - est) < 0.5 * se, (term, draws.mean(), est, se)
        assert draws.std() == pytest.approx(se, rel=0.15), term
    for factor, vc in ref["varcorr"].items():
        draws = post[f"Sigma_{factor}"].values[..., 0, 0]
        print(factor, (np.median(draws) - vc["cov"][0][0]) / draws.std())
        assert abs(np.median(draws) - vc["cov"][0][0]) < 0.5 * draws.std(), (factor, np.median(draws), vc["cov"])
