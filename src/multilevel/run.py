"""The driver that runs chains: seeding, worker processes, progress, interruption, checkpoints.

Every chain gets its own ``numpy.random.Generator`` from one ``SeedSequence(seed)``
spawned into ``chains`` children, so chain c draws the same numbers whether it runs in
the calling process or in any worker: the same seed gives identical draws for any
number of processes.

A kernel is any object with ``init(rng) -> state``, ``step(state, rng) -> state`` and
``record(state) -> dict[str, ndarray]`` (what to keep of each draw); a kernel that
adapts during warm-up also has ``warmup_step(state, rng, i, n_warmup) -> state``, used for
the warm-up sweeps only, so the kept draws come from the fixed kernel ``step``.

Chains advance in lockstep blocks of sweeps. After each block every chain's state and
generator are known at the same sweep, so a checkpoint can be written there, and an
interruption (Ctrl-C) keeps everything up to the last completed block: a resumed run
continues from exactly that state and gives the draws of an uninterrupted run.
Block boundaries never change the draws.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np


class Kernel(Protocol):
    def init(self, rng: np.random.Generator) -> Any: ...

    def step(self, state: Any, rng: np.random.Generator) -> Any: ...

    def record(self, state: Any) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Recording:
    """``kernel`` whose kept draws leave out the variables ``leave_out`` (the per-group draws
    of a large model, say); everything else is the kernel's own."""

    kernel: Any
    leave_out: frozenset

    def record(self, state: Any) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.kernel.record(state).items() if k not in self.leave_out}

    def __getattr__(self, name: str) -> Any:
        if name in ("kernel", "leave_out") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.kernel, name)


@dataclass
class ChainState:
    """What a chain needs to go on: kernel state, generator, and sweeps done (warm-up included)."""

    state: Any
    rng: np.random.Generator
    iteration: int = 0


@dataclass
class ChainDraws:
    """Draws of all chains (each value has shape (chains, draws, ...)) and where they stopped."""

    draws: dict[str, np.ndarray]
    seed_entropy: int
    sampling_seconds: float
    chains: list[ChainState] = field(default_factory=list)
    warmup: int = 0
    target_draws: int = 0
    interrupted: bool = False
    error: str | None = None

    @property
    def n_draws(self) -> int:
        return next(iter(self.draws.values())).shape[1] if self.draws else 0

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.error is None and self.n_draws >= self.target_draws


def chain_rngs(seed: int | None, chains: int) -> tuple[int, list[np.random.Generator]]:
    """One Generator per chain, spawned from ``SeedSequence(seed)``; returns (entropy, rngs)."""
    ss = np.random.SeedSequence(seed)
    return int(ss.entropy), [np.random.Generator(np.random.PCG64(child)) for child in ss.spawn(chains)]


class Stopped(Exception):
    """Raised inside a block when the run is asked to stop."""


def advance(kernel: Kernel, chain: ChainState, warmup: int, n: int, report: Callable[[int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> tuple[dict[str, np.ndarray], ChainState]:
    """Run ``n`` sweeps of one chain from ``chain`` (which is not modified).

    Sweeps with index < ``warmup`` are warm-up (adapting kernels adapt, nothing is kept).
    Returns the kept records, stacked, and the chain's new state. ``report(k)`` is called
    now and then with the sweeps done since its last call; ``should_stop()`` is checked at
    the same times and raises :class:`Stopped` when true.
    """
    rng = copy.deepcopy(chain.rng)
    state = chain.state
    adapt = getattr(kernel, "warmup_step", None)
    kept: dict[str, np.ndarray] = {}
    start = chain.iteration
    n_kept = max(0, start + n - max(warmup, start))
    last, done = time.monotonic(), 0
    for k in range(n):
        i = start + k
        if i < warmup and adapt is not None:
            state = adapt(state, rng, i, warmup)
        else:
            state = kernel.step(state, rng)
        if i >= warmup:
            rec = kernel.record(state)
            if not kept:
                kept = {key: np.empty((n_kept, *np.shape(v)), dtype=np.asarray(v).dtype) for key, v in rec.items()}
            row = i - max(warmup, start)
            for key, v in rec.items():
                kept[key][row] = v
        now = time.monotonic()
        if now - last > 0.1:
            if report is not None:
                report(k + 1 - done)
            done, last = k + 1, now
            if should_stop is not None and should_stop():
                raise Stopped
    if report is not None and n > done:
        report(n - done)
    check_finite(state)
    return kept, ChainState(state, rng, start + n)


def check_finite(state: Any) -> None:
    """Raise FloatingPointError naming the parameter (and group) if the state holds NaN or inf,
    so that no non-finite draw is ever kept."""
    for name in getattr(state, "_fields", ()):
        value = np.asarray(getattr(state, name))
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            where = ""
            if value.ndim >= 1:
                bad = np.argwhere(~np.isfinite(value))[0]
                where = f" (group {bad[0]})" if name == "beta" else f" (entry {tuple(int(b) for b in bad)})"
            raise FloatingPointError(f"{name}{where} became non-finite")


# -- worker processes -------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _init_worker(kernel: Kernel, queue: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    _worker.update(kernel=kernel, queue=queue, stop=stop)


def _worker_block(chain: ChainState, warmup: int, n: int) -> tuple[dict[str, np.ndarray], ChainState] | None:
    queue, stop = _worker["queue"], _worker["stop"]
    try:
        return advance(_worker["kernel"], chain, warmup, n, queue.put if queue is not None else None, stop.is_set)
    except Stopped:
        return None


def default_cores(chains: int) -> int:
    """As many processes as chains, capped by the cores this process may use."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        available = os.cpu_count() or 1
    return max(1, min(chains, available))


#: priming that takes longer than this (seconds) is compiling: a line on stderr says so
COMPILE_NOTICE_SECONDS = 1.0


def _compile_notice() -> None:
    print("compiling the sampler's code (first use only: cached on disk for later runs) ...", file=sys.stderr,
          flush=True)


def prime(kernel: Kernel, notice: bool = False, timed: int = 0) -> float:
    """Run one throwaway sweep (warm-up and kept kind) so compiled code is loaded once here,
    before the workers fork, instead of once in every worker. Its own generator: the chains'
    draws do not depend on it. ``notice``: if it takes over ``COMPILE_NOTICE_SECONDS`` (the
    compiled sweeps' first use compiles them, 5 to 25 s), a line on stderr says why.
    ``timed``: then time so many more sweeps; returns the CPU seconds of one (0 if none)."""
    timer = threading.Timer(COMPILE_NOTICE_SECONDS, _compile_notice) if notice else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        rng = np.random.default_rng(0)
        state = kernel.init(rng)
        adapt = getattr(kernel, "warmup_step", None)
        if adapt is not None:
            state = adapt(state, rng, 0, 1)
        state = kernel.step(state, rng)
    finally:
        if timer is not None:
            timer.cancel()
    start = time.process_time()
    for _ in range(timed):
        state = kernel.step(state, rng)
    return (time.process_time() - start) / timed if timed else 0.0


#: when ``cores`` is not given, chains whose sweeps would take less than this many CPU seconds
#: in all run in this process: worker processes would cost more (starting them, sending their
#: draws back) than they save
SERIAL_BELOW_SECONDS = 2.0
#: sweeps timed to estimate a run's cost
TIMED_SWEEPS = 20


def _context() -> Any:
    """Fork where the platform has it: workers start at once and a user's script needs no
    ``if __name__ == "__main__"`` guard; spawn elsewhere."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="sampling", unit="sweep", file=sys.stderr, leave=False,
                mininterval=0.2)


def _drain(queue: Any, bar: Any) -> None:
    import queue as queue_mod

    if queue is None or bar is None:
        return
    try:
        while True:
            bar.update(queue.get_nowait())
    except queue_mod.Empty:
        pass


def block_size(total: int, checkpoint: int | None) -> int:
    """Sweeps per lockstep block: the checkpoint interval, else a twentieth of the run."""
    if checkpoint:
        return max(1, int(checkpoint))
    return max(1, -(-total // 20))


class _Blocks:
    """Runs one lockstep block of all chains, in this process or in worker processes."""

    def __init__(self, kernel: Kernel, cores: int, bar: Any):
        self.kernel, self.cores, self.bar = kernel, cores, bar
        self.pool = self.queue = self.stop = None
        if cores > 1:
            ctx = _context()
            self.queue = ctx.Queue() if bar is not None else None
            self.stop = ctx.Event()
            self.pool = ProcessPoolExecutor(max_workers=cores, mp_context=ctx, initializer=_init_worker,
                                            initargs=(kernel, self.queue, self.stop))

    def run(self, chains: list[ChainState], warmup: int, n: int) -> list[tuple[dict[str, np.ndarray], ChainState]]:
        if self.pool is None:
            report = self.bar.update if self.bar is not None else None
            return [advance(self.kernel, c, warmup, n, report) for c in chains]
        futures = [self.pool.submit(_worker_block, c, warmup, n) for c in chains]
        try:
            while True:
                done, pending = wait(futures, timeout=0.1, return_when=FIRST_EXCEPTION)
                _drain(self.queue, self.bar)
                if not pending or any(f.exception() for f in done):
                    break
        except KeyboardInterrupt:
            self.stop.set()
            wait(futures, timeout=5)
            raise
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            raise failed[0]
        results = [f.result() for f in futures]
        if any(r is None for r in results):
            raise KeyboardInterrupt
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def run_chains(
    kernel: Kernel,
    *,
    chains: int,
    draws: int,
    warmup: int,
    seed: int | None,
    cores: int | None = None,
    progress: bool = True,
    checkpoint: int | None = None,
    on_checkpoint: Callable[[ChainDraws], None] | None = None,
    resume: ChainDraws | None = None,
) -> ChainDraws:
    """Run ``chains`` chains of ``kernel`` for ``warmup`` + ``draws`` sweeps each.

    ``cores`` worker processes (1: in this process; always so for a kernel that is
    ``in_process``, whose chains keep part of their state outside it). Every ``checkpoint`` sweeps,
    ``on_checkpoint`` receives the draws so far. ``resume`` continues an earlier result
    (its chains' states and draws) up to ``draws`` kept draws in all. Ctrl-C stops the
    chains at the last completed block and returns what was drawn, ``interrupted=True``.
    """
    if resume is not None:
        entropy, states = resume.seed_entropy, list(resume.chains)
        chains, warmup = len(states), resume.warmup
        pieces = [[{k: v[c] for k, v in resume.draws.items()}] if resume.draws else [] for c in range(chains)]
        elapsed_before = resume.sampling_seconds
    else:
        entropy, rngs = chain_rngs(seed, chains)
        states = [ChainState(kernel.init(rng), rng, 0) for rng in rngs]
        pieces = [[] for _ in range(chains)]
        elapsed_before = 0.0
    total = warmup + draws
    done = states[0].iteration
    size = block_size(total, checkpoint)
    shown = progress and sys.stderr.isatty()
    primed = False
    if getattr(kernel, "in_process", False):  # its chains' state is not all in the state: one process, not primed
        cores, primed = 1, True
    if cores is None:
        cores = default_cores(chains)
        if cores > 1:  # small runs stay in this process (SERIAL_BELOW_SECONDS)
            per_sweep, primed = prime(kernel, notice=shown, timed=TIMED_SWEEPS), True
            if per_sweep * chains * (total - done) < SERIAL_BELOW_SECONDS:
                cores = 1
    cores = max(1, min(cores, chains))
    if not primed and (cores > 1 or shown):  # before the workers fork; so that a first-use compile is said
        prime(kernel, notice=shown)
    bar = _progress_bar(chains * total, chains * done, progress)
    interrupted = False
    error = None
    start = time.perf_counter()

    def result() -> ChainDraws:
        draws_now = {}
        if pieces[0]:
            n_kept = sum(p[next(iter(p))].shape[0] for p in pieces[0])
            for k, first in pieces[0][0].items():  # one copy into the result (no stacked temporaries)
                out = np.empty((len(pieces), n_kept, *first.shape[1:]), dtype=first.dtype)
                for c, chain_pieces in enumerate(pieces):
                    np.concatenate([p[k] for p in chain_pieces], out=out[c])
                draws_now[k] = out
        return ChainDraws(draws_now, entropy, elapsed_before + time.perf_counter() - start, list(states), warmup,
                          draws, interrupted, error)

    blocks = _Blocks(kernel, cores, bar)
    try:
        while done < total:
            n = min(size - done % size, total - done)
            out = blocks.run(states, warmup, n)
            for c, (kept, new_state) in enumerate(out):
                if kept:
                    pieces[c].append(kept)
                states[c] = new_state
            done += n
            if checkpoint and on_checkpoint is not None and warmup < done < total and done % checkpoint == 0:
                on_checkpoint(result())
    except KeyboardInterrupt:
        interrupted = True
    except FloatingPointError as exc:
        error = f"numerical failure after {done} sweeps: {exc}"
    finally:
        blocks.close()
        if bar is not None:
            bar.close()
    return result()
