"""Agreement of a benchmark fit's fixed effects with lme4's ``glmer`` / ``glmer.nb`` (issue 13's
target: "posterior means of fixed effects within a posterior sd of glmer's on every benchmark
model").

The benchmark's data are written to a temporary CSV file and fitted in the same run by
``reference/glmer_fixef.R`` (Laplace, lme4's defaults); :data:`COMMAND` is the command, recorded
in the report. Each fixed effect's posterior mean is compared with glmer's estimate in units of
the posterior sd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .common import Table, Target, assess

SCRIPT = Path(__file__).resolve().parent / "reference" / "glmer_fixef.R"
COMMAND = "Rscript benchmarks/reference/glmer_fixef.R DATA.csv FORMULA FAMILY FACTOR,COLUMNS"
#: multilevel's family -> the script's
R_FAMILY = {"poisson": "poisson", "bernoulli": "binomial", "binomial": "binomial", "negbinomial": "negbinomial"}


def lme4_name(term: str) -> str:
    """lme4's name of a multilevel fixed-effect term: ``Intercept`` -> ``(Intercept)``,
    ``YEAR[96]`` -> ``YEAR96``, ``lbase:trt[progabide]`` -> ``lbase:trtprogabide``."""
    return "(Intercept)" if term == "Intercept" else re.sub(r"\[([^\]]*)\]", r"\1", term)


def factor_columns(frame) -> list[str]:
    """The columns R must read as factors: categorical ones (text columns are factors anyway)."""
    return [c for c in frame.columns if str(frame[c].dtype) == "category"]


def parse_output(text: str) -> dict:
    """``{"fixef": {lme4 name: (estimate, se)}, "lme4": version, "convergence": lme4's optimiser
    warnings ("none" if none), "phi": glmer.nb's theta or None}``."""
    out: dict = {"fixef": {}, "lme4": "", "convergence": "", "phi": None}
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["fixef"]:
            out["fixef"][parts[1]] = (float(parts[2]), float(parts[3]))
        elif parts[:1] == ["lme4"]:
            out["lme4"] = parts[1]
        elif parts[:1] == ["convergence"]:
            out["convergence"] = " ".join(parts[1:])
        elif parts[:1] == ["nb_theta"]:
            out["phi"] = float(parts[1])
    return out


def glmer_fixef(frame, formula: str, family: str) -> dict | None:
    """lme4's fit of ``formula`` on ``frame`` (:func:`parse_output`'s dict); None without Rscript."""
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        frame.to_csv(path, index=False)
        done = subprocess.run(["Rscript", str(SCRIPT), str(path), formula, R_FAMILY[family],
                               ",".join(factor_columns(frame))], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"glmer_fixef.R failed on {formula}: {done.stderr.strip()[-500:]}")
    return parse_output(done.stdout)


def posterior_fixef(fit) -> dict[str, tuple[float, float]]:
    """{term: (posterior mean, posterior sd)} of a fit's fixed effects (``fit.fixef()``)."""
    fe = fit.fixef()
    return {str(t): (float(fe.loc[t, "mean"]), float(fe.loc[t, "sd"])) for t in fe.index}


def compare(posterior: dict[str, tuple[float, float]], ref: dict) -> list[dict]:
    """Per fixed effect: posterior mean and sd, glmer's estimate and se, |mean - estimate| / sd."""
    rows = []
    for term, (mean, sd) in posterior.items():
        est, se = ref["fixef"][lme4_name(term)]
        rows.append({"term": term, "mean": mean, "sd": sd, "glmer": est, "glmer_se": se,
                     "z": abs(mean - est) / sd})
    return rows


def check(label: str, fit, ref: dict | None) -> dict:
    """The comparison of one fit with glmer's figures ``ref`` (:func:`glmer_fixef` of its data;
    ``within``: every fixed effect within one posterior sd); ``available`` False when ``ref`` is None."""
    if ref is None:
        return {"label": label, "available": False}
    rows = compare(posterior_fixef(fit), ref)
    return {"label": label, "available": True, "lme4": ref["lme4"], "phi": ref["phi"],
            "convergence": ref["convergence"], "rows": rows,
            "within": all(r["z"] <= 1.0 for r in rows), "max_z": max(r["z"] for r in rows)}


def table(checks: list[dict]) -> Table:
    """One row per fixed effect of every checked model."""
    rows = [[c["label"], f"`{r['term']}`", f"{r['mean']:.4f}", f"{r['sd']:.4f}", f"{r['glmer']:.4f}",
             f"{r['glmer_se']:.4f}", f"{r['z']:.2f}", "yes" if r["z"] <= 1.0 else "**no**"]
            for c in checks if c["available"] for r in c["rows"]]
    version = next((c["lme4"] for c in checks if c["available"]), "")
    return Table(["model", "fixed effect", "posterior mean", "posterior sd", f"glmer (lme4 {version})",
                  "glmer se", "abs(mean - glmer) / sd", "within 1 sd"], rows,
                 caption=f"Fixed effects against lme4's Laplace fit of the same data in the same run (`{COMMAND}`):")


def target(checks: list[dict], quick: bool) -> Target:
    """Issue 13's target over ``checks``: every fixed effect within one posterior sd of glmer's
    (not assessed when R is missing or the run is quick)."""
    aim = "posterior means of the fixed effects within a posterior sd of glmer's estimates"
    if not all(c["available"] for c in checks):
        return Target(aim, "Rscript with lme4 not installed here", None)
    text = "; ".join(f"{c['label']}: largest {c['max_z']:.2f} sd" + ("" if c["within"] else " (**beyond 1**)")
                     for c in checks)
    return Target(aim, text, assess(all(c["within"] for c in checks), quick))


def warnings_note(checks: list[dict]) -> str:
    """A note naming the models on which lme4's optimiser warned (its standard errors are then
    unreliable; the check uses the estimates and the posterior sd only); "" if none did."""
    warned = [f"{c['label']} ({c['convergence']})" for c in checks
              if c["available"] and c["convergence"] not in ("", "none")]
    return ("glmer's convergence warnings: " + "; ".join(warned) + ". The check compares its estimates with the "
            "posterior sd, not with its standard errors.") if warned else ""
