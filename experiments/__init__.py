"""Runnable experiments and benchmarks for drd-jax."""
