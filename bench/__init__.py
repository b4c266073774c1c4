"""PlayVault benchmarks: `make bench` (python -m bench). See BENCHMARKS.md."""
