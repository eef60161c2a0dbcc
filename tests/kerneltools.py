"""Kernel wrappers for tests of the run driver: a hook before every sweep."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class OnSweep:
    """Wraps a kernel: ``hook(n)`` runs before its n-th sweep, warm-up or kept, counted from 1
    (``counter[0]`` holds n). Everything else is the kernel's."""

    kernel: Any
    hook: Callable[[int], None]
    counter: list = field(default_factory=lambda: [0])

    def init(self, rng):
        return self.kernel.init(rng)

    def _before(self) -> None:
        self.counter[0] += 1
        self.hook(self.counter[0])

    def step(self, state, rng):
        self._before()
        return self.kernel.step(state, rng)

    def warmup_step(self, state, rng, i, n_warmup):
        self._before()
        return self.kernel.warmup_step(state, rng, i, n_warmup)

    def record(self, state):
        return self.kernel.record(state)
