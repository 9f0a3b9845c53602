"""`agentbox mcp` through the official MCP SDK's own client, against a real engine.

The server runs as a subprocess (`python -m sandbox.cli mcp`) with this process's
environment, so AGENTBOX_RUN_ROOT from tests/conftest.py applies and the session
leak check also covers what the server left behind.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, EmbeddedResource, ImageContent
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tests._mcp import AGENTBOX_MCP, ROOT, containers_of, mcp_http_server, text

pytestmark = pytest.mark.usefixtures("engine")

PNG = b"\x89PNG\r\n\x1a\n"
SERVER = StdioServerParameters(command=AGENTBOX_MCP[0], args=AGENTBOX_MCP[1:],
                               env=dict(os.environ), cwd=str(ROOT))


@asynccontextmanager
async def stdio_session() -> AsyncIterator[ClientSession]:
    """A handshake-era session with a fresh `agentbox mcp` subprocess."""
    async with stdio_client(SERVER) as (read, write), \
            ClientSession(read, write, read_timeout_seconds=120) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession | Client, tool: str, **args: Any) -> CallToolResult:
    result = await session.call_tool(tool, args)
    assert isinstance(result, CallToolResult)
    return result


def server_pids() -> list[int]:
    """`sandbox.cli mcp` processes this test process started."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            if b"sandbox.cli\0mcp" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_tools_state_plots_and_tables() -> None:
    async with stdio_session() as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == {"run_code", "upload_file", "download_file", "list_files", "restart"}
        assert set(tools["run_code"].input_schema["properties"]) == {"code", "timeout_s", "session"}

        first = await call(session, "run_code", code="x = 41\nprint('set')")
        assert not first.is_error and text(first) == "set"
        assert text(await call(session, "run_code", code="x + 1")) == "42"

        plot = await call(session, "run_code", code=(
            "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()"))
        images = [c for c in plot.content if isinstance(c, ImageContent)]
        assert not plot.is_error and len(images) == 1 and images[0].mime_type == "image/png"
        blob = base64.b64decode(images[0].data)
        assert blob.startswith(PNG)
        assert f"[image: image/png, {len(blob)} bytes]" in text(plot)

        table = text(await call(session, "run_code", code=(
            "import pandas as pd\n"
            "pd.DataFrame({'city': ['Lisbon', 'Porto', 'Faro'], 'sales': [1250.5, 980.0, 312.25]})")))
        lines = table.splitlines()
        assert lines[0] == "DataFrame: 3 rows × 2 columns"
        assert "city" in lines[1] and "sales" in lines[1]
        assert any("Lisbon" in line and "1250.5" in line for line in lines[3:])

        failed = await call(session, "run_code", code="1 / 0")
        assert failed.is_error and "ZeroDivisionError: division by zero" in text(failed)
        assert text(await call(session, "run_code", code="x")) == "41"  # state survives errors

        bad = await call(session, "run_code", code="1", timeout_s=-1)
        assert bad.is_error and "timeout_s" in text(bad) and "greater than 0" in text(bad)


async def test_timeout_is_reported_and_the_next_call_works() -> None:
    async with stdio_session() as session:
        await call(session, "run_code", code="kept = 'yes'")
        started = time.monotonic()
        stuck = await call(session, "run_code", code="while True: pass", timeout_s=1)
        assert time.monotonic() - started < 30
        assert stuck.is_error and "[timeout]" in text(stuck) and "1s" in text(stuck)
        after = await call(session, "run_code", code="kept + '!'")
        assert not after.is_error and text(after) == "'yes!'"


async def test_files_round_trip_and_restart() -> None:
    async with stdio_session() as session:
        assert text(await call(session, "list_files")) == "(the working directory is empty)"
        binary = bytes(range(256)) * 4
        wrote = await call(session, "upload_file", path="data/blob.bin",
                           content_base64=base64.b64encode(binary).decode())
        assert text(wrote) == "wrote 1024 bytes to data/blob.bin"
        await call(session, "upload_file", path="notes.txt", text="héllo\n")
        listing = text(await call(session, "list_files")).splitlines()
        assert listing == ["data/", "data/blob.bin\t1024 bytes", "notes.txt\t7 bytes"]

        assert text(await call(session, "download_file", path="notes.txt")) == "héllo\n"
        got = await call(session, "download_file", path="data/blob.bin")
        resource = next(c for c in got.content if isinstance(c, EmbeddedResource))
        assert base64.b64decode(resource.resource.blob) == binary  # type: ignore[union-attr]

        seen = await call(session, "run_code", code="open('notes.txt').read().strip()")
        assert text(seen) == "'héllo'"
        await call(session, "run_code", code="import matplotlib.pyplot as plt\n"
                   "plt.plot([1, 2]); plt.savefig('fig.png')\ny = 1")
        figure = await call(session, "download_file", path="fig.png")
        assert isinstance(figure.content[0], ImageContent)
        assert base64.b64decode(figure.content[0].data).startswith(PNG)

        for bad in [dict(path="../etc/passwd"), dict(path="missing.txt")]:
            refused = await call(session, "download_file", **bad)
            assert refused.is_error and ("'..'" in text(refused) or "not_found" in text(refused))
        neither = await call(session, "upload_file", path="x.txt")
        assert neither.is_error and "exactly one of content_base64 or text" in text(neither)
        garbage = await call(session, "upload_file", path="x.txt", content_base64="***")
        assert garbage.is_error and "not valid base64" in text(garbage)

        restarted = await call(session, "restart")
        assert not restarted.is_error and "restarted" in text(restarted)
        cleared = await call(session, "run_code", code="y")
        assert cleared.is_error and "NameError" in text(cleared)
        assert "notes.txt\t7 bytes" in text(await call(session, "list_files"))  # files kept


async def test_disconnect_ends_the_server_and_removes_its_sandbox(engine: Any) -> None:
    before = set(server_pids())
    async with stdio_session() as session:
        (pid,) = set(server_pids()) - before
        assert containers_of(engine, pid) == []  # created lazily, on first use
        await call(session, "run_code", code="1")
        assert len(containers_of(engine, pid)) == 1
        await call(session, "run_code", code="2")
        assert len(containers_of(engine, pid)) == 1  # one sandbox per session
    assert gone(pid)
    assert containers_of(engine, pid) == []


async def test_signalled_server_still_removes_its_sandbox(engine: Any) -> None:
    before = set(server_pids())
    async with stdio_session() as session:
        (pid,) = set(server_pids()) - before
        await call(session, "run_code", code="1")
        assert len(containers_of(engine, pid)) == 1
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(pid)
        assert containers_of(engine, pid) == []


async def test_stateless_protocol_era_over_stdio_keeps_state() -> None:
    # mode="auto" probes server/discover: the 2026-07-28 era, where every request
    # carries its own envelope. Over stdio the process still serves one client.
    async with Client(SERVER, read_timeout_seconds=120) as client:
        assert client.session.protocol_version in MODERN_PROTOCOL_VERSIONS
        await call(client, "run_code", code="z = 6 * 7")
        result = await call(client, "run_code", code="z")
        assert not result.is_error and text(result) == "42"


async def test_streamable_http_one_sandbox_per_session(engine: Any) -> None:
    with mcp_http_server() as (proc, url):
        async with Client(url, mode="legacy") as one, Client(url, mode="legacy") as two:
            await call(one, "run_code", code="who = 'one'")
            await call(two, "run_code", code="who = 'two'")
            assert text(await call(one, "run_code", code="who")) == "'one'"
            assert text(await call(two, "run_code", code="who")) == "'two'"
            assert len(containers_of(engine, proc.pid)) == 2
        # Each client ended its session (DELETE): its sandbox goes, the server stays.
        deadline = time.monotonic() + 20
        while containers_of(engine, proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert containers_of(engine, proc.pid) == [] and proc.poll() is None

        async with Client(url) as stateless:  # 2026-07-28: no session; a handle names the box
            first = await call(stateless, "run_code", code="n = 5")
            assert not first.is_error and first.meta is not None
            handle = first.meta["agentbox/session"]
            again = await stateless.call_tool("run_code", {"code": "n * 2", "session": handle})
            assert isinstance(again, CallToolResult) and not again.is_error
            assert text(again) == "10"
            assert len(containers_of(engine, proc.pid)) == 1

        async with Client(url, mode="legacy") as three:
            await call(three, "run_code", code="1")
            assert len(containers_of(engine, proc.pid)) == 2  # with the stateless one
            proc.send_signal(signal.SIGTERM)  # graceful shutdown removes them too, exit 0
            assert proc.wait(timeout=30) == 0
        assert containers_of(engine, proc.pid) == []
