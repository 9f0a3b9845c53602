"""The four benchmark suites. Each is a package: ``__init__`` (its plans and what the
front page says of it; cheap to import), ``measure`` (the run: imports the engine) and
``render`` (its report, plot and summary from a results dict: no engine)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

NAMES = ("core", "api", "scale", "tuning")


@dataclass(frozen=True)
class Suite:
    name: str
    title: str  # the console's heading
    heading: str  # the front page's name for its report
    report: str  # file name under docs/
    plot: str  # file name under docs/, beside the report
    measures: str  # one line for the front page's index
    plans: dict[str, Any]

    def plan(self, quick: bool) -> Any:
        return self.plans["quick" if quick else "full"]

    def measure_module(self) -> ModuleType:
        return importlib.import_module(f"bench.suites.{self.name}.measure")

    def render_module(self) -> ModuleType:
        return importlib.import_module(f"bench.suites.{self.name}.render")


def get(name: str) -> Suite:
    suite: Suite = importlib.import_module(f"bench.suites.{name}").SUITE
    return suite


def all_suites() -> list[Suite]:
    return [get(name) for name in NAMES]
