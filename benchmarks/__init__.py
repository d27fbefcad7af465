"""Measured comparisons behind every performance claim; `make bench` runs them (`python -m benchmarks`)."""
