"""Print the README's table: multilevel posterior means beside lme4 estimates (REML for the
Gaussian models, glmer's Laplace approximation for the GLMs).

    .venv/bin/python benchmarks/reference/compare_lme4.py

The lme4 figures are from ``lme4_reference.txt`` beside this file (lme4 1.1-31, R 4.2.2,
made by ``lme4_reference.R``).
"""

from __future__ import annotations

import warnings

import multilevel

# lme4 REML estimates, from lme4_reference.txt
LME4 = {
    "hsb82": {
        "theta[Intercept]": 12.665, "theta[ses]": 2.394,
        "Sigma[Intercept, Intercept]": 4.829, "Sigma[ses, Intercept]": -0.154, "Sigma[ses, ses]": 0.413,
        "sigma2": 36.830,
    },
    "sleepstudy": {
        "theta[Intercept]": 251.405, "theta[Days]": 10.467,
        "Sigma[Intercept, Intercept]": 612.100, "Sigma[Days, Intercept]": 9.604, "Sigma[Days, Days]": 35.072,
        "sigma2": 654.940,
    },
    # glmer (Laplace) estimates
    "epil": {
        "theta[Intercept]": 1.833, "alpha[lbase]": 0.883, "alpha[trt[progabide]]": -0.334,
        "alpha[lbase:trt[progabide]]": 0.339, "alpha[lage]": 0.481, "alpha[V4]": -0.160,
        "Sigma[Intercept, Intercept]": 0.251,
    },
    "cbpp": {
        "theta[Intercept]": -1.398, "alpha[period[2]]": -0.992, "alpha[period[3]]": -1.128,
        "alpha[period[4]]": -1.580, "Sigma[Intercept, Intercept]": 0.412,
    },
}
FORMULAS = {
    "hsb82": ("mAch ~ ses + (ses | school)", "gaussian"),
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "gaussian"),
    "epil": ("y ~ lbase*trt + lage + V4 + (1 | subject)", "poisson"),
    "cbpp": ("p(incidence, size) ~ period + (1 | herd)", "binomial"),
}


def main() -> None:
    warnings.simplefilter("ignore")
    print("| data | parameter | lme4 | posterior mean | posterior sd | 94% HDI | ess_bulk |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
    for name, (formula, family) in FORMULAS.items():
        fit = multilevel.fit(formula, name, family=family, chains=4, draws=2000, warmup=1000, seed=1, progress=False)
        table = fit.summary()
        for param, ref in LME4[name].items():
            row = table.loc[param]
            print(f"| {name} | {param} | {ref:.3f} | {row['mean']:.3f} | {row['sd']:.3f} | "
                  f"[{row['hdi_3%']:.3f}, {row['hdi_97%']:.3f}] | {row['ess_bulk']:.0f} |")


if __name__ == "__main__":
    main()
