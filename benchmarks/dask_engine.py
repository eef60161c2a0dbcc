"""Data beyond memory: Gaussian fits with ``--engine dask`` as whole processes (issue 14).

* ``dask_gaussian``: ``y ~ x + (1 | g)`` on 1e8 rows and 1e6 groups written as Parquet files,
  fitted end to end by the command line on a local cluster of 2 workers: the learning pass,
  the two statistics passes and 1 chain x 1,000 sweeps, saved; wall and CPU time of the whole
  process tree, and its peak memory beside the data's size in memory;
* ``dask_memory``: a 2e7-row fit of the same model read into memory (``--sampler blocked``,
  the sampler the Dask engine runs) and through Dask with 2 workers of 600 MB each: the peak
  memory of all processes of each;
* ``dask_poisson``: ``y ~ x + (1 | g)``, Poisson, on 1e7 rows and 1e5 groups (Parquet files)
  through Dask on local clusters of 1 and of 2 workers (the sharded sampler: the rows stay on
  the workers, each sweep two messages per worker): time per sweep (the fit's sampling time
  over its sweeps; runs alternating 1, 2, 1, 2, 1, 2 workers, the fastest of each counted), the
  whole command's wall and CPU time and peak memory; after each pair of runs, ``parallel_bound``'s
  measure, so that Dask's ratio and the machine's own are taken in the same series;
* ``dask_crossed_poisson``: ``y ~ x + (1 | g) + (1 | h)``, Poisson, 1e7 rows, g of 1e5 levels
  crossed with h of 1e3, as ``dask_poisson`` (sharded on g; two rounds a sweep);
* ``dask_messages``: the scheduling overhead of one round of messages, to actors and as tasks;
* ``parallel_bound``: what this machine's two cores give the same sampler without Dask: the
  in-memory sharded sampler on all of ``dask_poisson``'s rows in one process, against two
  processes at once, each on half the groups (no messages, no client, no scheduler): the best
  per-sweep ratio any split of the work over two workers can reach here.

Peak memory is the largest sum of the proportional set sizes of the command and all its
descendants (the Dask scheduler, nanny and worker processes), sampled every 20 ms
(:func:`benchmarks.endtoend._run`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import Result, Table, Target, assess, fmt_bytes
from benchmarks.endtoend import _cli, _run

FORMULA = "y ~ x + (1 | g)"
ROWS_PER_FILE = 1_000_000


def gaussian_response(rng: np.random.Generator, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """y = 1 + 0.5 x + u_g + e, sd(e) = 1."""
    return 1.0 + 0.5 * x + u + rng.standard_normal(x.shape[0])


def write_parquet(directory: Path, rows: int, groups: int, seed: int = 1, group_sd: float = 0.7,
                  response=gaussian_response, crossed: int = 0) -> int:
    """Simulated rows (g uniform over the groups, x standard normal, u_g ~ N(0, group_sd^2), y from
    ``response(rng, x, u_g)``; by default y = 1 + 0.5 x + u_g + e, sd(u) = 0.7, sd(e) = 1) as Parquet
    files of :data:`ROWS_PER_FILE` rows; returns the data's size in memory as a pandas frame (bytes).
    ``crossed`` > 0: also h uniform over that many levels crossed with g, its effects
    v_h ~ N(0, 0.3^2) added to u_g."""
    directory.mkdir(parents=True, exist_ok=True)
    u = group_sd * np.random.default_rng(seed).standard_normal(groups)
    v = 0.3 * np.random.default_rng([seed, 1 << 20]).standard_normal(max(crossed, 1))
    size = 0
    for i, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        rng = np.random.default_rng([seed, i])
        g = rng.integers(0, groups, n)
        x = rng.standard_normal(n)
        h = rng.integers(0, crossed, n) if crossed else None
        frame = pd.DataFrame({"g": g, "x": x, "y": response(rng, x, u[g] if h is None else u[g] + v[h])})
        if crossed:
            frame["h"] = h
        frame.to_parquet(directory / f"part-{i:05d}.parquet", index=False)
        size += int(frame.memory_usage(index=False).sum())
    return size


def _fit(data: Path, out: Path, sweeps: int, engine: list[str]) -> dict:
    cmd = [*_cli(), "fit", str(data), "-f", FORMULA, "--chains", "1", "--warmup", str(sweeps // 2), "--draws",
           str(sweeps - sweeps // 2), "--seed", "1", "--cores", "1", "--no-group-draws", "--no-progress",
           "--out", str(out), "--overwrite", *engine]
    return _run(cmd, cwd=str(out.parent))


def _sigma2(stdout: str) -> str:
    line = next((s for s in stdout.splitlines() if s.startswith("sigma2")), "")
    return line.split()[1] if line else "?"


def bench_dask_gaussian(quick: bool = False) -> Result:
    """1e8 rows, 1e6 groups, Parquet, engine dask on 2 local workers, 1 chain x 1000 sweeps."""
    rows, groups = (2_000_000, 20_000) if quick else (100_000_000, 1_000_000)
    res = Result(
        "dask_gaussian", "A 1e8-row, 1e6-group Gaussian fit through Dask",
        f"`multilevel fit DIR -f '{FORMULA}' --engine dask --workers 2 --chains 1 --warmup 500 --draws 500 "
        f"--no-group-draws --out fit.nc` on {rows:,} simulated rows in {groups:,} groups, written as "
        f"{-(-rows // ROWS_PER_FILE)} Parquet files of {ROWS_PER_FILE:,} rows. Wall and CPU time of the whole "
        "command (its workers included) from start to the saved file; peak memory of all its processes together "
        "(PSS). The per-group draws are left out: 1 chain x 1000 draws x 1e6 groups would be 8 GB.")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        in_memory = write_parquet(data, rows, groups)
        on_disk = sum(f.stat().st_size for f in data.iterdir())
        r = _fit(data, Path(tmp) / "fit.nc", 1000, ["--engine", "dask", "--workers", "2"])
    res.tables.append(Table(
        ["rows", "groups", "data in memory (pandas)", "Parquet on disk", "wall", "CPU (all processes)",
         "peak memory (all processes, PSS)", "sigma2 (true 1)"],
        [[f"{rows:,}", f"{groups:,}", fmt_bytes(in_memory), fmt_bytes(on_disk), f"**{r['wall']:.0f} s**",
          f"{r['cpu']:.0f} s", f"**{fmt_bytes(r['maxrss'])}**", _sigma2(r["stdout"])]]))
    res.targets.append(Target("1e8 rows / 1e6 groups end to end under 10 minutes", f"{r['wall']:.0f} s",
                              assess(r["wall"] < 600, quick)))
    res.targets.append(Target("its peak memory of all processes under 4 GB", fmt_bytes(r["maxrss"]),
                              assess(r["maxrss"] < 4e9, quick)))
    res.data = {"rows": rows, "groups": groups, "in_memory": in_memory, "on_disk": on_disk,
                **{k: v for k, v in r.items() if k != "stdout"}}
    return res


def bench_dask_memory(quick: bool = False) -> Result:
    """2e7 rows read into memory vs through Dask with 2 workers of 600 MB: peak memory."""
    rows, groups = (2_000_000, 10_000) if quick else (20_000_000, 100_000)
    res = Result(
        "dask_memory", "Peak memory of a 2e7-row fit: in memory and through Dask",
        f"The same data ({rows:,} rows, {groups:,} groups, Parquet files) and command "
        f"(`multilevel fit DIR -f '{FORMULA}' --chains 1 --warmup 500 --draws 500 --no-group-draws`), once read "
        "into memory (`--sampler blocked`, the sampler the Dask engine runs on one term) and once with `--engine "
        "dask --workers 2 --worker-memory 600MB`; peak memory of all processes together (PSS).")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        in_memory = write_parquet(data, rows, groups)
        out["pandas"] = _fit(data, Path(tmp) / "a.nc", 1000, ["--sampler", "blocked"])
        out["dask"] = _fit(data, Path(tmp) / "b.nc", 1000, ["--engine", "dask", "--workers", "2",
                                                            "--worker-memory", "600MB"])
    res.tables.append(Table(
        ["engine", "wall", "CPU (all processes)", "peak memory (all processes, PSS)", "sigma2"],
        [[k, f"{r['wall']:.0f} s", f"{r['cpu']:.0f} s", f"**{fmt_bytes(r['maxrss'])}**", _sigma2(r["stdout"])]
         for k, r in out.items()],
        caption=f"The data take {fmt_bytes(in_memory)} as a pandas DataFrame."))
    ratio = out["dask"]["maxrss"] / out["pandas"]["maxrss"]
    res.targets.append(Target("Dask with 2 workers of 600 MB peaks under half the in-memory fit's memory",
                              f"{ratio:.2f} of it", assess(ratio < 0.5, quick)))
    res.data = {k: {x: y for x, y in r.items() if x != "stdout"} for k, r in out.items()}
    res.data["in_memory"] = in_memory
    return res


POISSON_FORMULA = "y ~ x + (1 | g)"


def poisson_response(rng: np.random.Generator, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """y ~ Poisson(exp(0.5 + 0.3 x + u_g))."""
    return rng.poisson(np.exp(0.5 + 0.3 * x + u))


class _Echo:
    """An actor that answers at once (:func:`message_overhead`)."""

    def call(self, name: str, args: tuple) -> list:
        return [args]


def _echo(args: tuple) -> list:
    return [args]


def message_overhead(workers: int, rounds: int = 200) -> dict[str, float]:
    """Milliseconds of one round of messages to every worker of a local cluster and back, with
    a small payload (a sweep sends two): to long-lived actors, and as a task submitted per
    worker and gathered (a task graph per sweep)."""
    import time

    from distributed import Client, LocalCluster

    payload = (np.zeros(4), np.zeros((2, 2)), 0.5)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=50) as cluster, Client(cluster) as client:
        addresses = sorted(client.scheduler_info()["workers"])
        hosts = [client.submit(_Echo, actor=True, workers=[a]).result() for a in addresses]
        for h in hosts:
            h.call("x", payload).result()
        t0 = time.perf_counter()
        for _ in range(rounds):
            for f in [h.call("x", payload) for h in hosts]:
                f.result()
        actor = (time.perf_counter() - t0) / rounds
        t0 = time.perf_counter()
        for _ in range(rounds):
            client.gather([client.submit(_echo, payload, workers=[a], pure=False) for a in addresses])
        task = (time.perf_counter() - t0) / rounds
    return {"actor_ms": 1000 * actor, "task_ms": 1000 * task}


def _dask_sweeps(tmp: str, data: Path, formula: str, sweeps: int, repeats: int = 1,
                 after_pair: Callable[[], None] | None = None) -> dict[int, dict]:
    """The command-line Poisson fit of ``formula`` through Dask on 1 and on 2 local workers,
    alternating (1, 2, 1, 2, ...) ``repeats`` times: per worker count the fastest run's wall,
    CPU and memory, time per sweep (the fit's sampling time over its sweeps) and posterior means
    of theta and alpha, and every run's time per sweep (``runs``). On a shared machine the
    fastest of alternating runs is the least disturbed measure of each. ``after_pair``: run
    after each pair of runs (a measurement interleaved with them)."""
    import multilevel

    out: dict[int, dict] = {}
    for _ in range(repeats):
        for workers in (1, 2):
            target = Path(tmp) / f"w{workers}.nc"
            cmd = [*_cli(), "fit", str(data), "-f", formula, "--family", "poisson", "--engine", "dask",
                   "--workers", str(workers), "--chains", "1", "--warmup", str(sweeps // 2), "--draws",
                   str(sweeps - sweeps // 2), "--seed", "1", "--no-group-draws", "--no-progress", "--out",
                   str(target), "--overwrite"]
            r = _run(cmd, cwd=tmp, interval=0.5)  # memory sampled every 0.5 s: the timing's CPU left to the workers
            fit = multilevel.load(target)
            r["per_sweep"] = float(fit.attrs["sampling_seconds"]) / sweeps
            r["theta"] = float(fit.posterior["theta"].mean())
            r["alpha"] = float(fit.posterior["alpha"].mean())
            runs = out.get(workers, {}).get("runs", []) + [r["per_sweep"]]
            if workers not in out or r["per_sweep"] < out[workers]["per_sweep"]:
                out[workers] = {k: v for k, v in r.items() if k != "stdout"}
            out[workers]["runs"] = runs
        if after_pair is not None:
            after_pair()
    return out


def _report_sweeps(res: Result, out: dict[int, dict], in_memory: int, quick: bool) -> None:
    """The table of :func:`_dask_sweeps`' runs and the 2-worker speed-up target, added to ``res``."""
    res.tables.append(Table(
        ["workers", "time per sweep (fastest run)", "every run", "wall (whole command)", "CPU (all processes)",
         "peak memory (all processes, PSS)", "theta (true 0.5)", "alpha[x] (true 0.3)"],
        [[str(w), f"**{1000 * r['per_sweep']:.0f} ms**", ", ".join(f"{1000 * t:.0f}" for t in r["runs"]) + " ms",
          f"{r['wall']:.0f} s", f"{r['cpu']:.0f} s", fmt_bytes(r["maxrss"]), f"{r['theta']:.3f}", f"{r['alpha']:.4f}"]
         for w, r in out.items()],
        caption=f"The data take {fmt_bytes(in_memory)} as a pandas DataFrame. Runs alternate 1 and 2 workers; "
                "the other columns are the fastest run's."))
    ratio = out[2]["per_sweep"] / out[1]["per_sweep"]
    res.targets.append(Target("per-sweep time on 2 workers at most 0.6x that on 1 worker", f"{ratio:.3f}x",
                              assess(ratio <= 0.6, quick)))


def bench_dask_poisson(quick: bool = False) -> Result:
    """1e7 rows, 1e5 groups, Poisson, engine dask on 1 and on 2 local workers: time per sweep;
    between the pairs of runs, the in-process bound of :func:`bench_parallel_bound`."""
    rows, groups, sweeps = (1_000_000, 10_000, 100) if quick else (10_000_000, 100_000, 200)
    repeats = 1 if quick else 3
    command = (f"multilevel fit DIR -f '{POISSON_FORMULA}' --family poisson --engine dask --workers W --chains 1 "
               f"--warmup {sweeps // 2} --draws {sweeps // 2} --no-group-draws --out fit.nc")
    res = Result(
        "dask_poisson", "A 1e7-row, 1e5-group Poisson fit through Dask on 1 and 2 workers",
        f"`{command}` on {rows:,} simulated rows in {groups:,} groups ({-(-rows // ROWS_PER_FILE)} Parquet files), "
        "for W = 1 and 2. The sharded sampler keeps the rows on the workers in 16 shards of whole groups, and "
        "each sweep sends two messages to each worker. Time per sweep: the fit's sampling time over "
        "its sweeps (warm-up's scale moves included). Wall and CPU time of the whole command (its workers "
        "included) and the peak memory of all its processes together (PSS, sampled every 0.5 s so that the "
        f"sampling takes no CPU the workers need). The runs alternate, {repeats} of each; the fastest of each "
        "counts. After each pair of runs, the in-process bound (`parallel_bound`'s measure: the same sampler "
        f"without Dask, {sweeps} sweeps, in one process on all rows, then in two processes at once on half the "
        "groups each), so that the machine's own two-core speed-up is measured in the same series.")
    bound: list[tuple[float, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        in_memory = write_parquet(data, rows, groups, seed=2, group_sd=0.5, response=poisson_response)
        halves = _halves(tmp, data, groups)
        out = _dask_sweeps(tmp, data, POISSON_FORMULA, sweeps, repeats=repeats,
                           after_pair=lambda: bound.append(_bound(data, halves, sweeps)))
    _report_sweeps(res, out, in_memory, quick)
    one, two = min(b[0] for b in bound), min(max(b[1]) for b in bound)
    dask_ratio, bound_ratio = out[2]["per_sweep"] / out[1]["per_sweep"], two / one
    res.tables.append(Table(
        ["after pair", "1 process (all rows)", "2 processes at once (the slower)", "ratio"],
        [[str(i + 1), f"{1000 * b[0]:.0f} ms", f"{1000 * max(b[1]):.0f} ms", f"{max(b[1]) / b[0]:.2f}"]
         for i, b in enumerate(bound)]
        + [["fastest", f"**{1000 * one:.0f} ms**", f"**{1000 * two:.0f} ms**", f"**{bound_ratio:.2f}**"]],
        caption=f"The in-process bound, interleaved with the Dask runs. Fastest against fastest: Dask's ratio "
                f"{dask_ratio:.3f}, the bound's {bound_ratio:.3f} in the same series; Dask keeps "
                f"{bound_ratio / dask_ratio:.2f} of the speed-up the machine gave without it."))
    res.data = {"rows": rows, "groups": groups, "in_memory": in_memory, "sweeps": sweeps,
                **{str(k): v for k, v in out.items()}, "bound": [{"one": b[0], "two": b[1]} for b in bound],
                "bound_ratio": bound_ratio}
    return res


CROSSED_POISSON_FORMULA = "y ~ x + (1 | g) + (1 | h)"


def bench_dask_crossed_poisson(quick: bool = False) -> Result:
    """1e7 rows, 1e5 groups of g crossed with 1e3 of h, Poisson, engine dask on 1 and on 2 local
    workers: time per sweep (2 rounds of messages, h's per-level sums in them)."""
    rows, groups, second, sweeps = (1_000_000, 10_000, 100, 100) if quick else (10_000_000, 100_000, 1_000, 200)
    command = (f"multilevel fit DIR -f '{CROSSED_POISSON_FORMULA}' --family poisson --engine dask --workers W "
               f"--chains 1 --warmup {sweeps // 2} --draws {sweeps // 2} --no-group-draws --out fit.nc")
    res = Result(
        "dask_crossed_poisson", "A 1e7-row Poisson fit of two crossed factors through Dask on 1 and 2 workers",
        f"`{command}` on {rows:,} simulated rows, g of {groups:,} levels crossed with h of {second:,} "
        f"({-(-rows // ROWS_PER_FILE)} Parquet files), for W = 1 and 2. The sharded sampler shards the rows on g "
        "(its effects stay on the workers) and keeps h's effects in the client: a sweep is two rounds of "
        "messages, carrying h's per-level sums (closed-form level moves, and the fixed move's terms) and its effects. "
        "Time per sweep and the rest as in dask_poisson; compare its per-sweep time.")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        in_memory = write_parquet(data, rows, groups, seed=2, group_sd=0.5, response=poisson_response, crossed=second)
        out = _dask_sweeps(tmp, data, CROSSED_POISSON_FORMULA, sweeps, repeats=1 if quick else 2)
    _report_sweeps(res, out, in_memory, quick)
    res.data = {"rows": rows, "groups": groups, "second": second, "in_memory": in_memory, "sweeps": sweeps,
                **{str(k): v for k, v in out.items()}}
    return res


def bench_dask_messages(quick: bool = False) -> Result:
    """Scheduling overhead of a sweep's messages: actors vs a task per worker."""
    rounds = 50 if quick else 200
    res = Result(
        "dask_messages", "Scheduling overhead of the sharded sampler's messages",
        "One round of messages to every worker of a local cluster and back with a small payload (a sweep of the "
        "sharded GLM sampler makes two rounds), sent to long-lived actors (what the sampler does) and as one "
        f"submitted task per worker gathered by the client (a task graph per sweep); means of {rounds} rounds.")
    overhead = {w: message_overhead(w, rounds) for w in (1, 2)}
    res.tables.append(Table(
        ["workers", "actor call (the sampler's)", "task submitted and gathered"],
        [[str(w), f"**{o['actor_ms']:.1f} ms**", f"{o['task_ms']:.1f} ms"] for w, o in overhead.items()]))
    res.data = {str(k): v for k, v in overhead.items()}
    return res


def _sharded_sweep_seconds(path: str, sweeps: int, shards: int) -> float:
    """Seconds per sweep of the in-memory sharded sampler in ``shards`` shards on the rows of the
    Parquet file(s) at ``path`` (run in a process of its own)."""
    import multilevel
    from multilevel.samplers import sharded

    sharded_shards = sharded.local_shards
    sharded.local_shards = lambda design, code, n_shards=1: sharded_shards(design, code, shards)
    fit = multilevel.fit(POISSON_FORMULA, pd.read_parquet(path), family="poisson", sampler="sharded", chains=1,
                         warmup=sweeps // 2, draws=sweeps - sweeps // 2, seed=1, cores=1, progress=False,
                         group_draws=False)
    return float(fit.attrs["sampling_seconds"]) / sweeps


def _halves(tmp: str, data: Path, groups: int) -> list[str]:
    """``data``'s rows split in two Parquet files by group, the first and the second half of the
    groups (as the Dask run's two workers hold them)."""
    frame = pd.read_parquet(data)
    halves = []
    for i, keep in enumerate((frame.g < groups // 2, frame.g >= groups // 2)):
        halves.append(str(Path(tmp) / f"half{i}.parquet"))
        frame.loc[keep].to_parquet(halves[-1], index=False)
    return halves


def _bound(data: Path, halves: list[str], sweeps: int) -> tuple[float, list[float]]:
    """Seconds per sweep of the in-memory sharded sampler in one process on all rows in 16 shards,
    then of two processes at once, each on one of ``halves`` in 8 shards."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        one = pool.submit(_sharded_sweep_seconds, str(data), sweeps, 16).result()
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        two = [f.result() for f in [pool.submit(_sharded_sweep_seconds, h, sweeps, 8) for h in halves]]
    return one, two


def bench_parallel_bound(quick: bool = False) -> Result:
    """The sharded sampler in one process on all rows vs two processes at once on half each."""
    rows, groups, sweeps = (1_000_000, 10_000, 60) if quick else (10_000_000, 100_000, 100)
    res = Result(
        "parallel_bound", "What two cores give the sharded sampler here, without Dask",
        f"The in-memory sharded sampler (`multilevel.fit(..., family='poisson', sampler='sharded')`, "
        f"1 chain x {sweeps} sweeps) on `dask_poisson`'s data ({rows:,} rows, {groups:,} groups): once in one "
        "process on all rows in 16 shards, then in two processes at once, each on the rows of half the groups in 8 "
        "shards (as the Dask run's two workers hold them). No messages, no "
        "client and no scheduler: the ratio of the two per-sweep times is the best that splitting the work over "
        "two workers can reach on this machine, whatever the engine. `dask_poisson` also measures it, interleaved "
        "with its Dask runs.")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_parquet(data, rows, groups, seed=2, group_sd=0.5, response=poisson_response)
        one, two = _bound(data, _halves(tmp, data, groups), sweeps)
    ratio = max(two) / one
    res.tables.append(Table(
        ["processes", "time per sweep"],
        [["1 (all rows)", f"**{1000 * one:.0f} ms**"],
         ["2 at once (half the groups each)", f"**{1000 * max(two):.0f} ms** (slower of {1000 * two[0]:.0f} and "
                                              f"{1000 * two[1]:.0f} ms)"]],
        caption=f"Ratio {ratio:.2f}; `dask_poisson` measures the same split through Dask."))
    res.data = {"rows": rows, "groups": groups, "sweeps": sweeps, "one": one, "two": two, "ratio": ratio}
    return res


NESTED_FORMULA = "y ~ x + (1 | a/b)"


def _nested_ess(df: pd.DataFrame, formula: str, joint: bool, seed: int, draws: int) -> dict[str, float]:
    """Bulk ESS a draw of each variance and the smallest of theta's and alpha's, of the in-memory
    sharded sampler (4 shards, 2 chains x (draws warm-up + draws)) with or without the nested
    variance moves (``joint``), and its CPU seconds."""
    import time

    import arviz as az

    import multilevel
    from multilevel.blockstats import factor_layout
    from multilevel.families import CODES
    from multilevel.run import run_chains
    from multilevel.samplers.sharded import ShardedMetropolis, ShardSource, factor_order, local_shards

    model = multilevel.Model(formula, df, family="poisson", sampler="sharded")
    d = model.design
    shards = local_shards(d, CODES["poisson"], 4)
    a_start = ShardSource(shards, factor_order(d)).pooled_glm(model.family)[0]
    kernel = ShardedMetropolis(shards, d, factor_layout(d, small_columns=0), model.priors, a_start, d.n_obs,
                               nested_scale_moves=joint)
    start = time.process_time()
    res = run_chains(kernel, chains=2, draws=draws, warmup=draws, seed=seed, cores=1, progress=False)
    out = {"cpu": time.process_time() - start}
    for name in kernel.sigma_names:
        out[name] = float(az.ess(np.asarray(res.draws[name]).reshape(2, draws), method="bulk")) / (2 * draws)
    fixed = np.concatenate([np.asarray(res.draws[n]).reshape(2, draws, -1) for n in ("theta", "alpha")], axis=2)
    out["min theta, alpha"] = min(float(az.ess(fixed[:, :, i], method="bulk")) for i in range(fixed.shape[2])) / (2 * draws)
    return out


def write_nested(directory: Path, outer: int, per: int, rows: int, seed: int = 1) -> int:
    """``y ~ x + (1 | a/b)`` Poisson rows as 4 Parquet files: ``per`` levels of b in each of
    ``outer`` levels of a, ``rows`` rows a level of a:b on average (levels drawn at random),
    sds 0.6 (a) and 0.4 (a:b); returns the data's size in memory (bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    u, v = 0.6 * rng.standard_normal(outer), 0.4 * rng.standard_normal(outer * per)
    size = 0
    for i in range(4):
        n = outer * per * rows // 4
        inner = rng.integers(0, outer * per, n)
        x = rng.standard_normal(n)
        frame = pd.DataFrame({"a": inner // per, "b": inner % per, "x": x,
                              "y": rng.poisson(np.exp(0.3 + 0.4 * x + u[inner // per] + v[inner]))})
        frame.to_parquet(directory / f"part-{i}.parquet", index=False)
        size += int(frame.memory_usage(index=False).sum())
    return size


def bench_dask_nested_poisson(quick: bool = False) -> Result:
    """(1 | a/b) Poisson: the nested variance moves' effective sample sizes, and a Dask fit's sweep."""
    from benchmarks.crossed_poisson import simulate_ticks

    seeds, draws = ((1,), 300) if quick else ((1, 2, 3, 4), 1000)
    outer, per, rows, sweeps = (2_000, 5, 20, 40) if quick else (20_000, 5, 20, 200)
    res = Result(
        "dask_nested_poisson", "Nested Poisson factors on the sharded sampler (the Dask engine's GLM sampler)",
        "The sharded sampler's nested variance moves (`(1 | a/b)` Poisson, both factors' intercepts alone: a random "
        "walk on each variance moving both factors' effects with it, two rounds of messages more a sweep) against "
        f"the same sampler without them (`nested_scale_moves=False`): in memory, 4 shards, 2 chains x ({draws} + "
        f"{draws}) on grouseticks-shaped data (`TICKS ~ YEAR + cHEIGHT + (1 | LOCATION/BROOD)`, 403 rows, 118 broods "
        f"in 63 locations), seeds {', '.join(map(str, seeds))}; bulk ESS a draw (mean over the seeds). Then "
        f"`multilevel fit DIR -f '{NESTED_FORMULA}' --family poisson --engine dask --workers 2 --chains 1 --warmup "
        f"{sweeps // 2} --draws {sweeps // 2} --no-group-draws` on {outer * per * rows:,} rows, {outer:,} levels of a "
        f"with {per} of b each: time per sweep, five rounds of messages, each worker answering for the levels of a "
        "its rows touch.")
    df = simulate_ticks(1)
    formula = "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION/BROOD)"
    runs = {joint: [_nested_ess(df, formula, joint, seed, draws) for seed in seeds] for joint in (False, True)}
    names = [k for k in runs[True][0] if k != "cpu"]
    mean = {joint: {k: float(np.mean([r[k] for r in rs])) for k in [*names, "cpu"]} for joint, rs in runs.items()}
    res.tables.append(Table(
        ["sampler", *[f"{n} (ESS a draw)" for n in names], "CPU a fit"],
        [[label, *[f"**{mean[joint][n]:.2f}**" for n in names], f"{mean[joint]['cpu']:.1f} s"]
         for joint, label in ((False, "without the nested variance moves"), (True, "with them (the default)"))]))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        in_memory = write_nested(data, outer, per, rows)
        target = Path(tmp) / "fit.nc"
        cmd = [*_cli(), "fit", str(data), "-f", NESTED_FORMULA, "--family", "poisson", "--engine", "dask", "--workers",
               "2", "--chains", "1", "--warmup", str(sweeps // 2), "--draws", str(sweeps - sweeps // 2), "--seed", "1",
               "--no-group-draws", "--no-progress", "--out", str(target), "--overwrite"]
        r = _run(cmd, cwd=tmp, interval=0.5)
        import multilevel

        fit = multilevel.load(target)
        per_sweep = float(fit.attrs["sampling_seconds"]) / sweeps
        sig = {n: float(fit.posterior[n].mean()) for n in ("Sigma_a", "Sigma_a:b")}
    res.tables.append(Table(
        ["rows", "levels (a, a:b)", "time per sweep (2 workers)", "wall (whole command)", "peak memory (all processes)",
         "Sigma_a (true 0.36)", "Sigma_a:b (true 0.16)"],
        [[f"{outer * per * rows:,}", f"{outer:,}, {outer * per:,}", f"**{1000 * per_sweep:.0f} ms**", f"{r['wall']:.0f} s",
          fmt_bytes(r["maxrss"]), f"{sig['Sigma_a']:.3f}", f"{sig['Sigma_a:b']:.3f}"]],
        caption=f"The data take {fmt_bytes(in_memory)} as a pandas DataFrame."))
    res.data = {"ess": {str(k): v for k, v in mean.items()}, "per_sweep": per_sweep, "rows": outer * per * rows}
    return res


BENCHMARKS = {"dask_gaussian": bench_dask_gaussian, "dask_memory": bench_dask_memory,
              "dask_poisson": bench_dask_poisson, "dask_crossed_poisson": bench_dask_crossed_poisson,
              "dask_messages": bench_dask_messages, "parallel_bound": bench_parallel_bound,
              "dask_nested_poisson": bench_dask_nested_poisson}
