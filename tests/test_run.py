"""The run driver's priming sweep: a slow first sweep (compiling) is said on stderr, a fast one
is silent, and priming never changes the chains' draws."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import multilevel
from kerneltools import OnSweep
from multilevel import run as run_module
from multilevel.run import prime, run_chains


def slow_first_sweep(kernel: Any, seconds: float) -> OnSweep:
    """``kernel`` whose first sweep ever (warm-up or kept) sleeps ``seconds``, as compiling would."""

    def hook(n: int) -> None:
        if n == 1:
            time.sleep(seconds)

    return OnSweep(kernel, hook)


def test_slow_priming_is_said_fast_priming_is_silent(monkeypatch, capsys):
    kernel = multilevel.Model("mAch ~ ses + (1 | school)", "hsb82").kernel
    monkeypatch.setattr(run_module, "COMPILE_NOTICE_SECONDS", 0.05)
    prime(slow_first_sweep(kernel, 0.5), notice=True)
    err = capsys.readouterr().err
    assert "compiling the sampler's code (first use only" in err
    prime(slow_first_sweep(kernel, 0.0), notice=True)
    prime(slow_first_sweep(kernel, 0.5), notice=False)
    time.sleep(0.1)  # a timer left running would print now
    assert capsys.readouterr().err == ""


def test_priming_does_not_change_the_draws(monkeypatch):
    """With progress shown on a terminal, one process primes too; the draws stay those of a run
    that does not."""
    kernel = multilevel.Model("mAch ~ ses + (1 | school)", "hsb82").kernel
    quiet = run_chains(kernel, chains=2, draws=20, warmup=20, seed=5, cores=1, progress=False)
    monkeypatch.setattr(run_module.sys.stderr, "isatty", lambda: True, raising=False)
    counted = slow_first_sweep(kernel, 0.0)
    shown = run_chains(counted, chains=2, draws=20, warmup=20, seed=5, cores=1,
                       progress=True)
    assert counted.counter[0] == 2 * 40 + 2  # the chains' sweeps and the priming pair (warm-up and kept)
    for name, values in quiet.draws.items():
        np.testing.assert_array_equal(values, shown.draws[name])
