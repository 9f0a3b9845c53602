"""The benchmark harness's statistics and interleaving, with known inputs and outputs
(no engine)."""

from __future__ import annotations

import math
import statistics

import pytest

from bench.harness import interleave as il
from bench.harness import stats
from bench.harness.recorder import Recorder
from bench.harness.report import fmt_ms, fmt_ratio, fmt_value


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (25, 1.75), (50, 2.5), (75, 3.25),
                                             (100, 4.0), (95, 3.85)])
def test_percentile_interpolates_linearly_between_ranks(q: float, expected: float) -> None:
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_percentile_of_one_sample_and_of_none() -> None:
    assert stats.percentile([7.0], 99) == 7.0
    assert math.isnan(stats.percentile([], 50))
    assert math.isnan(stats.median([]))
    assert stats.median([3.0, 1.0, 2.0]) == 2.0


def test_summarize_known_values() -> None:
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s == {"n": 5, "p50": 3.0, "p95": pytest.approx(4.8), "p99": pytest.approx(4.96),
                 "min": 1.0, "max": 5.0, "mean": 3.0,
                 "stdev": pytest.approx(statistics.stdev([1, 2, 3, 4, 5]))}
    assert stats.summarize([2.5])["stdev"] == 0.0


def test_ratio_interval_of_identical_samples_is_a_point() -> None:
    assert stats.ratio_ci([2.0] * 10, [1.0] * 7) == (2.0, 2.0)
    assert stats.delta_ci([0.003] * 5, [0.001] * 5) == pytest.approx((2.0, 2.0))


def test_ratio_interval_holds_the_ratio_and_is_reproducible() -> None:
    subject = [1.0 + 0.01 * i for i in range(50)]
    baseline = [0.5 + 0.005 * i for i in range(50)]
    lo, hi = stats.ratio_ci(subject, baseline)
    assert lo <= 2.0 <= hi and hi - lo < 0.5
    assert stats.ratio_ci(subject, baseline) == (lo, hi)  # seeded
    assert stats.ratio_ci(subject, baseline, seed=1) != (lo, hi)


def test_compare_gives_ratio_interval_and_delta_in_ms() -> None:
    c = stats.compare([0.003, 0.003, 0.003], [0.001, 0.001, 0.001])
    assert c["ratio"] == pytest.approx(3.0)
    assert c["ratio_ci95"] == pytest.approx([3.0, 3.0])
    assert c["delta_p50_ms"] == pytest.approx(2.0)


def test_recorder_finishes_stats_and_comparisons_with_samples_only() -> None:
    r = Recorder()
    r.define("a", "g", "A")
    r.define("b", "g", "B")
    r.define("empty", "g", "E")
    r.compare("g", "a / b", "a", "b")
    r.compare("g", "a / empty", "a", "empty")
    for x in (2.0, 4.0):
        r.add("a", x)
        r.add("b", x / 2)
    r.finish()
    assert r.series["a"]["stats"]["p50"] == 3.0 and "stats" not in r.series["empty"]
    assert r.comparisons[0]["ratio"] == pytest.approx(2.0)
    assert "ratio" not in r.comparisons[1]
    r.clear()
    assert r.samples("a") == []


def test_orders() -> None:
    assert il.alternating(["x", "y"]) == [("x", "y"), ("y", "x")]
    rot = il.rotation(["f", "l", "h"])
    assert len(set(rot)) == 6 and rot[0] == ("f", "l", "h") and rot[1] == ("l", "h", "f")
    for side in "flh":  # each side first twice
        assert sum(o[0] == side for o in rot) == 2
    assert sorted(il.shuffled(["a", "b", "c"], 7)) == sorted(il.rotation(["a", "b", "c"]))
    assert il.shuffled(["a", "b", "c"], 7) == il.shuffled(["a", "b", "c"], 7)
    with pytest.raises(ValueError):
        il.rotation(["a", "b"])


def test_block_counts() -> None:
    assert il.block_counts(23, 10) == [10, 10, 3]
    assert il.block_counts(3, 10) == [3]
    assert il.block_counts(0, 5) == []


async def test_interleave_runs_blocks_in_alternating_order_and_records() -> None:
    seen: list[str] = []
    recorded: list[tuple[str, float]] = []
    advanced: list[int] = []

    def side(name: str, value: float | None):  # type: ignore[no-untyped-def]
        async def step() -> float | None:
            seen.append(name)
            return value
        return step

    await il.interleave({"a": side("a", 1.0), "b": side("b", None)}, 5, block=2,
                        orders=il.alternating(["a", "b"]),
                        record=lambda k, v: recorded.append((k, v)), advance=advanced.append)
    assert "".join(seen) == "aabb" "bbaa" "ab"
    assert recorded == [("a", 1.0)] * 5
    assert sum(advanced) == 10


def test_formats() -> None:
    assert fmt_ms(0.1234) == "123 ms"
    assert fmt_ms(0.01234) == "12.3 ms"
    assert fmt_ms(0.001234) == "1.23 ms"
    assert fmt_ms(0.0001234) == "123.4 µs"
    assert fmt_ms(math.nan) == "–" and fmt_ms(None) == "–"
    assert fmt_ratio(12.4) == "12×" and fmt_ratio(1.234) == "1.23×"
    assert fmt_ratio(0.0123) == "0.012×" and fmt_ratio(6.1e-05) == "1/16,400"
    assert fmt_value(150.0, "MiB") == "150 MiB" and fmt_value(12.34, "MiB") == "12.3 MiB"
    assert fmt_value(1234.0, "cells/s") == "1,234/s"
