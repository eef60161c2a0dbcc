"""Print the README's table: multilevel posterior means beside lme4 REML estimates.

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
}
FORMULAS = {"hsb82": "mAch ~ ses + (ses | school)", "sleepstudy": "Reaction ~ Days + (Days | Subject)"}


def main() -> None:
    warnings.simplefilter("ignore")
    print("| data | parameter | lme4 REML | posterior mean | posterior sd | 94% HDI | ess_bulk |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
    for name, formula in FORMULAS.items():
        fit = multilevel.fit(formula, name, chains=4, draws=2000, warmup=1000, seed=1, progress=False)
        table = fit.summary()
        for param, ref in LME4[name].items():
            row = table.loc[param]
            print(f"| {name} | {param} | {ref:.3f} | {row['mean']:.3f} | {row['sd']:.3f} | "
                  f"[{row['hdi_3%']:.3f}, {row['hdi_97%']:.3f}] | {row['ess_bulk']:.0f} |")


if __name__ == "__main__":
    main()
