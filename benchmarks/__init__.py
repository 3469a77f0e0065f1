"""Scripts that print numbers: `python -m benchmarks.<name>` (installed with hyperinit)."""
