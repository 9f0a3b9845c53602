"""Running a suite: measure (with a progress display), write the raw results, render the
report and its plot, print a summary; or render only, from earlier results."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.harness import machine
from bench.harness.errors import BenchError
from bench.harness.recorder import read_results, write_results

DOCS = machine.REPO / "docs"


def console() -> Any:
    """A rich console on stderr, with warnings logged through it."""
    from rich.console import Console
    from rich.logging import RichHandler

    out = Console(stderr=True)
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=out)],
                        format="%(message)s")
    return out


@contextlib.contextmanager
def progress_display(out: Any) -> Iterator[Any]:
    """The rich progress display every suite shows while it measures."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as progress:
        yield progress


def write_report(suite: Any, data: dict[str, Any], report: Path, out: Any) -> None:
    """The plot (optional: skipped with a note when it fails) beside *report*, then the
    Markdown the suite renders of *data*, with no absolute path of this machine."""
    render = suite.render_module()
    shown = None
    try:
        if render.make_plot(data, report.parent / suite.plot):
            shown = suite.plot
        else:
            out.print("[dim]matplotlib not available: no plot[/dim]")
    except Exception as exc:  # a plot is optional; the report is not
        out.print(f"[yellow]plot skipped: {exc}[/yellow]")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(machine.scrub(render.render(data, shown)))
    out.print(f"report: {machine.display_path(report)}")


def render_only(suite: Any, results: Path, report: Path | None, out: Any) -> int:
    data = read_results(results)
    if data.get("benchmark") != suite.name:
        raise BenchError(f"{machine.display_path(results)} holds results of "
                         f"{data.get('benchmark')!r}, not of {suite.name!r}")
    write_report(suite, data, report or DOCS / suite.report, out)
    suite.render_module().summary(data)
    return 0


def measure(suite: Any, *, quick: bool, results: Path, report: Path | None, out: Any) -> int:
    """Run *suite*'s plan; write *results* and (unless *report* is None) the report."""
    import asyncio

    plan = suite.plan(quick)
    out.print(f"[bold]{suite.title}[/bold] ({plan.mode} mode)")
    try:
        data = asyncio.run(suite.measure_module().run(plan, out))
    except BenchError as exc:
        out.print(f"[red]benchmark failed:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        out.print("[yellow]interrupted; sessions were closed[/yellow]")
        return 130
    write_results(data, results)
    out.print(f"results: {machine.display_path(results)}")
    if report is not None:
        write_report(suite, data, report, out)
    suite.render_module().summary(data)
    leaks = data["checks"]["leaked_containers"]
    if leaks:
        out.print(f"[red]containers left behind: {', '.join(leaks)}[/red]")
        return 1
    return 0


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A summary table on stdout (the first column left-aligned, the others right)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    stdout = Console()
    if not stdout.is_terminal:
        stdout.width = max(stdout.width, 120)  # piped: do not squeeze to 80 columns
    stdout.print(table)
