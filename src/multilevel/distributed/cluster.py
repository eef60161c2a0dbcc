"""The Dask cluster a command runs on: a scheduler's address, or a local cluster of worker
processes started for the command and closed after it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ..errors import ModelError


def parse_memory(size: str | None) -> int | None:
    """Bytes of a memory size such as ``600MB``, ``2GiB`` or ``1e9`` (None: Dask's default)."""
    if size is None:
        return None
    from dask.utils import parse_bytes

    try:
        value = parse_bytes(size)
    except (ValueError, TypeError):
        raise ModelError(f"--worker-memory must be a size such as 600MB or 2GiB, not {size!r}") from None
    if value <= 0:
        raise ModelError(f"--worker-memory must be positive, not {size!r}")
    return int(value)


#: a local cluster's housekeeping, slowed: by default its processes wake every 20 ms to check
#: their event loops (a tick), twice a second to record system metrics, and its workers sample
#: their threads' stacks every 10 ms for the dashboard (which nobody sees here). Idle, that took
#: about 0.2 s of CPU a second over the scheduler, nannies and two workers, taken from the
#: workers' sweeps; slowed, a quarter of that (memory monitoring unchanged).
QUIET = {"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "5s",
         "distributed.worker.profile.enabled": False}


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                worker_memory: str | None = None) -> Iterator[Any]:
    """A distributed client, the default scheduler inside the block: connected to ``scheduler``,
    or to a local cluster of ``workers`` single-threaded processes (default 2) with
    ``worker_memory`` each, started here and closed on leaving (housekeeping slowed: :data:`QUIET`)."""
    from distributed import Client, LocalCluster

    if scheduler is not None and (workers is not None or worker_memory is not None):
        raise ModelError("--workers and --worker-memory start a local cluster; with --scheduler the cluster's "
                         "own workers are used: leave them out")
    if workers is not None and workers < 1:
        raise ModelError(f"--workers must be a positive integer, got {workers}")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ModelError(f"cannot reach the Dask scheduler at {scheduler!r}: {exc}; check the address "
                             "(tcp://host:8786)") from None
        with client:
            yield client
        return
    import dask

    memory = parse_memory(worker_memory)
    with contextlib.ExitStack() as opened:  # the client closed before its cluster
        with dask.config.set(QUIET):
            cluster = opened.enter_context(LocalCluster(
                n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=None,
                memory_limit=memory if memory is not None else "auto", silence_logs=logging.ERROR))
            client = opened.enter_context(Client(cluster))
        yield client


__all__ = ["QUIET", "dask_client", "parse_memory"]
