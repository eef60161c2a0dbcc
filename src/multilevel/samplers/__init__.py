"""Sampling kernels: pure ``step(state, rng) -> state`` transitions over explicit states."""
