r"""Random numbers keyed by (chain, sweep, level) rather than drawn in sequence.

A sampler whose levels are spread over workers (:mod:`multilevel.samplers.sharded`) must give
each level the same random numbers wherever it lives, so that the same seed gives the same
draws for any number of workers or shards. A counter-based generator does that: Philox4x64
(Salmon et al. 2011) maps (key, counter) to four 64-bit words, so the numbers of level j in
sweep s are those of counter (j B, 0, s, stream) under the chain's key, B = ceil(k / 4) blocks
for k numbers a level, reachable by :meth:`numpy.random.Philox.advance` without drawing the
levels before it. A 64-bit word w becomes the uniform u = (floor(w / 2^11) + 1/2) 2^-53 in (0, 1)
and a standard normal Phi^-1(u) (exact inversion: a fixed number of words per number, unlike
the ziggurat).

Streams: the sharded factor's levels take stream :data:`LEVEL_STREAM`; with several factors,
factor k's levels (k in formula order) take stream :func:`factor_stream` (k), so that a level's
numbers are those of (chain, sweep, factor, level) whoever draws them.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

#: streams of one sweep: the sharded factor's levels' proposals and acceptance tests
LEVEL_STREAM = 0


def factor_stream(k: int) -> int:
    """The stream of factor k's levels (k in formula order) when it is not the sharded one."""
    return 1 + int(k)


def chain_key(rng: np.random.Generator) -> np.ndarray:
    """A chain's Philox key (two 64-bit words), drawn from the chain's own generator."""
    return rng.integers(0, 2**63, size=2, dtype=np.uint64)


def level_uniforms(key: np.ndarray, sweep: int, stream: int, lo: int, hi: int, k: int) -> np.ndarray:
    """(hi - lo, k) uniforms in (0, 1): k numbers for each level j in [lo, hi) of sweep ``sweep``,
    the same whichever range they are drawn in."""
    blocks = -(-k // 4)
    gen = np.random.Philox(key=np.asarray(key, dtype=np.uint64),
                           counter=np.array([0, 0, sweep, stream], dtype=np.uint64))
    gen.advance(lo * blocks)
    raw = gen.random_raw((hi - lo) * blocks * 4).reshape(hi - lo, blocks * 4)[:, :k]
    return ((raw >> np.uint64(11)).astype(float) + 0.5) * 2.0**-53


def level_draws(key: np.ndarray, sweep: int, lo: int, hi: int, q: int, stream: int = LEVEL_STREAM
                ) -> tuple[np.ndarray, np.ndarray]:
    """(z (hi - lo, q) standard normals, u (hi - lo,) uniforms) of levels [lo, hi) in ``sweep``
    (of ``stream``): a level's proposal noise and acceptance test."""
    u = level_uniforms(key, sweep, stream, lo, hi, q + 1)
    return np.ascontiguousarray(ndtri(u[:, :q])), np.ascontiguousarray(u[:, q])


__all__ = ["chain_key", "factor_stream", "level_draws", "level_uniforms"]
