"""Benchmark suite of ``multilevel``: ``python benchmarks/run.py --out docs/benchmarks.md`` (``make bench``)."""
