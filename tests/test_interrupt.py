"""Interruption, checkpoints and resume: an interrupted-then-resumed run equals an
uninterrupted one with the same seed, in Python and from the command line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import multilevel
from kerneltools import OnSweep
from multilevel.run import run_chains

FORMULA = "mAch ~ ses + (ses | school)"
CLI = str(Path(sys.executable).with_name("multilevel"))


def interrupt_at(kernel: Any, calls: int) -> OnSweep:
    """``kernel`` whose ``calls``-th sweep raises KeyboardInterrupt, as Ctrl-C would."""

    def hook(n: int) -> None:
        if n == calls:
            raise KeyboardInterrupt

    return OnSweep(kernel, hook)


@pytest.fixture(scope="module")
def model():
    return multilevel.Model(FORMULA, "hsb82")


def test_interrupted_run_keeps_draws_up_to_last_block_and_resumes_exactly(model):
    full = run_chains(model.kernel, chains=2, draws=60, warmup=40, seed=7, cores=1, progress=False)
    part = run_chains(interrupt_at(model.kernel, 135), chains=2, draws=60, warmup=40, seed=7, cores=1,
                      progress=False, checkpoint=10)
    assert part.interrupted and not part.complete
    # blocks of 10 sweeps run chain 0 then chain 1: the 135th sweep is in chain 0's 7th
    # block, so both chains are kept up to sweep 60, 20 draws after the 40 warm-up sweeps
    assert part.chains[0].iteration == part.chains[1].iteration == 60
    assert part.n_draws == 20
    resumed = run_chains(model.kernel, chains=2, draws=60, warmup=40, seed=None, cores=1, progress=False, resume=part)
    for key in full.draws:
        np.testing.assert_array_equal(resumed.draws[key], full.draws[key])


def test_fit_interrupted_after_warmup_gives_partial_fit_with_warning(model, tmp_path):
    fit_full = model.fit(chains=2, draws=50, warmup=20, seed=3, cores=1, progress=False)
    model_kernel = model.kernel
    try:
        model.kernel = interrupt_at(model_kernel, 100)  # of 2 x 70 sweeps, in blocks of 4
        with pytest.warns(UserWarning, match="interrupted"):
            part = model.fit(chains=2, draws=50, warmup=20, seed=3, cores=1, progress=False)
    finally:
        model.kernel = model_kernel
    n = part.posterior.sizes["draw"]
    assert 0 < n < 50 and part.attrs["complete"] == 0
    path = tmp_path / "part.nc"
    part.save(path)
    resumed = multilevel.resume(path, progress=False, cores=1)
    assert resumed.posterior.sizes["draw"] == 50 and resumed.attrs["complete"] == 1
    for var in ("theta", "Sigma", "sigma2", "beta"):
        np.testing.assert_array_equal(resumed.posterior[var].values, fit_full.posterior[var].values)


def test_resume_adds_draws_equal_to_a_longer_run(model):
    short = model.fit(chains=2, draws=30, warmup=20, seed=11, cores=2, progress=False)
    longer = multilevel.resume(short, draws=20, progress=False, cores=1)
    direct = model.fit(chains=2, draws=50, warmup=20, seed=11, cores=1, progress=False)
    np.testing.assert_array_equal(longer.posterior["beta"].values, direct.posterior["beta"].values)
    with pytest.raises(multilevel.ModelError, match="already has"):
        multilevel.resume(direct, progress=False)


def test_glm_resume_is_exact():
    m = multilevel.Model("p(incidence, size) ~ period + (1 | herd)", "cbpp", family="binomial")
    full = m.fit(chains=2, draws=40, warmup=30, seed=2, cores=1, progress=False)
    half = m.fit(chains=2, draws=15, warmup=30, seed=2, cores=1, progress=False)
    rest = multilevel.resume(half, draws=25, progress=False, cores=2)
    for var in ("theta", "Sigma", "beta", "alpha"):
        np.testing.assert_array_equal(rest.posterior[var].values, full.posterior[var].values)


def test_checkpoint_files_are_written_atomically(model, tmp_path):
    path = tmp_path / "cp.nc"
    fit = model.fit(chains=2, draws=40, warmup=10, seed=1, cores=1, progress=False, checkpoint=10, checkpoint_path=path)
    assert path.exists()
    saved = multilevel.load(path)
    assert 0 < saved.posterior.sizes["draw"] < 40
    np.testing.assert_array_equal(saved.posterior["theta"].values, fit.posterior["theta"].values[:, : saved.posterior.sizes["draw"]])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_sigint_saves_partial_fit_and_resume_completes(tmp_path):
    out = tmp_path / "fit.nc"
    cmd = [CLI, "fit", "hsb82", "--formula", FORMULA, "--chains", "2", "--draws", "20000", "--warmup", "100",
           "--seed", "5", "--out", str(out), "--checkpoint", "200", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert out.exists(), "no checkpoint was written"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    partial = multilevel.load(out)
    n = partial.posterior.sizes["draw"]
    assert 0 < n < 20000 and partial.attrs["complete"] == 0
    # resume to a short total: finish with --draws relative to the planned run is long, so
    # compare the saved draws with an uninterrupted run of the same length instead
    direct = multilevel.fit(FORMULA, "hsb82", chains=2, draws=n, warmup=100, seed=5, cores=1, progress=False)
    np.testing.assert_array_equal(partial.posterior["beta"].values, direct.posterior["beta"].values)
    more = subprocess.run([CLI, "resume", str(out), "--draws", "10", "--out", str(tmp_path / "more.nc"),
                           "--no-progress"], capture_output=True, text=True, timeout=120, check=False)
    # the run was planned for 20000 draws: resume finishes it and adds 10
    assert more.returncode == 0, more.stderr
    finished = multilevel.load(tmp_path / "more.nc")
    assert finished.posterior.sizes["draw"] == 20010
