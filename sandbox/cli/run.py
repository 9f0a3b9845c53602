"""``agentbox run FILE``: a ``.py`` (``# %%`` cells) or ``.ipynb`` file, cell by cell,
in a fresh sandbox (local, or on an Agent Box server with ``--server``).

Each output is shown as it arrives; ``-o`` writes the executed notebook (cells that
did not run are there without outputs). Exit status: 0 when every cell ran ok, 1
when one failed (the run stops there unless ``continue_on_error``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule

from sandbox._exceptions import ConfigError, SandboxError
from sandbox._models import DisplayOutput, ErrorOutput, ExecutionResult, StreamOutput
from sandbox._notebook import dumps, to_notebook
from sandbox.cli.render import TerminalRenderer

CELL_MARKER = "# %%"

# Runs one cell: (code, timeout, on_output) -> result.
RunCell = Callable[[str, float | None, Callable[[Any], None]], ExecutionResult]


def split_cells(source: str) -> list[str]:
    """Cells of a percent-format script: a line starting with ``# %%`` starts a cell;
    text before the first marker is a cell too when it is not blank."""
    cells: list[list[str]] = [[]]
    for line in source.splitlines():
        if line.startswith(CELL_MARKER):
            cells.append([])
        else:
            cells[-1].append(line)
    texts = ["\n".join(lines).strip("\n") for lines in cells]
    return texts[1:] if not texts[0].strip() else texts


def read_cells(path: Path) -> list[str]:
    """The code cells of *path*, in order; a :class:`ConfigError` says what is wrong."""
    suffix = path.suffix.lower()
    if suffix not in (".py", ".ipynb"):
        raise ConfigError(f"cannot run {path}: expected a .py or .ipynb file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"cannot run {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if suffix == ".py":
        cells = split_cells(text)
    else:
        import nbformat

        try:
            nb = nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
            nbformat.validate(nb)
        except Exception as exc:  # NotJSONError, ValidationError, bad versions...
            reason = " ".join(str(exc).split())[:200]
            raise ConfigError(f"{path} is not a valid notebook: {reason}") from None
        cells = [str(c.source) for c in nb.cells if c.cell_type == "code"]
    if not cells:
        raise ConfigError(f"{path} has no code cells")
    return cells


@contextmanager
def local_runner() -> Iterator[tuple[str, RunCell]]:
    from sandbox._sync import Session

    with Session() as session:
        def run(code: str, timeout: float | None, show: Callable[[Any], None]
                ) -> ExecutionResult:
            return session.execute(code, timeout=timeout, on_output=show)

        yield f"sandbox {session.id}", run


@contextmanager
def remote_runner(server: str, api_key: str | None) -> Iterator[tuple[str, RunCell]]:
    import httpx

    from api.client import AgentBoxClient, ApiClientError

    try:
        with AgentBoxClient(server, api_key=api_key) as client, \
                client.create_session() as session:
            def run(code: str, timeout: float | None, show: Callable[[Any], None]
                    ) -> ExecutionResult:
                for item in session.stream(code, timeout=timeout):
                    if isinstance(item, ExecutionResult):
                        return item
                    show(item)
                raise SandboxError("the server's stream ended without a result")  # pragma: no cover

            yield f"session {session.id} on {server}", run
    except ApiClientError as exc:
        raise SandboxError(f"server {server}: {exc.message} ({exc.status} {exc.code})") from None
    except httpx.HTTPError as exc:
        raise SandboxError(f"server {server}: {type(exc).__name__}: {exc}") from None


def run_file(path: str | Path, out: str | Path | None = None, *, server: str | None = None,
             api_key: str | None = None, timeout: float | None = None,
             continue_on_error: bool = False, console: Console | None = None) -> int:
    """Run every cell of *path*; returns the exit status (0 all ok, 1 a cell failed)."""
    console = console or Console()
    source = Path(path)
    cells = read_cells(source)
    out_path = Path(out) if out is not None else None
    stem = out_path.stem if out_path is not None else source.stem
    renderer = TerminalRenderer(console, image_dir=out_path.parent if out_path else Path.cwd(),
                                image_name=lambda n: f"{stem}-figure-{n}.png")

    def show(item: Any) -> None:
        if isinstance(item, StreamOutput | DisplayOutput | ErrorOutput):
            renderer.output(item)

    results: list[ExecutionResult | None] = [None] * len(cells)
    runner = remote_runner(server, api_key) if server else local_runner()
    t0 = time.monotonic()
    with ExitStack() as stack:
        with console.status("starting a sandbox..."):
            where, run = stack.enter_context(runner)
        console.print(f"[green]✓[/] {where} ready; running {source} ({len(cells)} cells)")
        for n, code in enumerate(cells, 1):
            console.print(Rule(f"cell {n} of {len(cells)}", align="left", style="blue"))
            console.print(code, style="dim", highlight=False, markup=False)
            console.print(Rule(style="dim blue"))
            result = results[n - 1] = run(code, timeout, show)
            status = "[green]ok[/]" if result.ok else f"[red]{result.status}[/]"
            console.print(f"[dim]{status} in {result.duration_s * 1000:.0f} ms[/]")
            for note in result.notes:
                console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
            if not result.ok and not continue_on_error:
                break
    failed = sum(1 for r in results if r is not None and not r.ok)
    skipped = sum(1 for r in results if r is None)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        nb = to_notebook(zip(cells, results, strict=True),
                         metadata={"agentbox": {"source": str(source)}})
        out_path.write_text(dumps(nb), encoding="utf-8")
        console.print(f"[green]✓[/] executed notebook → {out_path}")
    summary = f"{len(cells) - skipped} of {len(cells)} cells run, {failed} failed"
    console.print(f"{'[red]✗' if failed else '[green]✓'}[/] {summary} "
                  f"({time.monotonic() - t0:.1f}s); sandbox removed")
    return 1 if failed else 0
