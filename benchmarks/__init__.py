"""Benchmarks: `make bench` runs them all (`python -m benchmarks`) and writes BENCHMARKS.md."""
