"""Benchmarks of the pipeline; `python -m bench [NAME …]` runs them and prints JSON."""
