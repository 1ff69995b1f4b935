"""Benchmarks and their harness (`moodwatch bench` runs throughput.py); run from a clone."""
