"""A real `agentbox mcp` subprocess for the MCP tests (tests/integrations/test_mcp.py,
test_mcp_auth.py, tests/security/test_mcp_http.py), and what they read back from it.

The server gets this process's environment (plus *env*), so AGENTBOX_RUN_ROOT from
tests/conftest.py applies and the session leak check covers what it left behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcp.types import CallToolResult, TextContent

from sandbox._runtime.base import LABEL_APP, LABEL_OWNER_PID

ROOT = Path(__file__).resolve().parents[1]
AGENTBOX_MCP = [sys.executable, "-m", "sandbox.cli", "mcp"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def mcp_http_server(*args: str, host: str = "127.0.0.1", env: Mapping[str, str] | None = None
                    ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`agentbox mcp --transport streamable-http` on *host* and a free port, with *args*;
    yields the process and the endpoint's URL once it listens. Stopped at the end
    whatever happens: SIGTERM (its sandboxes are removed), SIGKILL if that hangs."""
    port = free_port(host)
    proc = subprocess.Popen([*AGENTBOX_MCP, "--transport", "streamable-http", "--host", host,
                             "--port", str(port), *args], cwd=ROOT,
                            env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex((host, port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield proc, f"http://{host}:{port}/mcp"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def containers_of(engine: Any, pid: int) -> list[str]:
    """Ids of the server's containers (the low-level list: no inspect of each, which
    races a removal)."""
    found = engine.api.containers(all=True, filters={
        "label": [f"{LABEL_APP}=agentbox", f"{LABEL_OWNER_PID}={pid}"]})
    return [str(c["Id"]) for c in found]


def text(result: Any) -> str:
    """The text blocks of a tool result, one a line."""
    assert isinstance(result, CallToolResult)
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))
