"""Shared helpers of the benchmark suite: timing, machine facts, simulated data, results.

A benchmark is a function ``bench(quick: bool) -> Result``. The ``Result`` holds
formatted tables for the report, the targets it checks, and the raw numbers (``data``)
for ``--json``. Benchmarks of other samplers (GLMs, PyMC, NumPyro) are added beside
``gaussian.py`` in the same form and registered in ``run.py``.

The machine is shared and noisy, so every time is the median of several repeats, and
figures that are compared with each other (a ratio) are measured in one run, with their
repeats interleaved so that a burst of load hits all of them alike.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- results


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Target:
    """A target of the issue: ``met`` is True/False, or None when not assessed (``--quick``)."""

    target: str
    measured: str
    met: bool | None


@dataclass
class Result:
    name: str
    title: str
    about: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    load: tuple[float, float] = (float("nan"), float("nan"))  # 1-min load average before / after
    date: str = ""  # when it ran (UTC), and the command that ran it
    command: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Result":
        """A Result from ``dataclasses.asdict`` (as kept in the JSON report)."""
        d = dict(d)
        d["tables"] = [Table(**t) for t in d.get("tables", [])]
        d["targets"] = [Target(**t) for t in d.get("targets", [])]
        d["load"] = tuple(d.get("load", (float("nan"), float("nan"))))
        return cls(**d)


def assess(ok: bool, quick: bool) -> bool | None:
    """A target is assessed only in a full run; ``--quick`` sizes are not the target's."""
    return None if quick else bool(ok)


# --------------------------------------------------------------------------- formatting


def fmt_time(seconds: float) -> str:
    """Seconds in the most readable unit, 3 significant digits."""
    if seconds != seconds:  # nan
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_num(x: float, digits: int = 3) -> str:
    if x != x:
        return "n/a"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_bytes(n: float) -> str:
    """Bytes in KB/MB/GB (powers of 1024), at most 3 significant digits: '39.6 MB', '1.01 GB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} GB"


def fmt_count(n: int) -> str:
    """1e4 -> '10,000'."""
    return f"{int(n):,}"


# --------------------------------------------------------------------------- timing


def time_block(fn: Callable[[], Any], number: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of ``fn`` over one block of ``number`` back-to-back calls.

    CPU time is this process's (all its threads), so it excludes the time other processes
    on a shared machine take from it; wall time includes it.
    """
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number, (time.process_time() - c0) / number


def calibrate(fn: Callable[[], Any], block_seconds: float = 0.05, max_number: int = 100_000) -> int:
    """How many calls of ``fn`` make a block of about ``block_seconds``."""
    number = 1
    while True:
        t = time_block(fn, number)[0] * number
        if t >= block_seconds / 4 or number >= max_number:
            break
        number *= 4
    per_call = max(t / number, 1e-9)
    return int(min(max_number, max(1, round(block_seconds / per_call))))


@dataclass
class Timing:
    """Per-call seconds over ``repeats`` blocks of ``number`` calls: wall-clock median and spread,
    and the median CPU time of the blocks."""

    median: float
    best: float
    worst: float
    cpu: float
    number: int
    repeats: int

    @property
    def spread(self) -> str:
        """Spread of the blocks relative to the median, e.g. '-3% / +12%'."""
        lo = (self.best / self.median - 1) * 100
        hi = (self.worst / self.median - 1) * 100
        return f"{lo:+.0f}% / {hi:+.0f}%"

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "best": self.best, "worst": self.worst, "cpu": self.cpu,
                "number": self.number, "repeats": self.repeats}


def _timing(samples: list[tuple[float, float]], number: int) -> Timing:
    wall = [w for w, _ in samples]
    return Timing(statistics.median(wall), min(wall), max(wall), statistics.median(c for _, c in samples), number,
                  len(samples))


def interleaved(fns: dict[Any, Callable[[], Any]], repeats: int, block_seconds: float = 0.05) -> dict[Any, Timing]:
    """Time several functions together: each repeat times one block of each, in turn.

    Interleaving makes ratios between them robust to the machine's load changing during
    the run. Each function is called once first (warm-up), then calibrated separately.
    """
    numbers = {}
    for name, fn in fns.items():
        fn()
        numbers[name] = calibrate(fn, block_seconds)
    samples: dict[Any, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_block(fn, numbers[name]))
    return {name: _timing(samples[name], numbers[name]) for name in fns}


def repeat_once(fn: Callable[[], Any], repeats: int) -> Timing:
    """Median of ``repeats`` single calls of a slow ``fn`` (no warm-up call)."""
    return _timing([time_block(fn, 1) for _ in range(repeats)], 1)


def load_average() -> float:
    """1-minute load average (runnable processes), nan where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


class Chain:
    """A Gibbs chain as a zero-argument callable: each call advances it by one sweep."""

    def __init__(self, kernel: Any, seed: int = 0):
        self.kernel = kernel
        self.rng = np.random.default_rng(seed)
        self.state = kernel.init(self.rng)

    def __call__(self) -> None:
        self.state = self.kernel.step(self.state, self.rng)

    def run(self, sweeps: int) -> None:
        step, rng, state = self.kernel.step, self.rng, self.state
        for _ in range(sweeps):
            state = step(state, rng)
        self.state = state


# --------------------------------------------------------------------------- one core


#: set by ``run.py --pin``: single-core benchmarks pin their process to one CPU
PIN = False


@contextlib.contextmanager
def one_core() -> Iterator[int | None]:
    """With ``PIN`` set, pin this process to one CPU and restore the affinity after.

    Every benchmark said to run on one core already runs in one process and one thread
    (``cores=1``; numba code is not parallel; BLAS calls on p x p matrices do not thread),
    so pinning is off by default: on a shared machine a fixed CPU may be the busy one.
    Yields the CPU used, or None. Subprocesses started inside inherit the pin.
    """
    if not PIN or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = min(before)
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        yield None
        return
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


# --------------------------------------------------------------------------- memory


def maxrss_bytes() -> int:
    """Peak resident set size of this process's address space so far (bytes).

    Linux: ``VmHWM`` of ``/proc/self/status``, which belongs to the current address space
    (``getrusage``'s ``ru_maxrss`` would carry over the parent's peak across fork + exec)
    and which :func:`reset_peak_rss` can reset. Elsewhere: ``getrusage``.
    """
    try:
        m = re.search(r"^VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        if m:
            return int(m.group(1)) * 1024
    except OSError:
        pass
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb * (1 if sys.platform == "darwin" else 1024))


def current_rss_bytes() -> int:
    try:
        m = re.search(r"^VmRSS:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- data


def simulate_gaussian(n_rows: int, n_groups: int, seed: int = 0):
    """A pandas DataFrame for ``y ~ x + z + (x | g)``: every group has at least one row,
    the rest are spread at random; intercept and slope vary by group, z is fixed-only."""
    import pandas as pd

    if n_rows < n_groups:
        raise ValueError("need at least one row per group")
    rng = np.random.default_rng(seed)
    g = np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, n_rows - n_groups)])
    rng.shuffle(g)
    x = rng.standard_normal(n_rows)
    z = rng.standard_normal(n_rows)
    b0 = 1.0 * rng.standard_normal(n_groups)
    b1 = 0.5 * rng.standard_normal(n_groups)
    y = 10.0 + b0[g] + (2.0 + b1[g]) * x + 0.3 * z + rng.standard_normal(n_rows)
    return pd.DataFrame({"y": y, "x": x, "z": z, "g": g})


GAUSSIAN_FORMULA = "y ~ x + z + (x | g)"


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else platform.machine()


def _mem_total() -> str:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return "unknown"
    m = re.search(r"^MemTotal:\s*(\d+) kB", text, re.M)
    return fmt_bytes(int(m.group(1)) * 1024) if m else "unknown"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" (src/ has uncommitted changes)" if dirty else "")


def _blas() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:
        return "unknown"


def machine_facts() -> dict[str, str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                          "NUMBA_NUM_THREADS") if k in os.environ}
    return {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "memory": _mem_total(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "numpy": f"{np.__version__} (BLAS: {_blas()})",
        "numba": _version("numba"),
        "pandas": _version("pandas"),
        "arviz": _version("arviz"),
        "formulae": _version("formulae"),
        "multilevel": f"{_version('multilevel')}, git {_git()}",
        "thread settings": ", ".join(f"{k}={v}" for k, v in threads.items()) or "none set (library defaults)",
    }


def population_ess(posterior) -> dict[str, float]:
    """Bulk ESS of every population parameter, by name: the free entries of theta, alpha,
    the unique entries of Sigma (lower triangle), sigma2 where the model has it."""
    import arviz as az

    names = [v for v in ("theta", "alpha", "Sigma", "sigma2") if v in posterior]
    ess = az.ess(posterior[names], method="bulk")
    out: dict[str, float] = {}
    for v in ("theta", "alpha"):
        if v not in ess or not ess[v].dims:
            continue
        da = ess[v]
        dim = da.dims[0]
        for i, term in enumerate(da.coords[dim].values):
            const = float(posterior[v].isel({dim: i}).std()) == 0.0  # a term with no population mean
            if not const:
                out[f"{v}[{term}]"] = float(da.isel({dim: i}))
    S = ess["Sigma"]
    d0, d1 = S.dims
    t0, t1 = list(S.coords[d0].values), list(S.coords[d1].values)
    for i, a in enumerate(t0):
        for j, b in enumerate(t1):
            if j <= i:
                out[f"Sigma[{a}, {b}]"] = float(S.isel({d0: i, d1: j}))
    if "sigma2" in ess:
        out["sigma2"] = float(ess["sigma2"])
    return out
