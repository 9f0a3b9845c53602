"""The typed client against the real service (uvicorn in a thread, real kernels)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import nbformat
import pytest

from api.client import (
    AgentBoxClient,
    ApiClientError,
    AsyncAgentBoxClient,
    RemoteSession,
    _items,
)
from sandbox import ErrorOutput, ExecutionResult, FileInfo, StreamOutput
from tests.api.conftest import KEY_A, KEY_B, make_settings, run_server

pytestmark = pytest.mark.usefixtures("engine")



@pytest.fixture(scope="module")
def client_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(make_settings(tmp_path_factory.mktemp("api-data"))) as url:
        yield url


@pytest.fixture
def client(client_server: str) -> Iterator[AgentBoxClient]:
    with AgentBoxClient(client_server, api_key=KEY_A) as c:
        yield c


# -- sync -------------------------------------------------------------------------------
def test_session_runs_cells_and_returns_typed_results(client: AgentBoxClient) -> None:
    with client.create_session(metadata={"team": "data"}, env={"GREETING": "hi"}) as box:
        assert isinstance(box, RemoteSession) and box.info.metadata == {"team": "data"}
        value = box.execute("import os\nprint(os.environ['GREETING'])\nx = 41\nx + 1")
        assert isinstance(value, ExecutionResult)
        assert value.ok and value.text == "42" and value.stdout == "hi\n"
        frame = box.execute("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
        assert frame.ok and frame.dataframes[0]["shape"] == [2, 2]
        assert frame.dataframes[0]["columns"] == ["a", "b"]
        plot = box.execute("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
        (mime, png), = plot.images
        assert mime == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n"
        failed = box.execute("1 / 0")
        assert failed.status == "error"
        assert failed.error is not None and failed.error.ename == "ZeroDivisionError"
        assert box.execute("x").text == "41"  # state kept across cells

        listed = client.list_sessions(metadata={"team": "data"})
        assert [s.id for s in listed] == [box.id]
        assert client.list_sessions(metadata={"team": "other"}) == []
        again = client.get_session(box.id)
        assert again.id == box.id and again.info.status == "ready"
    with pytest.raises(ApiClientError) as gone:
        client.get_session(box.id)
    assert gone.value.status == 404 and gone.value.code == "session_not_found"
    box.close()  # idempotent


def test_stream_yields_outputs_as_they_come_then_the_result(client: AgentBoxClient) -> None:
    with client.create_session() as box:
        t0 = time.monotonic()
        arrivals = [(time.monotonic() - t0, item) for item in box.stream(
            "import time\nfrom IPython.display import clear_output, display\n"
            "print('first', flush=True)\ntime.sleep(1.5)\nclear_output()\n"
            "display({'text/plain': 'shown'}, raw=True)\n'end'")]
        (first_at, first), (last_at, result) = arrivals[0], arrivals[-1]
        assert isinstance(first, StreamOutput) and first.text == "first\n"
        assert first_at < last_at - 1.0
        kinds = [type(item).__name__ if not isinstance(item, dict) else item["type"]
                 for _, item in arrivals]
        assert kinds == ["StreamOutput", "clear_output", "DisplayOutput", "DisplayOutput",
                         "ExecutionResult"]
        assert isinstance(result, ExecutionResult) and result.text == "'end'"
        assert result.stdout == ""  # cleared
        errors = list(box.stream("raise ValueError('nope')"))
        assert isinstance(errors[0], ErrorOutput) and errors[0].evalue == "nope"
        assert isinstance(errors[-1], ExecutionResult) and errors[-1].status == "error"


def test_files_upload_list_download_delete(client: AgentBoxClient) -> None:
    with client.create_session() as box:
        box.upload("data/in.csv", "a,b\n1,2\n")
        box.upload("blob.bin", bytes(range(256)))
        assert box.execute("import pandas as pd\nint(pd.read_csv('data/in.csv')['b'].sum())").text == "2"
        box.execute("open('data/out.txt', 'w').write('from the box')")
        files = {f.path: f for f in box.list_files()}
        assert all(isinstance(f, FileInfo) for f in files.values())
        assert files["blob.bin"].size == 256 and files["data"].is_dir
        assert {"data/in.csv", "data/out.txt"} <= set(files)
        assert box.download("data/out.txt") == b"from the box"
        assert box.download("blob.bin") == bytes(range(256))
        box.delete_file("blob.bin")
        with pytest.raises(ApiClientError) as missing:
            box.download("blob.bin")
        assert missing.value.status == 404 and missing.value.code == "file_not_found"
        for escape in ("../../etc/passwd", "data/../../x", "/etc/passwd"):
            with pytest.raises(ApiClientError) as unsafe:
                box.download(escape)
            assert (unsafe.value.status, unsafe.value.code) == (400, "unsafe_path"), escape
        box.upload("with space & ü.txt", b"odd name")
        assert box.download("with space & ü.txt") == b"odd name"
        assert "with space & ü.txt" in {f.path for f in box.list_files()}


def test_notebook_is_valid_nbformat_and_outlives_the_session(client: AgentBoxClient) -> None:
    with client.create_session() as box:
        box.execute("print('one')")
        box.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
        live = box.notebook()
    nb = nbformat.reads(json.dumps(live), as_version=4)
    nbformat.validate(nb)
    nbformat.validate(nbformat.from_dict(live))
    assert [c.source for c in nb.cells] == ["print('one')", "import matplotlib.pyplot as plt\n"
                                            "plt.plot([1, 2])\nplt.show()"]
    assert nb.cells[0].outputs[0].text == "one\n"
    assert any("image/png" in o.get("data", {}) for o in nb.cells[1].outputs)
    closed = box.notebook()  # history outlives the session
    assert len(closed["cells"]) == 2


def test_restart_loses_state_and_interrupt_needs_a_session(client: AgentBoxClient) -> None:
    with client.create_session() as box:
        box.execute("y = 1")
        info = box.restart()
        assert info.id == box.id
        lost = box.execute("y")
        assert lost.status == "error" and lost.error is not None and lost.error.ename == "NameError"
        box.interrupt()  # nothing running: a no-op, not an error


def test_one_shot_execute_and_health(client: AgentBoxClient) -> None:
    result = client.execute("import os\nprint(os.environ['N'])\n6 * 7", env={"N": "7"},
                            limits={"memory_mb": 512})
    assert result.ok and result.text == "42" and result.stdout == "7\n"
    assert client.list_sessions() == []  # the one-shot sandbox is gone
    health = client.health()
    assert health["status"] == "ok" and health["engine"] is True


def test_keys_see_only_their_own_sessions_and_bad_keys_are_refused(
        client_server: str, client: AgentBoxClient) -> None:
    with client.create_session() as box, AgentBoxClient(client_server, api_key=KEY_B) as other:
        with pytest.raises(ApiClientError) as hidden:
            other.get_session(box.id)
        assert hidden.value.status == 404
        assert other.list_sessions() == []
        theirs = RemoteSession(other, box.info)
        with pytest.raises(ApiClientError) as no_exec:
            theirs.execute("1")
        assert no_exec.value.status == 404
        with pytest.raises(ApiClientError) as no_stream:
            list(theirs.stream("1"))
        assert no_stream.value.status == 404 and no_stream.value.code == "session_not_found"
    for key in ("wrong-key", None):
        with AgentBoxClient(client_server, api_key=key) as bad, pytest.raises(ApiClientError) as denied:
            bad.list_sessions()
        assert denied.value.status == 401 and denied.value.code == "unauthorized"


def test_invalid_requests_become_api_errors(client: AgentBoxClient) -> None:
    with pytest.raises(ApiClientError) as too_much:
        client.create_session(limits={"memory_mb": 10**9})
    assert too_much.value.status == 422 and too_much.value.code == "limit_exceeded"
    with pytest.raises(ApiClientError) as unknown:
        client.create_session(limits={"gpus": 1})
    assert unknown.value.status == 422 and "gpus" in unknown.value.message


# -- async ------------------------------------------------------------------------------
async def test_async_client_creates_executes_streams_and_cleans_up(client_server: str) -> None:
    async with AsyncAgentBoxClient(client_server, api_key=KEY_A) as client:
        box = await client.create_session(metadata={"via": "async"})
        async with box:
            result = await box.execute("import pandas as pd\npd.DataFrame({'n': [1, 2, 3]})")
            assert result.ok and result.dataframes[0]["shape"] == [3, 1]
            t0 = time.monotonic()
            items = [(time.monotonic() - t0, item) async for item in box.stream(
                "import time\nprint('a', flush=True)\ntime.sleep(1.5)\nprint('b')")]
            assert isinstance(items[0][1], StreamOutput) and items[0][1].text == "a\n"
            assert items[0][0] < items[-1][0] - 1.0
            final = items[-1][1]
            assert isinstance(final, ExecutionResult) and final.stdout == "a\nb\n"
            await box.upload("f.txt", b"async bytes")
            assert await box.download("f.txt") == b"async bytes"
            assert [f.path for f in await box.list_files()] == ["f.txt"]
            await box.delete_file("f.txt")
            assert [s.id for s in await client.list_sessions({"via": "async"})] == [box.id]
            assert (await client.get_session(box.id)).id == box.id
            nbformat.validate(nbformat.from_dict(await box.notebook()))
        assert await client.list_sessions({"via": "async"}) == []
        one = await client.execute("'once'")
        assert one.text == "'once'"
        assert (await client.health())["status"] == "ok"


async def test_async_interrupt_ends_a_running_cell(client_server: str) -> None:
    async with AsyncAgentBoxClient(client_server, api_key=KEY_A) as client:
        async with await client.create_session() as box:
            running = asyncio.create_task(box.execute("import time\ntime.sleep(30)"))
            await asyncio.sleep(1.0)
            with pytest.raises(ApiClientError) as busy:
                await box.execute("1")
            assert busy.value.status == 409 and busy.value.code == "session_busy"
            await box.interrupt()
            result = await asyncio.wait_for(running, 20)
            assert result.status == "error" and result.error is not None
            assert result.error.ename == "KeyboardInterrupt"
            assert (await box.restart()).id == box.id
        with pytest.raises(ApiClientError) as gone:
            await box.execute("1")
        assert gone.value.status == 404


# -- the SSE parser, on its own ---------------------------------------------------------
def test_sse_parser_handles_comments_multiline_data_and_a_missing_result() -> None:
    result = ExecutionResult(status="ok", execution_count=1, outputs=[], duration_s=0.01)
    lines = [": keep-alive", "", "event: output",
             'data: {"type": "stream", "name": "stdout",', 'data:  "text": "x"}', "",
             "event: output", 'data: {"type": "update_display_data", "display_id": "d",'
             ' "data": {}, "metadata": {}}', "", "event: ping", "data: {}", "",
             "event: result", f"data: {json.dumps(result.to_dict())}"]  # no final blank line
    items = list(_items(lines))
    assert items[0] == StreamOutput(name="stdout", text="x")
    assert items[1] == {"type": "update_display_data", "display_id": "d", "data": {},
                        "metadata": {}}
    assert isinstance(items[2], ExecutionResult) and len(items) == 3
    with pytest.raises(ApiClientError) as ended:
        list(_items(lines[:6]))
    assert ended.value.code == "stream_ended"
    with pytest.raises(ApiClientError) as failed:
        list(_items(["event: error", 'data: {"error": {"code": "session_lost", "message": "m"}}', ""]))
    assert (failed.value.status, failed.value.code, failed.value.message) == (0, "session_lost", "m")
