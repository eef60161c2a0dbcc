"""Render the simulation-based calibration results of ``make validate`` into docs/validation.md.

    python validation/render.py [--fresh] RESULTS_DIR docs/validation.md

RESULTS_DIR holds one JSON file per SBC run (written by tests/sbc.py when
MULTILEVEL_SBC_OUT is set). For each run: a table row (replications, parameters tested,
smallest p-value against the Bonferroni threshold, verdict, when it ran) and a figure of the
ECDF differences of the normalised ranks with 99% simultaneous bands, one panel per parameter.

A partial run (``make validate K=poisson``: some of the runs) keeps the other runs' rows:
the table rows of the existing output file whose run is not in RESULTS_DIR are carried over
as they are (with their own date and figure). ``--fresh`` (a full ``make validate``) drops
them, so the page shows exactly the runs of RESULTS_DIR. The exit status counts the runs of
RESULTS_DIR only.
"""

from __future__ import annotations

import json
import re
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


def png_name(run: str) -> str:
    """The figure's file name of a run, ``test_x[a-b]`` -> ``test_x_a-b.png`` (``[one factor]`` -> ``_one_factor``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", run.replace("[", "_").replace("]", "")) + ".png"


def kept_rows(out: Path) -> dict[str, str]:
    """{run: its table row} of an earlier rendering of ``out`` (none if it does not exist)."""
    if not out.exists():
        return {}
    rows = {}
    for line in out.read_text().splitlines():
        match = re.match(r"\| \[(.+?)\]\(", line)
        if match:
            rows[match.group(1)] = line
    return rows


def main(results: Path, out: Path, fresh: bool = False) -> int:
    paths = sorted(results.glob("*.json"))
    records = [json.loads(p.read_text()) for p in paths]
    if not records:
        print(f"no SBC results in {results}", file=sys.stderr)
        return 1
    dates = [record.get("run_at") or datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M")
             for record, p in zip(records, paths)]
    plots = out.parent / "validation"
    plots.mkdir(parents=True, exist_ok=True)
    rows: dict[str, str] = {} if fresh else kept_rows(out)
    carried = set(rows)
    failed = 0
    for record, date in zip(records, dates):
        name = record["test"].split("::")[-1]
        png = plots / png_name(name)
        figure(record, png)
        ok = not record["rejected"]
        failed += not ok
        verdict = "uniform" if ok else "REJECTED: " + ", ".join(record["rejected"])
        rows[name] = (f"| [{name}]({plots.name}/{png.name}) | {len(record['ranks'])} | {record['L']} | "
                      f"{len(record['names'])} | {min(record['pvalues']):.3g} | {record['threshold']:.2g} | {verdict} | {date} |")
        carried.discard(name)
    lines = [
        "# Validation: simulation-based calibration",
        "",
        "Made by `make validate` "
        f"(rendered {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; each run's own date in the table: a partial run, "
        "`make validate K=...`, reruns some and keeps the other rows): the full SBC runs (marker `validate`) of "
        "`tests/test_sbc.py`, `tests/test_glm_sbc.py` (one grouping factor), `tests/test_crossed_sbc.py` (several "
        "grouping factors, Gaussian), `tests/test_crossed_glm.py` (crossed Bernoulli, Polya-Gamma), "
        "`tests/test_crossed_poisson.py` (the Metropolis kernel of several factors: crossed, observation-level and "
        "correlated Poisson models, two nested Poisson factors (the nested variance move), and a crossed Bernoulli "
        "with `sampler=\"metropolis\"`), `tests/test_sharded.py` (the sharded GLM sampler, the Dask engine's: a "
        "correlated Poisson with a group-level predictor, a Poisson intercept whose shards carry their level sums from "
        "sweep to sweep, and a Bernoulli of small groups), "
        "`tests/test_sharded_crossed.py` (the sharded sampler with two factors: a crossed Poisson, the other factor in "
        "closed form, a crossed Bernoulli with a correlated slope of the sharded factor, and a nested Poisson, "
        "`(1 | a/b)`, the nested shift and variance moves, on two shards), "
        "`tests/test_sharded_nb.py` (the sharded negative binomial, its phi move, on three shards) and "
        "`tests/test_negbinomial.py`. Each replication draws the population parameters from the prior, the group "
        "effects and data from the model, fits one chain, thins it to L draws, "
        "and records the rank of each true parameter among them (Talts et al. 2018). Ranks of a correct "
        "sampler are uniform: each parameter's are tested by a chi-square test on equal bins, at a "
        "family-wise level 0.01 with a Bonferroni correction over the parameters of the run. The figures "
        "show ECDF differences of the normalised ranks with 99% simultaneous bands (ArviZ).",
        "",
        "That the check has power is shown in the default suite: `test_sbc_catches_wrong_sigma_step` "
        "gives the Sigma update a wrong degree of freedom (eta0 + m + 3, + 10), "
        "`test_glm_sbc_catches_a_tempered_likelihood` squares the GLM likelihood, "
        "`test_glm_sbc_catches_a_beta_step_without_its_prior` drops the prior from the beta_j step, "
        "`test_crossed_sbc_catches_a_slice_move_without_its_jacobian` drops the Jacobian from the slice "
        "move of a large factor's variance, `test_crossed_bernoulli_sbc_catches_untilted_weights` draws the "
        "Polya-Gamma weights untilted, `test_negbinomial_sbc_catches_a_wrong_phi_prior` gives phi's step a wrong "
        "prior and `test_poisson_sbc_catches_rotation_moves_without_their_hastings_correction` drops the Hastings "
        "correction of the Metropolis kernel's rotation moves (correlated Poisson and Bernoulli), "
        "`test_poisson_sbc_catches_nested_variance_moves_without_their_jacobian` drops the Jacobian of the nested "
        "variance move, `test_sharded_sbc_catches_moves_without_their_hastings_correction` drops the Hastings "
        "correction of the sharded sampler's moves and `test_nb_sbc_catches_a_phi_move_without_its_jacobian` drops "
        "the log-scale Jacobian of its phi move; the same test rejects each. Samplers: collapsed (Gaussian default), interweaving and centred "
        "(the specification's) Gibbs; GLMs with the Laplace (default) and textbook proposals, "
        "each with the default sampler (non-centred moves kept or dropped in warm-up); the "
        "`bernoulli_group_level` configuration has a group-level fixed-only predictor, so the GLM kernel "
        "makes several joint alpha moves per sweep.",
        "",
        "| run | replications | L | parameters | smallest p | threshold | verdict | run at (UTC) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    names = sorted(rows)
    lines += [rows[name] for name in names]
    lines += ["", "## Figures", ""]
    for name in names:
        lines += [f"### {name}", "", f"![{name}]({plots.name}/{png_name(name)})", ""]
    out.write_text("\n".join(lines))
    kept = f", {len(carried)} rows kept from the earlier page" if carried else ""
    print(f"wrote {out} with {len(records)} new runs and figures in {plots}{kept}")
    for name in sorted(carried):
        if "REJECTED" in rows[name]:
            print(f"note: kept row {name} was rejected when it ran", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    fresh = "--fresh" in args
    args = [a for a in args if a != "--fresh"]
    if len(args) != 2:
        print("usage: python validation/render.py [--fresh] RESULTS_DIR OUT.md", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(args[0]), Path(args[1]), fresh=fresh))
