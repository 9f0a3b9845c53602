"""The dependency rule holds (`.importlinter`: imports point down only, each foreign
library in its one home, a light client), and the contracts do catch a break."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_tree_keeps_every_contract() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def copy_of_tree(tmp_path: Path) -> Path:
    for name in ("sandbox", "api"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    root = copy_of_tree(tmp_path)
    models = root / "sandbox" / "_models.py"
    models.write_text(models.read_text() + "\n\ndef _late() -> object:\n"
                      "    from sandbox._session import AsyncSession\n    return AsyncSession\n")
    done = lint_imports(root)
    assert done.returncode != 0
    assert "Layers: imports point down only BROKEN" in done.stdout
    assert "sandbox._models -> sandbox._session" in done.stdout


def test_docker_outside_its_package_and_rich_outside_the_cli_are_caught(tmp_path: Path) -> None:
    root = copy_of_tree(tmp_path)
    for name, line in (("_session.py", "import docker\n"), ("_outputs.py", "import rich\n")):
        path = root / "sandbox" / name
        path.write_text(path.read_text() + "\n" + line)
    client = root / "api" / "client.py"
    client.write_text(client.read_text() + "\nimport api.server\n")
    done = lint_imports(root)
    assert done.returncode != 0
    for contract in ("The docker SDK only in the Docker runtime package BROKEN",
                     "rich only in the CLI BROKEN",
                     "never the server or the engine BROKEN"):
        assert contract in done.stdout, done.stdout[-3000:]
