"""The fusedopt benchmark suite: `python -m benchmarks --help`."""
