"""The statistics every suite reports: percentiles, summaries, ratios of medians and
their bootstrap intervals. Pure functions of lists of floats (no engine, no I/O)."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 12345


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    xs = sorted(samples)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(samples: Sequence[float]) -> float:
    """The 50th percentile; NaN when empty."""
    return percentile(samples, 50) if samples else math.nan


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """n, p50/p95/p99, min/max, mean and the sample standard deviation (0 for one)."""
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
    }


def ratio_ci(subject: Sequence[float], baseline: Sequence[float], *,
             rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% bootstrap interval of median(subject) / median(baseline), resampling each side."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(rounds):
        s = statistics.median(rng.choices(subject, k=len(subject)))
        b = statistics.median(rng.choices(baseline, k=len(baseline)))
        ratios.append(s / b if b > 0 else math.inf)
    return percentile(ratios, 2.5), percentile(ratios, 97.5)


def delta_ci(subject: Sequence[float], baseline: Sequence[float], *,
             rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED,
             scale: float = 1000.0) -> tuple[float, float]:
    """95% bootstrap interval of median(subject) - median(baseline), times *scale*
    (seconds to milliseconds by default)."""
    rng = random.Random(seed)
    deltas = [statistics.median(rng.choices(subject, k=len(subject)))
              - statistics.median(rng.choices(baseline, k=len(baseline))) for _ in range(rounds)]
    return percentile(deltas, 2.5) * scale, percentile(deltas, 97.5) * scale


def compare(subject: Sequence[float], baseline: Sequence[float]) -> dict[str, object]:
    """Ratio of p50s with its 95% interval, and the p50 difference in milliseconds."""
    p50s, p50b = percentile(subject, 50), percentile(baseline, 50)
    return {"ratio": p50s / p50b, "ratio_ci95": list(ratio_ci(subject, baseline)),
            "delta_p50_ms": (p50s - p50b) * 1000.0}
