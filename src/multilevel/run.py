"""The driver that runs chains: seeding, worker processes, progress.

Every chain gets its own ``numpy.random.Generator`` from one ``SeedSequence(seed)``
spawned into ``chains`` children, so chain c draws the same numbers whether it runs in
the calling process or in any worker: the same seed gives identical draws for any
number of processes.

A kernel is any object with ``init(rng) -> state``, ``step(state, rng) -> state`` and
``record(state) -> dict[str, ndarray]`` (what to keep of each draw); a kernel that
adapts during warm-up also has ``warmup_step(state, rng, i, n_warmup) -> state``, used for
the warm-up sweeps only, so the kept draws come from the fixed kernel ``step``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Kernel(Protocol):
    def init(self, rng: np.random.Generator) -> Any: ...

    def step(self, state: Any, rng: np.random.Generator) -> Any: ...

    def record(self, state: Any) -> dict[str, np.ndarray]: ...


@dataclass
class ChainDraws:
    """Draws of all chains: each value has shape (chains, draws, ...)."""

    draws: dict[str, np.ndarray]
    seed_entropy: int
    sampling_seconds: float


_progress_queue: Any = None


def _set_queue(queue: Any) -> None:
    global _progress_queue
    _progress_queue = queue


def chain_rngs(seed: int | None, chains: int) -> tuple[int, list[np.random.Generator]]:
    """One Generator per chain, spawned from ``SeedSequence(seed)``; returns (entropy, rngs)."""
    ss = np.random.SeedSequence(seed)
    return int(ss.entropy), [np.random.Generator(np.random.PCG64(child)) for child in ss.spawn(chains)]


def run_chain(kernel: Kernel, rng: np.random.Generator, warmup: int, draws: int, report: Any = None) -> dict[str, np.ndarray]:
    """Run one chain: ``warmup`` sweeps discarded, then ``draws`` recorded sweeps.

    ``report(n)`` is called now and then with the number of sweeps done since the last call.
    """
    state = kernel.init(rng)
    out: dict[str, np.ndarray] = {}
    last, done, total = time.monotonic(), 0, warmup + draws
    adapt = getattr(kernel, "warmup_step", None)
    for i in range(total):
        if i < warmup and adapt is not None:
            state = adapt(state, rng, i, warmup)
        else:
            state = kernel.step(state, rng)
        if i >= warmup:
            rec = kernel.record(state)
            if not out:
                out = {k: np.empty((draws, *np.shape(v)), dtype=np.asarray(v).dtype) for k, v in rec.items()}
            for k, v in rec.items():
                out[k][i - warmup] = v
        if report is not None:
            now = time.monotonic()
            if now - last > 0.1 or i == total - 1:
                report(i + 1 - done)
                done, last = i + 1, now
    return out


def _worker(kernel: Kernel, rng: np.random.Generator, warmup: int, draws: int) -> dict[str, np.ndarray]:
    queue = _progress_queue
    return run_chain(kernel, rng, warmup, draws, report=queue.put if queue is not None else None)


def default_cores(chains: int) -> int:
    """As many processes as chains, capped by the cores this process may use."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        available = os.cpu_count() or 1
    return max(1, min(chains, available))


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sampling", unit="sweep", file=sys.stderr, leave=False, mininterval=0.2)


def run_chains(
    kernel: Kernel,
    *,
    chains: int,
    draws: int,
    warmup: int,
    seed: int | None,
    cores: int | None = None,
    progress: bool = True,
) -> ChainDraws:
    """Run ``chains`` chains of ``kernel``, in ``cores`` worker processes (1: in this process)."""
    cores = default_cores(chains) if cores is None else max(1, min(cores, chains))
    entropy, rngs = chain_rngs(seed, chains)
    bar = _progress_bar(chains * (warmup + draws), progress)
    start = time.perf_counter()
    try:
        if cores == 1:
            report = bar.update if bar is not None else None
            results = [run_chain(kernel, rng, warmup, draws, report) for rng in rngs]
        else:
            prime(kernel)
            ctx = _context()
            queue = ctx.Queue() if bar is not None else None
            with ProcessPoolExecutor(max_workers=cores, mp_context=ctx, initializer=_set_queue, initargs=(queue,)) as pool:
                futures = [pool.submit(_worker, kernel, rng, warmup, draws) for rng in rngs]
                while not all(f.done() for f in futures):
                    _drain(queue, bar, timeout=0.1)
                results = [f.result() for f in futures]
                _drain(queue, bar, timeout=0.0)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    stacked = {k: np.stack([r[k] for r in results]) for k in results[0]}
    return ChainDraws(stacked, entropy, elapsed)


def prime(kernel: Kernel) -> None:
    """Run one throwaway sweep (warm-up and kept kind) so compiled code is loaded once here,
    before the workers fork, instead of once in every worker."""
    rng = np.random.default_rng(0)
    state = kernel.init(rng)
    adapt = getattr(kernel, "warmup_step", None)
    if adapt is not None:
        state = adapt(state, rng, 0, 1)
    kernel.step(state, rng)


def _context() -> Any:
    """Fork where the platform has it: workers start at once and a user's script needs no
    ``if __name__ == "__main__"`` guard; spawn elsewhere."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _drain(queue: Any, bar: Any, timeout: float) -> None:
    if queue is None:
        time.sleep(timeout)
        return
    import queue as queue_mod

    try:
        bar.update(queue.get(timeout=timeout) if timeout else queue.get_nowait())
        while True:
            bar.update(queue.get_nowait())
    except queue_mod.Empty:
        pass
