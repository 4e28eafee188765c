"""Helpers that tests and benchmarks import; the pipeline never does."""
