"""morphreg's benchmarks, run as modules from the repository root
(``python -m benchmarks.speed.bench_core``); see README.md."""
