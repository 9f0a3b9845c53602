"""The install's parts: the light client costs no engine, and a missing extra says which.

Each check runs in a fresh interpreter (a subprocess), where sys.modules starts empty."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sandbox

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("docker", "zmq", "jupyter_client", "fastapi", "starlette", "uvicorn", "sqlalchemy",
         "prometheus_client", "nbformat")


def fresh(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, *args, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def test_the_client_and_the_leaf_types_import_no_engine_and_no_server() -> None:
    done = fresh("import sys, api.client\n"
                 "from sandbox import ExecutionResult, SandboxConfig, SandboxError\n"
                 f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_engine_names_are_imported_on_first_use() -> None:
    done = fresh("import sys, sandbox\n"
                 "assert 'docker' not in sys.modules\n"
                 "from sandbox import AsyncSession, Session, SessionManager, SessionState\n"
                 "from sandbox._session import AsyncSession as A\n"
                 "assert AsyncSession is A and 'zmq' in sys.modules\n"
                 "print('ok')")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_every_exported_name_resolves() -> None:
    for name in sandbox.__all__:
        assert getattr(sandbox, name) is not None, name
    assert set(sandbox.__all__) <= set(dir(sandbox))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sandbox.nope  # noqa: B018


@pytest.mark.parametrize(("module", "missing", "hint"), [
    ("api.server.app", "fastapi",
     "the HTTP server needs the 'server' extra: pip install 'agentbox[server]'"),
    ("api.server.service", "sqlalchemy",
     "the HTTP server needs the 'server' extra: pip install 'agentbox[server]'"),
    ("api.client", "httpx",
     "the HTTP client needs the 'client' extra: pip install 'agentbox[client]'"),
])
def test_a_missing_extra_is_named_in_one_line(module: str, missing: str, hint: str) -> None:
    done = fresh(f"import sys; sys.modules[{missing!r}] = None\n"
                 "from sandbox import MissingExtraError\n"
                 f"try:\n    import {module}\n"
                 "except MissingExtraError as exc:\n    print(exc)\n"
                 "    assert isinstance(exc, ImportError) and exc.extra in str(exc)\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hint


def test_agentbox_serve_without_the_server_extra_says_which_extra() -> None:
    done = fresh("import sys; sys.modules['fastapi'] = None\n"
                 "from sandbox.cli import main\nsys.exit(main(['serve']))")
    assert done.returncode == 2, (done.stdout, done.stderr)
    out = " ".join((done.stdout + done.stderr).split())
    assert "the HTTP server needs the 'server' extra: pip install 'agentbox[server]'" in out
    assert "Traceback" not in out
