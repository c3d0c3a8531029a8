"""Benchmarks: `python -m benchmarks.<area>` writes benchmarks/results/<area>.md; `make bench` runs them."""
