"""`agentbox mcp --transport streamable-http` with API keys, through the MCP SDK's own
client in its default mode (protocol 2026-07-28: stateless, no initialize handshake).

A real `agentbox mcp` subprocess with AGENTBOX_API_KEYS set, on a real engine:

- the default-mode client lists the tools and runs them: the first run_code starts a
  sandbox and returns its handle, later calls name it with `session` and see the same
  variables and files; a figure comes back as an image. (Before, every run_code of such
  a client came back isError: the tools were advertised but could not run.)
- a request with a wrong key, no key, or another scheme is answered 401 and starts
  nothing; a handle is bound to the key that got it.
- SIGTERM stops the server with exit 0 and removes its sandboxes.
"""

from __future__ import annotations

import base64
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ImageContent
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from sandbox._runtime.base import LABEL_OWNER_PID
from sandbox.integrations.mcp import SESSION_META_KEY, BearerAuth, api_keys
from tests._mcp import containers_of, mcp_http_server, text

pytestmark = pytest.mark.usefixtures("engine")

KEY, OTHER = "k-alpha-0123456789", "k-beta-9876543210"
PNG = b"\x89PNG\r\n\x1a\n"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "raw", "version": "1"}}}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@asynccontextmanager
async def client(url: str, key: str | None, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with httpx2.AsyncClient(headers=headers, timeout=120) as http, \
            Client(streamable_http_client(url, http_client=http), **kwargs) as c:
        yield c


async def call(c: Client, tool: str, **args: Any) -> CallToolResult:
    result = await c.call_tool(tool, args)
    assert isinstance(result, CallToolResult)
    return result


def handle_of(result: CallToolResult) -> str:
    assert result.meta is not None, result
    handle = result.meta[SESSION_META_KEY]
    assert isinstance(handle, str)
    return handle


def test_keys_are_read_as_agentbox_serve_reads_them(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nfile-key-1\n\n  file-key-2  # ci\n")
    assert api_keys({"AGENTBOX_API_KEYS": " a, b ,", "AGENTBOX_API_KEYS_FILE": str(keys)}) \
        == ["a", "b", "file-key-1", "file-key-2"]
    auth = BearerAuth(lambda *_: None, ["a", "b"])  # type: ignore[arg-type,return-value]
    assert auth.allows(b"Bearer b") and auth.allows(b"bearer a")
    assert not auth.allows(b"Bearer c") and not auth.allows(b"") and not auth.allows(b"Basic a")


def test_the_old_module_path_still_works() -> None:
    """`sandbox.mcp_server` re-exports the package, build_server (the SDK) lazily."""
    from sandbox import mcp_server
    from sandbox.integrations import mcp

    assert mcp_server.BearerAuth is BearerAuth and mcp_server.run is mcp.run
    assert mcp_server.build_server is mcp.build_server


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_default_mode_client_runs_code_with_a_key_and_is_refused_without(
        engine: Any, runtime: str) -> None:
    keys = {"AGENTBOX_API_KEYS": f"{KEY}, {OTHER}"}
    with mcp_http_server("--runtime", runtime, env=keys) as (proc, url):
        async with httpx2.AsyncClient(timeout=30) as raw:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": f"Basic {KEY}"}):
                answer = await raw.post(url, json=INIT, headers={**HEADERS, **headers})
                assert answer.status_code == 401, headers
                assert answer.headers["www-authenticate"].startswith("Bearer")
                assert "API key" in answer.json()["error"]["message"]
            # A handshake session answers only the key that opened it.
            opened = await raw.post(url, json=INIT, headers={
                **HEADERS, "Authorization": f"Bearer {KEY}"})
            assert opened.status_code == 200, opened.text
            sid = {"mcp-session-id": opened.headers["mcp-session-id"]}
            assert (await raw.delete(url, headers={**sid, "Authorization": f"Bearer {OTHER}"})
                    ).status_code == 404
            assert (await raw.delete(url, headers={**sid, "Authorization": f"Bearer {KEY}"})
                    ).status_code == 200
        with pytest.raises(Exception):  # noqa: B017  (the SDK client cannot connect without the key)
            async with client(url, "wrong") as refused:
                await refused.list_tools()
        assert containers_of(engine, proc.pid) == []  # nothing started for them

        async with client(url, KEY) as c:  # the SDK's default mode: no mode= given
            assert c.session.protocol_version in MODERN_PROTOCOL_VERSIONS
            tools = {t.name for t in (await c.list_tools()).tools}
            assert tools == {"run_code", "upload_file", "download_file", "list_files", "restart"}

            first = await call(c, "run_code", code="x = 41\nprint('set')")
            assert not first.is_error, text(first)
            handle = handle_of(first)
            assert text(first).startswith("set\n[session] ") and f'session="{handle}"' in text(first)

            plot = await call(c, "run_code", session=handle, code=(
                "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\nx + 1"))
            assert not plot.is_error and "42" in text(plot) and "[session]" not in text(plot)
            images = [b for b in plot.content if isinstance(b, ImageContent)]
            assert len(images) == 1 and base64.b64decode(images[0].data).startswith(PNG)

            failed = await call(c, "run_code", session=handle, code="1 / 0")
            assert failed.is_error and "ZeroDivisionError" in text(failed)

            await call(c, "upload_file", session=handle, path="a.txt", text="hi")
            assert "a.txt\t2 bytes" in text(await call(c, "list_files", session=handle))

            fresh = await call(c, "run_code", code="'x' in dir()")  # no session: a new box
            assert text(fresh).startswith("False") and handle_of(fresh) != handle
            assert len(containers_of(engine, proc.pid)) == 2

            unknown = await call(c, "list_files", session="no-such-handle")
            assert unknown.is_error and "unknown session" in text(unknown)
            unnamed = await call(c, "list_files")
            assert unnamed.is_error and "`session`" in text(unnamed)

        async with client(url, OTHER) as other:  # another key cannot use the handle
            stolen = await call(other, "run_code", session=handle, code="x")
            assert stolen.is_error and "unknown session" in text(stolen)

        found = engine.api.containers(filters={"label": f"{LABEL_OWNER_PID}={proc.pid}"})
        assert {engine.api.inspect_container(c["Id"])["HostConfig"]["Runtime"]
                for c in found} == {runtime}
        async with client(url, KEY, mode="legacy") as legacy:  # handshake era, same key
            assert text(await call(legacy, "run_code", code="7 * 6")) == "42"
            named = await call(legacy, "run_code", session=handle, code="1")
            assert named.is_error and "leave `session` out" in text(named)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert containers_of(engine, proc.pid) == []
