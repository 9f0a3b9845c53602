"""The CLI's answers when there is no engine: one clear line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

NO_ENGINE = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def agentbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox.cli", *args], capture_output=True,
                          text=True, env=NO_ENGINE, timeout=60)


@pytest.mark.parametrize("args", [["image", "build"], ["gc"], ["demo", "--out", "/tmp/x.ipynb"]])
def test_missing_engine_is_one_clear_error(args: list[str]) -> None:
    proc = agentbox(*args)
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert "no Docker engine answers at unix:///nonexistent/docker.sock" in err
    assert "scripts/ensure-docker" in err
    assert "Traceback" not in proc.stderr


def test_doctor_without_engine_fails_and_says_why() -> None:
    proc = agentbox("doctor", "--json")
    assert proc.returncode == 1
    import json

    report = json.loads(proc.stdout)
    assert report["ok"] is False
    engine = next(c for c in report["checks"] if c["name"] == "engine")
    assert engine["ok"] is False and "ensure-docker" in engine["detail"]


def test_image_tag_needs_no_engine() -> None:
    proc = agentbox("image", "tag")
    assert proc.returncode == 0 and proc.stdout.startswith("agentbox-kernel:")


def test_usage_errors_exit_2() -> None:
    proc = agentbox("image", "bogus")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_the_cli_and_the_integrations_load_their_libraries_only_when_used() -> None:
    """`agentbox --version` and the parser load no server; the MCP package loads no SDK
    until build_server is used; the old module paths re-export the new ones."""
    code = (
        "import sys, sandbox.cli, sandbox.integrations.mcp, sandbox.mcp_server\n"
        "sandbox.cli.build_parser()\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(roots & {'api', 'fastapi', 'uvicorn', 'sqlalchemy', 'mcp', 'langchain_core'}))\n"
        "assert sandbox.mcp_server.bind_http is sandbox.integrations.mcp.bind_http\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
