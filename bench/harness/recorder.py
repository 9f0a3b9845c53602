"""Samples by key, the comparisons between them, and the raw results JSON
(``bench/results/<suite>.json``) every report is rendered from."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from bench.harness import machine
from bench.harness.stats import compare, summarize

RESULTS = machine.REPO / "bench" / "results"
SCHEMA = 1


def results_path(suite: str) -> Path:
    """Where a suite's raw results live by default."""
    return RESULTS / f"{suite}.json"


class Recorder:
    """Samples by key (seconds unless another *unit* is given), with a label and the
    group (table) they belong to, and comparisons of one series against a baseline."""

    def __init__(self) -> None:
        self.series: dict[str, dict[str, Any]] = {}
        self.comparisons: list[dict[str, Any]] = []

    def define(self, key: str, group: str, label: str, note: str = "", unit: str = "s") -> None:
        self.series[key] = {"group": group, "label": label, "note": note, "unit": unit,
                            "samples": []}

    def add(self, key: str, value: float) -> None:
        self.series[key]["samples"].append(value)

    def samples(self, key: str) -> list[float]:
        samples: list[float] = self.series[key]["samples"]
        return samples

    def clear(self) -> None:
        """Drop every sample so far (after an unrecorded warm-up)."""
        for s in self.series.values():
            s["samples"].clear()

    def compare(self, group: str, figure: str, subject: str, baseline: str,
                note: str = "") -> None:
        self.comparisons.append({"group": group, "figure": figure, "subject": subject,
                                 "baseline": baseline, "note": note})

    def finish(self) -> None:
        """Statistics of every series with samples; ratio, its interval and the p50
        difference of every comparison whose two sides have samples."""
        for s in self.series.values():
            if s["samples"]:
                s["stats"] = summarize(s["samples"])
        for c in self.comparisons:
            subj = self.series[c["subject"]]["samples"]
            base = self.series[c["baseline"]]["samples"]
            if subj and base:
                c.update(compare(subj, base))


class Clock:
    """When a run started: its date (UTC) and its duration so far."""

    def __init__(self) -> None:
        self.started = dt.datetime.now(dt.UTC)
        self._t0 = time.perf_counter()

    @property
    def date(self) -> str:
        return self.started.isoformat(timespec="seconds")

    def duration_s(self) -> float:
        return round(time.perf_counter() - self._t0, 1)


def header(suite: str, plan: Any, clock: Clock, **extra: Any) -> dict[str, Any]:
    """The fields every results file starts with: which suite, mode and plan, when (now,
    unless *extra* says otherwise), by which (repository-relative) command, how long."""
    return {
        "schema": SCHEMA,
        "benchmark": suite,
        "mode": plan.mode,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": machine.command_line(),
        "duration_s": clock.duration_s(),
        "plan": dict(plan.__dict__),
        **extra,
    }


def write_results(data: dict[str, Any], path: Path) -> None:
    """The raw results as JSON; ``data['out']`` names the file repository-relative."""
    data["out"] = machine.display_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def read_results(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
