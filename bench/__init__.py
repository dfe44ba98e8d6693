"""Benchmark (bench.run) and soak (bench.soak) scripts; see the README."""
