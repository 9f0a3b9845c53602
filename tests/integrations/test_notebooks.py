"""Every notebook in notebooks/ runs top to bottom against the real engine.

Each is executed on a fresh copy with nbclient in the venv's ``python3`` kernel (the
kernel inherits AGENTBOX_RUN_ROOT from tests/conftest.py, so the session-wide leak check
covers the sandboxes the notebooks start). Beyond "no cell failed", each notebook has
its own outcome to show, found through its cells' tags.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat import NotebookNode

from sandbox._runtime.base import LABEL_APP, LABEL_OWNER_PID, LABEL_RUN_DIR

pytestmark = pytest.mark.usefixtures("engine")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(path: Path) -> NotebookNode:
    """A fresh copy of the notebook, executed top to bottom (never written back)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def outputs(nb: NotebookNode, tag: str | None = None) -> list[NotebookNode]:
    cells = [c for c in nb.cells if c.cell_type == "code"
             and (tag is None or tag in c.metadata.get("tags", []))]
    assert cells, f"no code cell tagged {tag!r}"
    return [o for c in cells for o in c.outputs]


def text(outs: list[NotebookNode]) -> str:
    """Printed text and the text/plain of every rich output."""
    parts = [o.get("text", "") if o.output_type == "stream"
             else o.get("data", {}).get("text/plain", "") for o in outs]
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


def started_by_subprocesses(engine: Any) -> list[str]:
    """Containers of this test run owned by another process (such as a notebook's kernel).
    The low-level list: inspecting each would race a removal (another test's, CI's)."""
    run_root = os.environ["AGENTBOX_RUN_ROOT"].rstrip("/") + "/"
    found = engine.api.containers(all=True, filters={"label": f"{LABEL_APP}=agentbox"})
    return [str(c["Names"][0]).lstrip("/") for c in found
            if (c.get("Labels") or {}).get(LABEL_RUN_DIR, "").startswith(run_root)
            and (c.get("Labels") or {}).get(LABEL_OWNER_PID) != str(os.getpid())]


# -- what each notebook must show ---------------------------------------------------------
def check_quickstart(nb: NotebookNode) -> None:
    assert any("image/png" in o.get("data", {}) for o in outputs(nb, "figure"))
    timeouts = text(outputs(nb, "timeout"))
    assert "status: timeout | ended by: interrupt | state lost: False" in timeouts
    assert "status: timeout | ended by: restart | state lost: True" in timeouts
    assert "variables kept: False" in timeouts
    download = outputs(nb, "download")
    assert re.search(r"downloaded summary\.csv, [1-9]\d* bytes", text(download))
    assert any("text/html" in o.get("data", {}) for o in download)  # the table, read on the host
    exported = re.search(r"exported (\d+) cells", text(outputs(nb, "export")))
    assert exported and int(exported[1]) >= 5
    assert "closed" in text(nb.cells[-1].outputs)


def check_http_api(nb: NotebookNode) -> None:
    events = re.findall(r"^\s*(\d+\.\d)s\s+(\w+)\s+(.*)$", text(outputs(nb, "stream")), re.M)
    kinds = [kind for _, kind, _ in events]
    assert kinds[:3] == ["StreamOutput"] * 3 and kinds[-1] == "ExecutionResult", events
    assert "status=ok" in events[-1][2]
    # printed while the cell ran (it sleeps 1.5 s in all), not all at once at the end
    assert float(events[-1][0]) - float(events[0][0]) >= 0.8, events
    cells = re.search(r"notebook: (\d+) cells", text(outputs(nb, "notebook-download")))
    assert cells and int(cells[1]) >= 3
    assert "server stopped: True" in text(nb.cells[-1].outputs)


def check_agent_loop(nb: NotebookNode) -> None:
    loop = text(outputs(nb, "loop"))
    assert "status: error" in loop and "KeyError" in loop  # the failed attempt was observed...
    assert "ANSWER: East 615.00" in loop  # ...and fixed
    assert "sandbox s-" in loop and loop.rstrip().endswith("closed")
    assert "Final answer: East brought in the most revenue: 615.00" in text(outputs(nb, "final-answer"))
    history = text(outputs(nb, "history"))
    assert re.search(r"^2\s+error\b", history, re.M), history


CHECKS: dict[str, Callable[[NotebookNode], None]] = {
    "quickstart": check_quickstart,
    "http-api": check_http_api,
    "agent-loop": check_agent_loop,
}


def test_the_notebooks_are_there() -> None:
    assert {p.stem for p in NOTEBOOKS} >= set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, engine: Any) -> None:
    committed = [o for c in nbformat.read(path, as_version=4).cells for o in c.get("outputs", [])]
    assert committed, f"{path.name} is committed without outputs: execute it and save"
    assert not [o for o in committed if o.output_type == "error"], f"{path.name} is committed with errors"

    before = set(started_by_subprocesses(engine))
    failure: CellExecutionError | None = None
    try:
        nb = execute(path)
    except CellExecutionError as exc:
        failure = exc
    leaked = sorted(set(started_by_subprocesses(engine)) - before)
    for name in leaked:
        engine.containers.get(name).remove(force=True)
    assert not leaked, f"{path.name} left sandboxes behind: {leaked}" + (
        f"\n(after a failing cell: {failure})" if failure else "")
    if failure is not None:
        raise failure

    every = outputs(nb)
    assert not [o for o in every if o.output_type == "error"]
    stderr = [o.text for o in every if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"{path.name} wrote to stderr: {stderr}"
    if path.stem in CHECKS:
        CHECKS[path.stem](nb)
