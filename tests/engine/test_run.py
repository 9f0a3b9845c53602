"""`agentbox run FILE`: a script or notebook, cell by cell, locally or on a server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from sandbox.cli.run import split_cells
from tests.api.conftest import KEY_A, make_settings, run_server

pytestmark = pytest.mark.usefixtures("engine")

SCRIPT = """\
# %% greet
print("hello from cell one")
# %% a frame
import pandas as pd
pd.DataFrame({"city": ["Lisbon", "Porto"], "n": [3, 4]})
# %% a plot
import matplotlib.pyplot as plt
plt.plot([1, 3, 2])
plt.show()
"""
FAILING = """\
x = 1
# %%
print("before")
# %%
raise RuntimeError("cell two broke")
# %%
print("after", x)
"""
PNG = b"\x89PNG\r\n\x1a\n"


def agentbox_run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox.cli", "run", *map(str, args)],
                          capture_output=True, text=True, timeout=240, cwd=cwd,
                          env={**os.environ, "COLUMNS": "100", **(env or {})})


def outputs(nb: nbformat.NotebookNode) -> list[list[dict[str, object]]]:
    return [list(cell.outputs) for cell in nb.cells]


def test_script_cells_run_in_order_and_make_a_notebook(tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(SCRIPT)
    proc = agentbox_run("analysis.py", "-o", "out/analysis.ipynb", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cell 1 of 3" in proc.stdout and "cell 3 of 3" in proc.stdout
    assert "hello from cell one" in proc.stdout
    assert "Lisbon" in proc.stdout  # the DataFrame as a table
    figure = tmp_path / "out" / "analysis-figure-1.png"
    assert str(Path("out") / "analysis-figure-1.png") in proc.stdout
    assert figure.read_bytes()[:8] == PNG
    nb = nbformat.read(tmp_path / "out" / "analysis.ipynb", as_version=4)
    nbformat.validate(nb)
    assert [c.source for c in nb.cells] == split_cells(SCRIPT)
    assert nb.cells[0].source == 'print("hello from cell one")'
    assert all(c.metadata["agentbox"]["status"] == "ok" for c in nb.cells)
    first, frame, plot = outputs(nb)
    assert first[0]["text"] == "hello from cell one\n"
    assert "application/vnd.agentbox.dataframe+json" in frame[0]["data"]  # type: ignore[operator]
    assert any("image/png" in o.get("data", {}) for o in plot)  # type: ignore[operator]


def test_a_failing_cell_stops_the_run_with_exit_1(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(FAILING)
    proc = agentbox_run("broken.py", "-o", "broken.ipynb", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RuntimeError" in proc.stdout and "cell two broke" in proc.stdout
    assert "after" not in proc.stdout.split("cell 4 of 4")[0] and "cell 4 of 4" not in proc.stdout
    nb = nbformat.read(tmp_path / "broken.ipynb", as_version=4)
    nbformat.validate(nb)
    assert len(nb.cells) == 4 and nb.cells[0].source == "x = 1"  # text before the 1st marker
    assert nb.cells[2].metadata["agentbox"]["status"] == "error"
    assert nb.cells[2].outputs[-1]["ename"] == "RuntimeError"
    assert nb.cells[3].outputs == [] and nb.cells[3].execution_count is None
    assert "agentbox" not in nb.cells[3].metadata


def test_continue_on_error_runs_every_cell_and_still_fails(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(FAILING)
    proc = agentbox_run("broken.py", "-o", "broken.ipynb", "--continue-on-error", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "after 1" in proc.stdout
    nb = nbformat.read(tmp_path / "broken.ipynb", as_version=4)
    assert [c.metadata["agentbox"]["status"] for c in nb.cells] == ["ok", "ok", "error", "ok"]
    assert nb.cells[3].outputs[0]["text"] == "after 1\n"


def test_a_notebook_runs_its_code_cells(tmp_path: Path) -> None:
    source = new_notebook(cells=[new_markdown_cell("# Title"), new_code_cell("a = 6"),
                                 new_markdown_cell("text"), new_code_cell("a * 7")])
    nbformat.write(source, tmp_path / "in.ipynb")
    proc = agentbox_run("in.ipynb", "-o", "executed.ipynb", "--timeout", "30", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cell 2 of 2" in proc.stdout
    nb = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    nbformat.validate(nb)
    assert [c.source for c in nb.cells] == ["a = 6", "a * 7"]
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "42"


def test_without_output_images_go_to_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "plot.py").write_text("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n")
    proc = agentbox_run("plot.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "plot-figure-1.png").read_bytes()[:8] == PNG
    assert not list(tmp_path.glob("*.ipynb"))


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.py", None, "cannot run missing.py: no such file"),
    ("bad.ipynb", "{not json", "bad.ipynb is not a valid notebook"),
    ("invalid.ipynb", '{"nbformat": 4, "nbformat_minor": 5, "cells": [{"cell_type": "code"}],'
     ' "metadata": {}}', "invalid.ipynb is not a valid notebook"),
    ("empty.py", "\n\n", "empty.py has no code cells"),
    ("notes.txt", "print(1)", "expected a .py or .ipynb file"),
])
def test_unusable_input_is_one_line_and_exit_2(tmp_path: Path, name: str, content: str | None,
                                               message: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    proc = agentbox_run(name, cwd=tmp_path, env={"COLUMNS": "400"})  # rich wraps at the width
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error:") and message in " ".join(proc.stderr.split())
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_split_cells() -> None:
    assert split_cells("a = 1\n# %%\nb = 2\n\n# %% [title]\nc = 3\n") == ["a = 1", "b = 2", "c = 3"]
    assert split_cells("\n\n# %%\n  indented = 1\n") == ["  indented = 1"]
    assert split_cells("no markers\nat all") == ["no markers\nat all"]
    assert split_cells("x = '# %% not a marker'\n") == ["x = '# %% not a marker'"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(make_settings(tmp_path_factory.mktemp("run-api"))) as url:
        yield url


def test_server_runs_the_file_remotely(server: str, tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(SCRIPT)
    proc = agentbox_run("analysis.py", "-o", "remote.ipynb", "--server", server, cwd=tmp_path,
                        env={"AGENTBOX_API_KEY": KEY_A})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"on {server}" in proc.stdout and "hello from cell one" in proc.stdout
    assert (tmp_path / "remote-figure-1.png").read_bytes()[:8] == PNG
    nb = nbformat.read(tmp_path / "remote.ipynb", as_version=4)
    nbformat.validate(nb)
    assert len(nb.cells) == 3 and any("image/png" in o.get("data", {}) for o in nb.cells[2].outputs)
    (tmp_path / "broken.py").write_text(FAILING)
    failed = agentbox_run("broken.py", "--server", server, "--api-key", KEY_A, cwd=tmp_path)
    assert failed.returncode == 1 and "cell two broke" in failed.stdout
    denied = agentbox_run("analysis.py", "--server", server, "--api-key", "wrong", cwd=tmp_path)
    assert denied.returncode == 2
    assert "invalid API key" in denied.stderr and "401" in denied.stderr
    assert "Traceback" not in denied.stderr
