"""Executing cells for real: outputs, streaming, rich types, one-at-a-time."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Iterator

import pytest

from sandbox import (
    DATAFRAME_MIME,
    AsyncSession,
    ErrorOutput,
    Session,
    SessionBusyError,
    SessionClosedError,
    StreamOutput,
)

pytestmark = pytest.mark.usefixtures("engine")


@pytest.fixture(scope="module")
def box() -> Iterator[Session]:
    with Session() as session:
        yield session


def test_value_stdout_stderr_and_state_between_cells(box: Session) -> None:
    first = box.execute("x = 20\nprint('out'); import sys; print('err', file=sys.stderr)\nx + 1")
    assert first.status == "ok"
    assert first.stdout == "out\n" and first.stderr == "err\n"
    assert first.text == "21"
    second = box.execute("x * 2")
    assert second.text == "40"
    assert second.execution_count == first.execution_count + 1  # type: ignore[operator]


def test_error_result_has_plain_traceback(box: Session) -> None:
    result = box.execute("def f():\n    return 1/0\nf()")
    assert result.status == "error"
    assert result.error is not None and result.error.ename == "ZeroDivisionError"
    text = "\n".join(result.error.traceback)
    assert "\x1b[" not in text and "return 1/0" in text


def test_dataframe_comes_as_html_and_structured_json(box: Session) -> None:
    result = box.execute(
        "import pandas as pd\n"
        "df = pd.DataFrame({'city': ['Lisbon', 'Porto'] * 40, 'n': range(80),"
        " 'when': pd.date_range('2025-01-01', periods=80)})\n"
        "df")
    assert result.ok, result
    assert result.html and "<table" in result.html[0]
    (frame,) = result.dataframes
    assert frame["shape"] == [80, 3]
    assert frame["columns"] == ["city", "n", "when"]
    assert frame["dtypes"][1] == "int64"
    assert frame["data"][1][:2] == ["Porto", 1]
    assert frame["truncated_rows"] is True and len(frame["data"]) == 50
    series = box.execute("df['n'].head(3)")
    assert series.dataframes[0]["kind"] == "series" and series.dataframes[0]["shape"] == [3, 1]


def test_matplotlib_figure_is_a_valid_png_and_is_closed(box: Session) -> None:
    from PIL import Image

    result = box.execute("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')")
    assert result.ok, result
    (mime, png), = result.images
    assert mime == "image/png"
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert box.execute("len(plt.get_fignums())").text == "0"
    svg = box.execute("%config InlineBackend.figure_formats = ['svg']\n"
                      "plt.plot([1, 2]); None")
    assert svg.images and svg.images[0][0] == "image/svg+xml"
    box.execute("%config InlineBackend.figure_formats = ['png']")


def test_full_mime_bundle_clear_and_update(box: Session) -> None:
    result = box.execute(
        "from IPython.display import display, HTML, JSON, Markdown, Latex, clear_output\n"
        "display({'text/plain': 'p', 'application/vnd.custom+json': {'a': 1},"
        " 'text/markdown': '**m**'}, raw=True, metadata={'k': 'v'})\n"
        "h = display(HTML('<b>one</b>'), display_id=True)\n"
        "h.update(HTML('<b>two</b>'))\n"
        "display(Latex('$x$'))")
    assert result.ok, result
    custom, html, latex = result.displays
    assert custom.data["application/vnd.custom+json"] == {"a": 1}
    assert custom.data["text/markdown"] == "**m**" and custom.metadata == {"k": "v"}
    assert html.data["text/html"] == "<b>two</b>"  # update_display_data applied
    assert latex.data["text/latex"] == "$x$"
    cleared = box.execute("print('gone')\nclear_output(wait=True)\nprint('kept')")
    assert [o.text for o in cleared.outputs if isinstance(o, StreamOutput)] == ["kept\n"]


def test_code_with_a_nul_byte_is_refused_at_once(box: Session) -> None:
    from sandbox import ConfigError

    with pytest.raises(ConfigError, match="NUL"):
        box.execute("print(1)\n# \x00")
    assert box.execute("'fine'").text == "'fine'"


def test_input_fails_fast(box: Session) -> None:
    t0 = time.monotonic()
    result = box.execute("input('name? ')", timeout=20)
    assert result.status == "error"
    assert result.error is not None and "StdinNotImplementedError" in result.error.ename
    assert time.monotonic() - t0 < 5


def test_print_flood_is_truncated_and_bounded() -> None:
    from sandbox import SandboxConfig

    with Session(SandboxConfig(max_output_bytes=200_000)) as box:
        result = box.execute("import os\nfor i in range(200_000): print('x' * 50)\n"
                             "os.write(1, b'y' * 3_000_000)\n'done'", timeout=60)
    assert result.status == "ok" and result.text == "'done'"
    assert result.truncated
    assert len(result.stdout) < 200_000 + 1000
    assert "[output truncated" in result.stdout
    assert any("output truncated" in note for note in result.notes)


async def test_stream_delivers_first_output_before_the_cell_ends() -> None:
    async with AsyncSession() as box:
        t0 = time.monotonic()
        arrivals: list[tuple[float, object]] = []
        async for event in box.stream("import time\nprint(1)\ntime.sleep(2)\nprint(2)"):
            arrivals.append((time.monotonic() - t0, event))
    first_at, first = arrivals[0]
    last_at, result = arrivals[-1]
    assert isinstance(first, StreamOutput) and first.text == "1\n"
    assert last_at >= 2.0
    assert first_at < last_at - 1.5  # well before the end
    assert result.stdout == "1\n2\n"  # type: ignore[attr-defined]


async def test_executions_on_one_session_take_turns() -> None:
    async with AsyncSession() as box:
        slow = asyncio.create_task(box.execute("import time; time.sleep(1); 'a'"))
        await asyncio.sleep(0.2)
        with pytest.raises(SessionBusyError):
            await box.execute("'b'", wait=False)
        queued = await box.execute("'c'")  # waits its turn
        assert (await slow).text == "'a'" and queued.text == "'c'"


async def test_a_slow_session_does_not_block_another() -> None:
    async with AsyncSession() as slow_box, AsyncSession() as fast_box:
        slow = asyncio.create_task(slow_box.execute("import time; time.sleep(3)"))
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        fast = await fast_box.execute("1 + 1")
        assert fast.text == "2" and time.monotonic() - t0 < 1.5
        assert (await slow).ok


async def test_close_removes_container_and_dir_and_is_idempotent(engine: object) -> None:
    box = await AsyncSession().start()
    container_id, run_dir = box.container_id, box.run_dir
    assert run_dir.is_dir()
    await box.close()
    await box.close()
    assert not run_dir.exists()
    assert not engine.containers.list(all=True, filters={"id": container_id})  # type: ignore[attr-defined]
    with pytest.raises(SessionClosedError):
        await box.execute("1")


def test_error_output_type(box: Session) -> None:
    result = box.execute("raise ValueError('\\x1b[31mred\\x1b[0m')")
    assert isinstance(result.outputs[-1], ErrorOutput)
    assert result.error is not None and result.error.evalue == "red"


def test_binary_outputs_stay_base64_like_nbformat(box: Session) -> None:
    result = box.execute("from IPython.display import Image\n"
                         "import base64\n"
                         "Image(data=base64.b64decode("
                         "'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=='))")
    png = result.result.data["image/png"]  # type: ignore[union-attr]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert DATAFRAME_MIME not in result.result.data  # type: ignore[union-attr]


def test_pandas_is_not_imported_until_the_user_does(box: Session) -> None:
    with Session() as fresh:
        assert fresh.execute("import sys; 'pandas' in sys.modules").text == "False"


def test_a_100_mb_display_is_refused_without_hanging_or_hoarding_memory() -> None:
    import resource

    with Session() as box:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.monotonic()
        result = box.execute("from IPython.display import display\n"
                             "display({'text/plain': 'x' * (100 * 2**20)}, raw=True)\n"
                             "print('after')", timeout=60)
        grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert time.monotonic() - t0 < 30
        assert grew_mb < 100  # the host never held the 100 MB message
        assert all("x" * 1000 not in str(o.to_dict()) for o in result.outputs)
        assert box.execute("1 + 1").text == "2"  # the session is still usable


async def test_closing_a_stream_early_interrupts_the_cell() -> None:
    async with AsyncSession() as box:
        events = box.stream("import time\nprint('go')\ntime.sleep(60)")
        first = await events.__anext__()
        assert isinstance(first, StreamOutput)
        await events.aclose()  # type: ignore[attr-defined]
        t0 = time.monotonic()
        result = await box.execute("'next'")
        assert result.text == "'next'" and result.status == "ok"
        assert time.monotonic() - t0 < 10
