"""The terminal: the console messages go to (stderr), build progress, one-line errors.

rich is imported here and elsewhere under :mod:`sandbox.cli` only.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.status import Status

console = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    """The one line a failed command prints: what failed and what to do."""
    console.print(f"[bold red]error:[/] {escape(message)}")


class RichProgress:
    """Shows build steps as they start and finish, with the last log line live."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._status: Status | None = None
        self._step = ""

    def step(self, name: str, description: str) -> None:
        self.stop()
        self._step = name
        status = console.status(f"[bold]{name}[/]: {description}")
        status.start()
        self._status = status

    def log(self, line: str) -> None:
        if self.verbose:
            console.print(f"  {line}", style="dim", markup=False)
        elif self._status is not None:
            text = line if len(line) < 100 else line[:97] + "..."
            self._status.update(f"[bold]{self._step}[/]: [dim]{escape(text)}[/]")

    def done(self, name: str, detail: str) -> None:
        self.stop()
        console.print(f"[green]✓[/] [bold]{name}[/]: {escape(detail)}")

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
