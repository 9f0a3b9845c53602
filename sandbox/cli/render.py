"""Rich outputs in a terminal: DataFrames as tables, images as saved files, errors in red."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sandbox._models import (
    DATAFRAME_MIME,
    DisplayOutput,
    ErrorOutput,
    ExecutionResult,
    Output,
    StreamOutput,
)

MAX_TABLE_ROWS = 12


def png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def dataframe_table(payload: dict[str, object]) -> Table:
    shape = payload.get("shape") or ["?", "?"]
    table = Table(caption=f"{shape[0]} rows × {shape[1]} columns"  # type: ignore[index]
                  + (" (first rows)" if payload.get("truncated_rows") else ""),
                  show_edge=False, header_style="bold cyan")
    table.add_column("", style="dim")
    for column in payload.get("columns", []):  # type: ignore[attr-defined]
        table.add_column(escape(str(column)), justify="right")
    index = payload.get("index", [])
    for i, row in enumerate(payload.get("data", [])[:MAX_TABLE_ROWS]):  # type: ignore[index]
        label = index[i] if i < len(index) else ""  # type: ignore[arg-type,index]
        table.add_row(escape(str(label)), *[escape(_cell(v)) for v in row])
    return table


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "" if value is None else str(value)


class TerminalRenderer:
    """Prints each output as it arrives; images are written under *image_dir*."""

    def __init__(self, console: Console, image_dir: Path | None = None,
                 image_name: Callable[[int], str] = lambda n: f"figure-{n}.png") -> None:
        self.console = console
        self.image_dir = image_dir
        self.image_name = image_name
        self.images = 0

    def output(self, output: Output) -> None:
        if isinstance(output, StreamOutput):
            style = "yellow" if output.name == "stderr" else None
            self.console.print(escape(output.text.rstrip("\n")), style=style, highlight=False)
        elif isinstance(output, ErrorOutput):
            self.console.print(f"[bold red]{escape(output.ename)}[/]: {escape(output.evalue)}")
            for line in output.traceback[-6:]:
                self.console.print(escape(line), style="red", highlight=False)
        elif isinstance(output, DisplayOutput):
            self._display(output)

    def _display(self, output: DisplayOutput) -> None:
        data = output.data
        if isinstance(data.get(DATAFRAME_MIME), dict):
            self.console.print(dataframe_table(data[DATAFRAME_MIME]))
            return
        result = ExecutionResult(status="ok", execution_count=None, outputs=[output],
                                 duration_s=0.0)
        if result.images:
            for mime, blob in result.images:
                self.images += 1
                where = ""
                if self.image_dir is not None and mime == "image/png":
                    self.image_dir.mkdir(parents=True, exist_ok=True)
                    path = self.image_dir / self.image_name(self.images)
                    path.write_bytes(blob)
                    where = f" → {path}"
                size = png_size(blob)
                dims = f" {size[0]}×{size[1]}" if size else ""
                self.console.print(f"[magenta]▣ {mime}{dims}, {len(blob) / 1024:.0f} KB"
                                   f"{escape(where)}[/]")
            return
        text = data.get("text/plain")
        if isinstance(text, str):
            self.console.print(escape(text), highlight=False)
        else:
            self.console.print(f"[dim]({', '.join(sorted(data))})[/]")
