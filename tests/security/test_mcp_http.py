"""`agentbox mcp --transport streamable-http`: who may reach it, and for how long.

A real `agentbox mcp` subprocess (as in tests/integrations/test_mcp.py), driven by the
official MCP SDK client and by raw HTTP for what a browser on a rebound DNS name or a
flood of idle clients would send.

- DNS rebinding: the SDK's Host/Origin check is on for every bind address, with exactly
  the name and address bound (it used to be off for any loopback address but
  127.0.0.1, e.g. 127.0.0.2).
- Idle sessions: 32 idle ``initialize`` calls (some holding an SSE stream open, as the
  SDK client does) used to lock every other client out for 15 minutes. Now a session
  with no request for the idle timeout is closed and its sandbox removed; a new client
  past the limit is told at once (503, Retry-After) and gets in when they are reclaimed.
"""

from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from sandbox._exceptions import ConfigError
from sandbox.integrations.mcp import HTTP_MAX_SESSIONS, bind_http
from tests._mcp import containers_of, mcp_http_server, text

pytestmark = pytest.mark.usefixtures("engine")

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "idle", "version": "1"}}}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


# -- DNS rebinding -------------------------------------------------------------------------
def test_only_loopback_binds_and_the_host_list_is_what_is_bound() -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(ConfigError, match=r"refusing to bind|answer to any name"):
            bind_http(host, 0)
    with pytest.raises(ConfigError, match="answer to any name"):
        bind_http("0.0.0.0", 0, allow_remote=True)  # a wildcard needs --allowed-host
    sock, hosts = bind_http("127.0.0.2", 0)
    with sock:
        assert hosts == [f"127.0.0.2:{sock.getsockname()[1]}"]
    sock, hosts = bind_http("localhost", 0)
    with sock:
        address, port = sock.getsockname()[:2]
        bound = f"[{address}]" if ":" in address else address
        assert hosts == [f"localhost:{port}", f"{bound}:{port}"]
    sock, hosts = bind_http("127.0.0.1", 0)  # what 127.0.0.1 is called: localhost too
    with sock:
        port = sock.getsockname()[1]
        assert hosts == [f"127.0.0.1:{port}", f"localhost:{port}"]
    # With API keys (run() passes allow_remote) a wildcard binds, for the names given.
    sock, hosts = bind_http("0.0.0.0", 0, allow_remote=True, allowed_hosts=["mcp.example"])
    with sock:
        assert hosts == ["mcp.example"]


async def test_foreign_host_or_origin_is_refused() -> None:
    with mcp_http_server(host="127.0.0.2") as (_proc, url):
        port = url.split(":")[2].split("/")[0]
        async with httpx2.AsyncClient(timeout=30) as http:
            async def status(**headers: str) -> int:
                answer = await http.post(url, json=INIT, headers={**HEADERS, **headers})
                return int(answer.status_code)

            assert await status(Host=f"evil.example:{port}") == 421  # a rebound name
            assert await status(Host=f"127.0.0.1:{port}") == 421  # not what is bound
            assert await status(Host=f"localhost:{port}") == 421
            assert await status(Origin="http://evil.example") == 403  # a foreign page
            assert await status(Origin=f"http://evil.example:{port}") == 403
            assert (await http.get(url, headers={"Host": "evil.example"})).status_code == 421
            assert await status() == 200
            assert await status(Origin=f"http://127.0.0.2:{port}") == 200

        # The SDK client, as a browser on a rebound name would send it: refused.
        rebound = httpx2.AsyncClient(headers={"Host": f"evil.example:{port}"}, timeout=30)
        with pytest.raises(Exception):  # noqa: B017  (the SDK's error type is not public)
            async with rebound, Client(streamable_http_client(url, http_client=rebound),
                                       mode="legacy") as client:
                await client.list_tools()
        # And as it is: served.
        async with Client(url, mode="legacy") as client:
            assert {t.name for t in (await client.list_tools()).tools} >= {"run_code"}


# -- idle sessions -----------------------------------------------------------------------------
IDLE_S = 6.0  # long enough for the set-up below on a loaded machine, short for the test
REAP_MARGIN_S = 20.0  # the reaper runs every IDLE_S / 4; the rest is a loaded machine


async def test_idle_sessions_do_not_lock_out_a_new_client(engine: Any) -> None:
    with mcp_http_server("--idle-timeout", str(IDLE_S)) as (proc, url):
        async with AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx2.AsyncClient(timeout=30))
            # Two real clients that used a sandbox and went quiet (the SDK client keeps
            # its SSE GET stream open the whole time, which the SDK counts as activity).
            clients = [await stack.enter_async_context(Client(url, mode="legacy"))
                       for _ in range(2)]
            # No session's last request can end before this: none is idle before + IDLE_S.
            before_quiet = time.monotonic()
            # Both sandboxes start at once, so neither session is idle while the other starts.
            async with anyio.create_task_group() as tg:
                for n, client in enumerate(clients):
                    tg.start_soon(run_code_expecting, client, f"{n} + 1", str(n + 1))
            assert len(containers_of(engine, proc.pid)) == 2
            # The rest of the slots: bare initializes, a few holding a GET stream too.
            for n in range(HTTP_MAX_SESSIONS - 2):
                answer = await http.post(url, json=INIT, headers=HEADERS)
                assert answer.status_code == 200, answer.text
                if n % 8 == 0:
                    stream = http.stream("GET", url, headers={
                        "Accept": "text/event-stream",
                        "mcp-session-id": answer.headers["mcp-session-id"]})
                    assert (await stack.enter_async_context(stream)).status_code == 200
            quiet_since = time.monotonic()

            # Full: a new client is told so at once, and when to come back.
            started = time.monotonic()
            refused = await http.post(url, json=INIT, headers=HEADERS)
            assert time.monotonic() - started < 5
            assert refused.status_code == 503
            assert 1 <= int(refused.headers["Retry-After"]) <= IDLE_S + 1
            assert "too many open sessions" in json.dumps(refused.json())

            # It gets in once the idle ones are reclaimed: within the idle timeout (+ margin).
            while (answer := await http.post(url, json=INIT, headers=HEADERS)).status_code == 503:
                assert time.monotonic() - quiet_since < IDLE_S + REAP_MARGIN_S
                await _sleep_briefly()
            assert answer.status_code == 200
            assert time.monotonic() - before_quiet >= IDLE_S  # not before one was idle

            # The idle sessions' sandboxes are removed.
            deadline = time.monotonic() + REAP_MARGIN_S
            while containers_of(engine, proc.pid) and time.monotonic() < deadline:
                await _sleep_briefly()
            assert containers_of(engine, proc.pid) == []

            # A real client works again, with a sandbox of its own.
            async with Client(url, mode="legacy") as fresh:
                assert text(await fresh.call_tool("run_code", {"code": "6 * 7"})) == "42"
                assert len(containers_of(engine, proc.pid)) == 1
            # The reclaimed clients' closing DELETEs (404 now) and GET streams end quietly.
        assert proc.poll() is None  # the server kept serving through all of it


async def run_code_expecting(client: Client, code: str, expected: str) -> None:
    assert text(await client.call_tool("run_code", {"code": code})) == expected


async def _sleep_briefly() -> None:
    await anyio.sleep(0.2)


# -- stateless handles (protocol 2026-07-28, the SDK client's default mode) ----------------
HANDLE_IDLE_S = 4.0


async def test_stateless_sandboxes_are_bounded_and_idle_ones_reclaimed(engine: Any) -> None:
    # A default-mode client has no session: each run_code without `session` starts a
    # sandbox. Unbounded, a loop of them would fill the engine; now at most
    # --max-sessions are open, a new one past that is refused at once, an idle one is
    # removed after the idle timeout, and one whose call is still running is not.
    with mcp_http_server("--max-sessions", "2", "--idle-timeout",
                    str(HANDLE_IDLE_S)) as (proc, url):
        async with Client(url) as client:
            first = await client.call_tool("run_code", {"code": "v = 1"})
            assert first.meta is not None and not first.is_error
            busy_handle = first.meta["agentbox/session"]
            busy: list[CallToolResult] = []

            async def stay_busy() -> None:  # in flight until told to stop, past the timeout
                busy.append(await client.call_tool("run_code", {"session": busy_handle, "code": (
                    "import os, time\nt = time.monotonic()\n"
                    "while not os.path.exists('go') and time.monotonic() - t < 60:\n"
                    "    time.sleep(0.05)\nv")}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(stay_busy)
                second = await client.call_tool("run_code", {"code": "v = 2"})
                assert second.meta is not None and not second.is_error
                quiet_handle = second.meta["agentbox/session"]
                quiet_since = time.monotonic()
                full = await client.call_tool("run_code", {"code": "1"})
                assert time.monotonic() - quiet_since < 5  # refused at once
                assert full.is_error and "too many open sandboxes (2)" in text(full)
                assert len(containers_of(engine, proc.pid)) == 2

                # The quiet handle is reclaimed after the idle timeout, the busy one not.
                while len(containers_of(engine, proc.pid)) > 1:
                    assert time.monotonic() - quiet_since < HANDLE_IDLE_S + REAP_MARGIN_S
                    await _sleep_briefly()
                assert time.monotonic() - quiet_since >= HANDLE_IDLE_S
                assert not busy  # still running, longer than the idle timeout by now
                await client.call_tool("upload_file", {"session": busy_handle, "path": "go",
                                                       "text": ""})
            assert not busy[0].is_error and text(busy[0]) == "1"  # not reclaimed mid-call
            gone = await client.call_tool("run_code", {"code": "v", "session": quiet_handle})
            assert gone.is_error and "unknown session" in text(gone)
            again = await client.call_tool("run_code", {"code": "v", "session": busy_handle})
            assert text(again) == "1"  # the busy one kept its state
            fresh = await client.call_tool("run_code", {"code": "6 * 7"})  # a slot is free
            assert not fresh.is_error and text(fresh).startswith("42")
        assert proc.poll() is None
