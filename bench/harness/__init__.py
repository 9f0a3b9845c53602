"""What the benchmark suites share: statistics, recording, the machine, interleaving,
in-run baselines, report blocks and plots."""

from bench.harness.errors import BenchError

__all__ = ["BenchError"]
