"""Fits of data beyond one machine's memory, partition by partition on Dask.

The data path (``engine="dask"``): :mod:`.source` opens the data as a Dask DataFrame (a Dask
DataFrame given, or a file, directory or glob of Parquet or CSV files); :mod:`.plan` learns
in one pass what the formula needs from all rows (categorical levels, every grouping factor's
levels, ``center``/``scale`` constants, rows dropped for missing values) and then evaluates
the formula partition by partition exactly as on the rows in memory; :mod:`.design` sums the
model's statistics per partition and combines them in partition order (a fixed tree), so the
statistics, and so the draws, do not depend on the number of workers. The sampler then runs
on the statistics as for data in memory: a Gaussian sweep never reads rows. A GLM's rows are
shuffled once by :mod:`.shards` into shards of whole groups kept in the workers' memory (one
actor per worker), which the sharded sampler (:mod:`multilevel.samplers.sharded`) messages
twice a sweep with O(p^2) numbers each way with one grouping factor (three times for the
negative binomial, whose phi move takes a round of its own). After the fit,
:mod:`.posterior` computes the pointwise log-likelihood, PSIS-LOO and predictions of new rows
given as a Dask DataFrame partition by partition, and a saved fit keeps the coding of new data
(:func:`.design.coding_dataset`).
"""
