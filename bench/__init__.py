"""Benchmarks: `make bench` runs every one of them and prints their tables."""
