"""Benchmark data: ``python -m data.prepare`` builds the prepared splits the pipeline loads."""
