"""The README's main job: the demo runs end to end and writes a valid notebook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.usefixtures("engine")


def test_demo_writes_an_executed_notebook_with_rich_outputs(tmp_path: Path) -> None:
    out = tmp_path / "demo.ipynb"
    proc = subprocess.run([sys.executable, "-m", "sandbox.cli", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Faro summer vs winter" in proc.stdout
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    outputs = [o for cell in nb.cells for o in cell.outputs]
    assert all(cell.metadata["agentbox"]["status"] == "ok" for cell in nb.cells)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("application/vnd.agentbox.dataframe+json" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "demo-figure-1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "demo-monthly_revenue.csv").read_text().startswith("month,")
