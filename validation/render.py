"""Render the simulation-based calibration results of ``make validate`` into docs/validation.md.

    python validation/render.py RESULTS_DIR docs/validation.md

RESULTS_DIR holds one JSON file per SBC run (written by tests/sbc.py when
MULTILEVEL_SBC_OUT is set). For each run: a table row (replications, parameters tested,
smallest p-value against the Bonferroni threshold, verdict) and a figure of the ECDF
differences of the normalised ranks with 99% simultaneous bands, one panel per parameter.
"""

from __future__ import annotations

import json
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az  # noqa: E402
from scipy import stats  # noqa: E402


def figure(record: dict, path: Path) -> None:
    names, ranks, L = record["names"], np.asarray(record["ranks"]), record["L"]
    k = len(names)
    cols = min(k, 4)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name, column in zip(axes.flat, names, ranks.T):
        u = (column + 0.5) / (L + 1)  # normalised ranks: uniform on (0, 1) when calibrated
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            az.plot_ecdf(u, cdf=stats.uniform(0, 1).cdf, difference=True, confidence_bands=True, ci_prob=0.99, ax=ax)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[k:]:
        ax.set_visible(False)
    fig.suptitle(record["test"].split("::")[-1], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(results: Path, out: Path) -> int:
    paths = sorted(results.glob("*.json"))
    records = [json.loads(p.read_text()) for p in paths]
    dates = [datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M") for p in paths]
    if not records:
        print(f"no SBC results in {results}", file=sys.stderr)
        return 1
    plots = out.parent / "validation"
    plots.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Validation: simulation-based calibration",
        "",
        "Made by `make validate` "
        f"(rendered {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; each run's own date in the table): the full SBC runs of `tests/test_sbc.py`, "
        "`tests/test_glm_sbc.py` and `tests/test_crossed_sbc.py` (several grouping factors; marker "
        "`validate`). Each replication draws the population parameters from the prior, the group "
        "effects and data from the model, fits one chain, thins it to L draws, "
        "and records the rank of each true parameter among them (Talts et al. 2018). Ranks of a correct "
        "sampler are uniform: each parameter's are tested by a chi-square test on equal bins, at a "
        "family-wise level 0.01 with a Bonferroni correction over the parameters of the run. The figures "
        "show ECDF differences of the normalised ranks with 99% simultaneous bands (ArviZ).",
        "",
        "That the check has power is shown in the default suite: `test_sbc_catches_wrong_sigma_step` "
        "gives the Sigma update a wrong degree of freedom (eta0 + m + 3, + 10), "
        "`test_glm_sbc_catches_a_tempered_likelihood` squares the GLM likelihood, "
        "`test_glm_sbc_catches_a_beta_step_without_its_prior` drops the prior from the beta_j step and "
        "`test_crossed_sbc_catches_a_slice_move_without_its_jacobian` drops the Jacobian from the slice "
        "move of a large factor's variance; "
        "the same test rejects each. Samplers: collapsed (Gaussian default), interweaving and centred "
        "(the specification's) Gibbs; GLMs with the Laplace (default) and textbook proposals, "
        "each with the default sampler (non-centred moves kept or dropped in warm-up); the "
        "`bernoulli_group_level` configuration has a group-level fixed-only predictor, so the GLM kernel "
        "makes several joint alpha moves per sweep.",
        "",
        "| run | replications | L | parameters | smallest p | threshold | verdict | run at (UTC) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    failed = 0
    for record, date in zip(records, dates):
        name = record["test"].split("::")[-1]
        png = plots / (Path(record["test"].split("::")[-1]).name.replace("[", "_").replace("]", "") + ".png")
        figure(record, png)
        ok = not record["rejected"]
        failed += not ok
        verdict = "uniform" if ok else "REJECTED: " + ", ".join(record["rejected"])
        lines.append(f"| [{name}]({plots.name}/{png.name}) | {len(record['ranks'])} | {record['L']} | "
                     f"{len(record['names'])} | {min(record['pvalues']):.3g} | {record['threshold']:.2g} | {verdict} | {date} |")
    lines += ["", "## Figures", ""]
    for record in records:
        name = record["test"].split("::")[-1]
        png = name.replace("[", "_").replace("]", "") + ".png"
        lines += [f"### {name}", "", f"![{name}]({plots.name}/{png})", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {len(records)} figures in {plots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
