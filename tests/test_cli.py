"""The ``multilevel`` command line (issue 2, point 8): fit, summary, demo, --help; bad
input gives exit status 2 and one line on stderr, never a traceback; no progress bar when
stderr is not a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import multilevel

HSB_FORMULA = "mAch ~ ses + (ses | school)"
SMALL = ["--draws", "100", "--warmup", "100", "--chains", "2", "--seed", "1", "--cores", "1"]
SUMMARY_COLUMNS = ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
EXE = Path(sys.executable).parent / "multilevel"


from clitools import run_main


def run_exe(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed console script with stdout and stderr as pipes (not terminals)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([str(EXE), *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, str, str]:
    """A small hsb82 fit written by ``multilevel fit ... --out``: (path, stdout, stderr)."""
    path = tmp_path_factory.mktemp("cli") / "fit.nc"
    code, out, err = run_main(["fit", "hsb82", "--formula", HSB_FORMULA, *SMALL, "--out", path])
    assert code == 0, err
    return path, out, err


# -- fit ------------------------------------------------------------------------------------

def test_fit_prints_report_and_writes_file(fitted):
    path, out, err = fitted
    assert path.exists()
    assert HSB_FORMULA in out
    for word in ("Intercept", "ses", "sigma2"):
        assert word in out
    assert "Traceback" not in err
    fit = multilevel.load(path)
    assert fit.formula == HSB_FORMULA
    assert fit.idata.posterior.sizes["chain"] == 2
    assert fit.idata.posterior.sizes["draw"] == 100
    assert "1224" in fit.idata.posterior["group"].values.tolist()


def sim_frame(seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(8), 12)
    x = rng.normal(size=g.size)
    y = 1.0 + 0.5 * g + (1 + 0.1 * g) * x + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_fit_reads_csv_and_parquet(tmp_path, suffix):
    df = sim_frame()
    path = tmp_path / f"data{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    out_path = tmp_path / "f.nc"
    code, out, err = run_main(["fit", path, "--formula", "y ~ x + (x | g)", *SMALL, "--out", out_path])
    assert code == 0, err
    assert "y ~ x + (x | g)" in out
    fit = multilevel.load(out_path)
    assert sorted(fit.idata.posterior["group"].values.tolist()) == [str(j) for j in range(8)]  # labels as strings


def test_fit_missing_values_warn_on_one_line(tmp_path):
    df = sim_frame()
    df.loc[[3, 40, 77], "x"] = np.nan
    path = tmp_path / "na.csv"
    df.to_csv(path, index=False)
    code, out, err = run_main(["fit", path, "-f", "y ~ x + (1 | g)", *SMALL])
    assert code == 0, err
    warn = [line for line in err.splitlines() if "3" in line and "row" in line]
    assert len(warn) == 1, err
    code, out, err = run_main(["fit", path, "-f", "y ~ x + (1 | g)", *SMALL, "--na-action", "raise"])
    assert_one_line_error(code, err, "3")


def test_fit_overwrite_replaces_existing_file(tmp_path):
    path = tmp_path / "fit.nc"
    path.write_bytes(b"old")
    code, out, err = run_main(["fit", "sleepstudy", "-f", "Reaction ~ Days + (Days | Subject)", *SMALL,
                               "--out", path, "--overwrite"])
    assert code == 0, err
    assert multilevel.load(path).formula == "Reaction ~ Days + (Days | Subject)"


# -- resume ----------------------------------------------------------------------------------

def test_resume_to_existing_out_needs_overwrite(fitted, tmp_path):
    path, _, _ = fitted
    out = tmp_path / "more.nc"
    out.write_bytes(b"old")
    code, _, err = run_main(["resume", path, "--draws", "10", "--out", out, "--cores", "1", "--no-progress"])
    assert_one_line_error(code, err, "exists", "--overwrite")
    assert out.read_bytes() == b"old"
    code, _, err = run_main(["resume", path, "--draws", "10", "--out", out, "--overwrite", "--cores", "1",
                             "--no-progress"])
    assert code == 0, err
    assert multilevel.load(out).posterior.sizes["draw"] == 110
    _, out_help, _ = run_main(["resume", "--help"])
    assert "--overwrite" in out_help


# -- summary ---------------------------------------------------------------------------------

def test_summary_json(fitted):
    path, _, _ = fitted
    code, out, err = run_main(["summary", path, "--json"])
    assert code == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == {"param", *SUMMARY_COLUMNS}
        assert all(v is None or isinstance(v, (int, float)) for k, v in row.items() if k != "param")
    by_name = {row["param"]: row for row in rows}
    assert {"theta[Intercept]", "theta[ses]", "sigma2"} <= set(by_name)
    assert {"Sigma[Intercept, Intercept]", "Sigma[ses, Intercept]", "Sigma[ses, ses]"} <= set(by_name)
    table = multilevel.load(path).summary()
    assert by_name["theta[ses]"]["mean"] == pytest.approx(table.loc["theta[ses]", "mean"], abs=1e-6)
    assert 12.0 < by_name["theta[Intercept]"]["mean"] < 13.3


def test_summary_text(fitted):
    path, fit_out, _ = fitted
    code, out, err = run_main(["summary", path])
    assert code == 0, err
    assert HSB_FORMULA in out
    assert "Intercept" in out and "ses" in out and "sigma2" in out


# -- loo and compare ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def intercept_fit(tmp_path_factory) -> Path:
    """The random-intercept model of the same rows, saved by the command line."""
    path = tmp_path_factory.mktemp("cli-intercept") / "intercept.nc"
    code, _, err = run_main(["fit", "hsb82", "--formula", "mAch ~ ses + (1 | school)", *SMALL, "--out", path])
    assert code == 0, err
    return path


def test_loo_prints_the_fits_loo(fitted):
    path, _, _ = fitted
    want = multilevel.load(path).loo()
    code, out, err = run_main(["loo", path, "--json"])
    assert code == 0, err
    got = json.loads(out)
    for name in ("elpd_loo", "se", "p_loo"):
        assert got[name] == pytest.approx(float(want[name]), rel=1e-12), name
    assert got["n_data_points"] == 7185 and got["n_samples"] == 200 and got["scale"] == "log"
    assert got["pareto_k_above_good_k"] == int((want.pareto_k.values > want.good_k).sum())
    code, out, err = run_main(["loo", path, "--scale", "deviance"])
    assert code == 0, err
    assert "Computed from 200 posterior samples and 7185 observations" in out and "deviance" in out
    assert f"{-2 * float(want['elpd_loo']):.2f}" in out


def test_compare_prints_the_table_of_multilevel_compare(fitted, intercept_fit):
    path, _, _ = fitted
    want = multilevel.compare({"slope": multilevel.load(path), "intercept": multilevel.load(intercept_fit)})
    code, out, err = run_main(["compare", path, intercept_fit, "--names", "slope,intercept", "--json"])
    assert code == 0, err
    rows = json.loads(out)
    assert [r["model"] for r in rows] == list(want.index)
    for row in rows:
        for col in ("rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse"):
            assert row[col] == pytest.approx(float(want.loc[row["model"], col]), rel=1e-9, abs=1e-12), col
        assert row["warning"] == bool(want.loc[row["model"], "warning"]) and row["scale"] == "log"
    code, out, err = run_main(["compare", path, intercept_fit, "--ic", "waic"])
    assert code == 0, err
    assert "elpd_waic" in out.splitlines()[0] and {"fit", "intercept"} <= {line.split()[0] for line in out.splitlines()[1:]}


@pytest.mark.parametrize("argv, fragments", [
    (["compare", "{a}"], ["at least two fits"]),
    (["compare", "{a}", "{a}"], ["names repeat", "--names"]),
    (["compare", "{a}", "{b}", "--names", "x"], ["--names needs 2 different names"]),
    (["compare", "{a}", "missing.nc"], ["missing.nc"]),
    (["loo", "missing.nc"], ["missing.nc"]),
], ids=["one-fit", "same-names", "names-count", "missing-file", "loo-missing-file"])
def test_loo_and_compare_bad_input_one_line_exit_2(fitted, intercept_fit, argv, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(a=fitted[0], b=intercept_fit) for a in argv]
    code, out, err = run_main(argv)
    assert_one_line_error(code, err, *fragments)
    assert not out


# -- help -----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["fit", "--help"], ["summary", "--help"], ["demo", "--help"],
                                  ["loo", "--help"], ["compare", "--help"]])
def test_help(argv):
    code, out, err = run_main(argv)
    assert code == 0, err
    assert "Usage" in out
    assert "Traceback" not in err


def test_help_lists_commands_and_options():
    _, out, _ = run_main(["--help"])
    for cmd in ("fit", "summary", "demo", "loo", "compare"):
        assert cmd in out
    _, out, _ = run_main(["fit", "--help"])
    for opt in ("--formula", "--family", "--chains", "--draws", "--warmup", "--seed", "--out", "--no-progress"):
        assert opt in out
    _, out, _ = run_main(["summary", "--help"])
    assert "--json" in out


# -- bad input --------------------------------------------------------------------------------

BAD = [
    (["fit", "no-such-file.csv", "-f", "y ~ x + (1 | g)"], ["no-such-file.csv"]),
    (["fit", "hsb82", "-f", "mAch ses + (1 | school)"], ["formula"]),
    (["fit", "hsb82", "-f", "mAch ~ ses + (1 | "], ["formula"]),
    (["fit", "hsb82", "-f", "mAch ~ ses"], ["formula"]),
    (["fit", "epil", "-f", "y ~ trt + (1 | subject) + (1 | period)", "--family", "poisson", "--sampler", "centred"],
     ["sampler 'centred' fits one random-effects term", "use one of metropolis"]),
    (["fit", "hsb82", "-f", "mAch ~ nosuchcol + (1 | school)"], ["nosuchcol"]),
    (["fit", "hsb82", "-f", HSB_FORMULA, "--family", "no-such-family"], ["no-such-family"]),
    (["fit", "hsb82", "-f", HSB_FORMULA, "--chains", "0"], ["chains"]),
    (["fit", "hsb82", "-f", HSB_FORMULA, "--draws", "0"], ["draws"]),
    (["fit", "hsb82", "-f", HSB_FORMULA, "--cores", "0"], ["cores"]),
    (["summary", "no-such-fit.nc"], ["no-such-fit.nc"]),
]


@pytest.mark.parametrize("argv, fragments", BAD, ids=[
    "missing-file", "no-tilde", "unparsable", "no-group-part", "two-factors", "unknown-column",
    "unknown-family", "chains-0", "draws-0", "cores-0", "summary-missing-file"])
def test_bad_input_one_line_exit_2(argv, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(argv)
    assert_one_line_error(code, err, *fragments)


MISSING_FIT = [["summary", "gone.nc"], ["loo", "gone.nc"], ["plot", "gone.nc"], ["predict", "gone.nc"],
               ["resume", "gone.nc"], ["compare", "gone.nc", "also-gone.nc"]]


@pytest.mark.parametrize("argv", MISSING_FIT, ids=[a[0] for a in MISSING_FIT])
def test_missing_fit_file_refused_before_the_fit_libraries_load(argv, tmp_path):
    """Every command that reads a saved fit names the missing file in one line, exit 2, before it
    imports what reading a fit takes (checked in a fresh interpreter: no multilevel.result, no xarray)."""
    code = ("import sys\nfrom multilevel.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print(e.code, 'multilevel.result' in sys.modules, 'xarray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], (proc.stdout, proc.stderr)
    assert_one_line_error(2, proc.stderr, "gone.nc", "not found")


def test_summary_of_a_saved_fit_loads_neither_formula_parser_nor_compiler(fitted):
    """Printing a saved fit reads it and its stored report lines: formulae (and the scipy modules
    it imports, about half a second) and numba (the priors' and PSIS's kernels, a fifth of a
    second) stay unloaded; the printed summary is that of the fit."""
    code = ("import sys\nfrom multilevel.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('status', e.code, 'formulae' in sys.modules, 'numba' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, "summary", str(fitted[0])], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.splitlines()[-1] == "status 0 False False", (proc.stdout[-500:], proc.stderr)
    assert "Predictors: ses numeric" in proc.stdout and "sigma2" in proc.stdout


def test_summary_of_non_fit_file(tmp_path):
    path = tmp_path / "data.csv"
    sim_frame().to_csv(path, index=False)
    code, out, err = run_main(["summary", path])
    assert_one_line_error(code, err, "data.csv")


def test_fit_with_bad_data_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    code, out, err = run_main(["fit", path, "-f", "y ~ x + (1 | g)", *SMALL])
    assert_one_line_error(code, err, "empty.csv")


@pytest.fixture
def no_sampling(monkeypatch):
    """Make any attempt to sample fail loudly, to show a refusal happens before sampling."""
    import multilevel.api

    def refuse(*args, **kwargs):
        raise AssertionError("sampling started although the output path is unusable")

    monkeypatch.setattr(multilevel.api.Model, "fit", refuse)


def test_existing_out_refused_before_sampling(tmp_path, no_sampling):
    path = tmp_path / "fit.nc"
    path.write_bytes(b"precious")
    code, out, err = run_main(["fit", "hsb82", "-f", HSB_FORMULA, *SMALL, "--out", path])
    assert_one_line_error(code, err, "exists")
    assert path.read_bytes() == b"precious"


@pytest.mark.parametrize("where", ["missing-dir", "parent-is-file"])
def test_unusable_out_dir_refused_before_sampling(tmp_path, no_sampling, where):
    if where == "missing-dir":
        out = tmp_path / "no-such-dir" / "fit.nc"
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "fit.nc"
    code, _, err = run_main(["fit", "hsb82", "-f", HSB_FORMULA, *SMALL, "--out", out])
    assert_one_line_error(code, err)
    assert not out.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to any folder")
def test_unwritable_out_dir_refused_before_sampling(tmp_path, no_sampling):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = run_main(["fit", "hsb82", "-f", HSB_FORMULA, *SMALL, "--out", folder / "fit.nc"])
        assert_one_line_error(code, err, "writ")
    finally:
        folder.chmod(0o755)


def test_out_is_directory_refused(tmp_path, no_sampling):
    code, _, err = run_main(["fit", "hsb82", "-f", HSB_FORMULA, *SMALL, "--out", tmp_path, "--overwrite"])
    assert code == 2, err
    assert "Traceback" not in err


# -- the installed console script, in its own process -----------------------------------------

BAR = re.compile(r"\d+%\||sweep/s|it/s|\r")


def test_console_script_fit_without_terminal_has_no_progress_bar(tmp_path):
    assert EXE.exists(), EXE
    proc = run_exe(["fit", "sleepstudy", "--formula", "Reaction ~ Days + (Days | Subject)",
                    "--draws", "200", "--warmup", "100", "--chains", "2", "--seed", "1", "--out", "fit.nc"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Reaction ~ Days + (Days | Subject)" in proc.stdout
    assert "theta" in proc.stdout or "Intercept" in proc.stdout
    assert (tmp_path / "fit.nc").exists()
    assert "Traceback" not in proc.stderr
    assert not BAR.search(proc.stderr), proc.stderr
    assert "sampling" not in proc.stderr.lower()

    proc = run_exe(["summary", "fit.nc", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {"theta[Intercept]", "theta[Days]"} <= {row["param"] for row in json.loads(proc.stdout)}


def test_console_script_bad_input_exit_2(tmp_path):
    proc = run_exe(["fit", "hsb82", "--formula", "mAch ~ nosuchcol + (1 | school)"], cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "nosuchcol")
    assert proc.stdout == ""


def run_exe_with_terminal_stderr(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run the console script with stderr on a pseudo-terminal; return (status, stderr)."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    # a terminal of 24 x 100 characters (a fresh pty has 0 columns and tqdm would draw nothing)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []

    def reader() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        proc = subprocess.run([str(EXE), *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=slave,
                              stdin=subprocess.DEVNULL, timeout=120)
    finally:
        os.close(slave)
    thread.join(timeout=10)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(not hasattr(os, "openpty") or sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bar_only_on_a_terminal_and_not_with_no_progress(tmp_path):
    """Positive control for the test above: on a terminal the bar shows, unless --no-progress."""
    argv = ["fit", "sleepstudy", "--formula", "Reaction ~ Days + (Days | Subject)", "--draws", "200",
            "--warmup", "100", "--chains", "2", "--seed", "1", "--cores", "1"]
    code, err = run_exe_with_terminal_stderr(argv, tmp_path)
    assert code == 0, err
    assert BAR.search(err), err
    code, err = run_exe_with_terminal_stderr([*argv, "--no-progress"], tmp_path)
    assert code == 0, err
    assert not re.search(r"\d+%\|", err), err


# -- demo ------------------------------------------------------------------------------------

def test_demo(tmp_path):
    """``multilevel demo``: 4 chains x 2000 sweeps of mAch ~ ses + (ses | school) on hsb82;
    the posterior means of theta are near lme4's 12.66 and 2.39."""
    proc = run_exe(["demo"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert HSB_FORMULA in out
    block = out.split("Population-level effects:")[1]
    intercept = float(re.search(r"^Intercept\s+(-?\d+\.\d+)", block, re.M).group(1))
    ses = float(re.search(r"^ses\s+(-?\d+\.\d+)", block, re.M).group(1))
    assert intercept == pytest.approx(12.66, abs=0.1)
    assert ses == pytest.approx(2.39, abs=0.06)
    assert not BAR.search(proc.stderr)


# -- several grouping factors (issue 12, point 5) --------------------------------------------

DATA = Path(__file__).resolve().parent / "data"
CROSSED = "y ~ x + z + (x | subj) + (1 | item)"


@pytest.fixture(scope="module")
def crossed(tmp_path_factory) -> tuple[Path, str]:
    """``multilevel fit tests/data/crossed.csv ... --out``: (path, stdout)."""
    path = tmp_path_factory.mktemp("crossed") / "crossed.nc"
    code, out, err = run_main(["fit", DATA / "crossed.csv", "--formula", CROSSED, *SMALL, "--out", path])
    assert code == 0, err
    return path, out


def test_fit_and_summary_with_several_factors(crossed):
    path, fit_out = crossed
    for block in ("Group-level effects (subj):", "Group-level effects (item):",
                  "Group-effect covariance Sigma (subj):", "Population-level effects:"):
        assert block in fit_out
    assert "levels: subj 60, item 40" in fit_out
    code, out, err = run_main(["summary", path])
    assert code == 0, err
    assert out == fit_out
    code, out, err = run_main(["summary", path, "--json"])
    assert code == 0, err
    params = [row["param"] for row in json.loads(out)]
    assert {"theta[x]", "alpha[z]", "Sigma_subj[x, Intercept]", "Sigma_item[Intercept, Intercept]",
            "sigma2"} <= set(params)


def predict_csv(argv: list) -> pd.DataFrame:
    import io

    code, out, err = run_main(["predict", *argv])
    assert code == 0, err
    return pd.read_csv(io.StringIO(out))


def test_predict_re_form(crossed, tmp_path):
    path, _ = crossed
    data = pd.read_csv(DATA / "crossed.csv").head(30)
    new = tmp_path / "new.csv"
    data.to_csv(new, index=False)
    fit = multilevel.load(path)
    both = predict_csv([path, new])
    np.testing.assert_allclose(both["mean"], fit.predict(data, summary=True)["mean"])
    subj = predict_csv([path, new, "--re-form", "~(1 | subj)"])
    np.testing.assert_allclose(subj["mean"], fit.predict(data, re_form=["subj"], summary=True)["mean"])
    assert not np.allclose(subj["mean"], both["mean"])
    # the item column is not needed without item's effects
    data.drop(columns="item").to_csv(new, index=False)
    np.testing.assert_allclose(predict_csv([path, new, "--re-form", "~(x | subj)"])["mean"], subj["mean"])
    none = predict_csv([path, new, "--no-group-effects"])
    np.testing.assert_allclose(none["mean"], fit.predict(data, re_form="~0", summary=True)["mean"])
    np.testing.assert_allclose(predict_csv([path, new, "--re-form", "~0"])["mean"], none["mean"])
    # the fitted rows
    fitted = predict_csv([path, "--re-form", "~(1 | item)"])
    np.testing.assert_allclose(fitted["mean"], fit.predict(re_form=["item"], summary=True)["mean"])


def test_predict_re_form_of_a_one_factor_fit(fitted):
    path, _, _ = fitted
    default = predict_csv([path, "--draws", "20"])
    np.testing.assert_allclose(predict_csv([path, "--draws", "20", "--re-form", "~(ses | school)"])["mean"],
                               default["mean"])
    np.testing.assert_allclose(predict_csv([path, "--draws", "20", "--re-form", "~0"])["mean"],
                               predict_csv([path, "--draws", "20", "--no-group-effects"])["mean"])


@pytest.mark.parametrize("argv, fragments", [
    (["predict", "--re-form", "~(1 | school)"], ["'school'", "subj, item"]),
    (["predict", "--re-form", "subj"], ["--re-form 'subj' is not a formula", "~(1 | subj)"]),
    (["predict", "--re-form", "~(1 | subj"], ["names no grouping factor"]),
    (["predict", "--re-form", "~0", "--no-group-effects"], ["not both"]),
    (["plot", "--kind", "caterpillar", "--factor", "school", "--out", "c.png"], ["no grouping factor 'school'",
                                                                                  "subj, item"]),
    (["plot", "--kind", "rank", "--factor", "item", "--out", "r.png"], ["--factor", "not of rank"]),
], ids=["unknown-factor", "not-a-formula", "no-bar", "both", "plot-unknown-factor", "plot-factor-of-rank"])
def test_several_factors_bad_input_one_line_exit_2(crossed, argv, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, _ = crossed
    code, out, err = run_main([argv[0], path, *argv[1:]])
    assert_one_line_error(code, err, *fragments)
    assert not out and not list(tmp_path.iterdir())


def test_help_of_factor_options():
    _, out, _ = run_main(["plot", "--help"])
    assert "--factor" in out
    _, out, _ = run_main(["predict", "--help"])
    assert "--re-form" in out and "--no-group-effects" in out
