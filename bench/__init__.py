"""Benchmarks: `python -m bench.<name>` runs one and prints a table; `python -m bench` runs all."""
