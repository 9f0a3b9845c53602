"""A LangChain / LangGraph tool that runs Python in a sandbox (extra ``agentbox[langchain]``).

    from sandbox.integrations.langchain import SandboxTool   # or sandbox.langchain_tool

    with SandboxTool() as tool:                        # or: async with SandboxTool() as tool
        tool.invoke({"code": "x = 41"})
        tool.invoke({"code": "x + 1"})                 # '42'
        msg = tool.invoke({"type": "tool_call", "id": "1", "name": tool.name,
                           "args": {"code": "plt.plot([1, 2]); plt.show()"}})
        msg.content                                    # '[image: image/png, 18342 bytes]'
        msg.artifact.images                            # the ExecutionResult: [("image/png", b"...")]

The tool owns one sandbox, started on first use and removed by ``close()`` /
``aclose()`` / the context managers. Its model-facing output is the compact text
of :func:`sandbox.integrations._text.render_text` (what MCP returns too); with ``response_format=
"content_and_artifact"`` the full :class:`ExecutionResult` rides along as the
``ToolMessage`` artifact, so an orchestrator can show the images. An error in the
code is a normal result (its traceback as text), and its ``ToolMessage`` has
``status="error"`` (a cell that raised, timed out or whose kernel died: what MCP's
``isError`` says), so a graph can branch on a failed cell without parsing text; a
sandbox failure is a ``ToolException``, returned as text with ``status="error"`` too
(``handle_tool_error``).

Checkpoints: the artifact is a plain :class:`ExecutionResult` (a dataclass of this
package, which a checkpoint serializer need not know). To keep it in a LangGraph state
that is checkpointed, keep ``result.to_dict()`` (plain JSON) and rebuild the result
with the public :meth:`ExecutionResult.from_dict`, which round-trips every result kind.

``invoke`` starts a :class:`Session` (its own event loop thread), ``ainvoke`` an
:class:`AsyncSession` on the caller's loop. Whichever starts first is *the* sandbox:
``ainvoke`` on a sync-started tool runs it in a worker thread, and ``invoke`` on an
async-started tool runs on the owning loop when that loop is running in another
thread (else it is refused: the sandbox is bound to its loop).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.messages import ToolMessage
from langchain_core.tools import ArgsSchema, BaseTool, ToolException
from pydantic import BaseModel, Field, PrivateAttr

from sandbox._config import SandboxConfig
from sandbox._exceptions import SandboxError
from sandbox._models import ExecutionResult
from sandbox._session import AsyncSession, SessionState
from sandbox._sync import Session
from sandbox.integrations._text import MAX_TEXT_CHARS, render_text

T = TypeVar("T")

# The statuses of the cells one run()/arun() call ran. LangChain runs _run in a copy
# of the caller's context: the list object is shared, so _run can report through it.
_CELL_STATUSES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "agentbox_cell_statuses", default=None)


class SandboxInput(BaseModel):
    code: str = Field(description="Python source (IPython syntax) to run")
    timeout_s: float | None = Field(None, gt=0, le=3600,
                                    description="time limit for this call in seconds")


class SandboxTool(BaseTool):
    """Runs Python in a persistent, isolated IPython kernel (one sandbox per tool)."""

    name: str = "python_sandbox"
    description: str = (
        "Run Python code in a stateful sandbox (IPython kernel, no network, working "
        "directory /home/sandbox). Variables, imports and files persist between calls. "
        "Returns stdout/stderr, the last expression's value, DataFrames as markdown "
        "tables, [image: ...] markers for figures, and the traceback if the code fails. "
        "pandas, numpy, scipy and matplotlib are installed.")
    args_schema: ArgsSchema | None = SandboxInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    sandbox_config: SandboxConfig | None = None
    max_chars: int = MAX_TEXT_CHARS

    _sync: Session | None = PrivateAttr(None)
    _async: AsyncSession | None = PrivateAttr(None)
    _loop: asyncio.AbstractEventLoop | None = PrivateAttr(None)
    _starting: asyncio.Task[AsyncSession] | None = PrivateAttr(None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **kwargs: Any) -> None:
        # Errors come back as text the model can act on, not as exceptions.
        kwargs.setdefault("handle_tool_error", True)
        kwargs.setdefault("handle_validation_error", _invalid_input)
        super().__init__(**kwargs)

    @property
    def session(self) -> Session | AsyncSession | None:
        """The sandbox, once started (for uploads, downloads, ``info``...)."""
        return self._sync or self._async

    # -- LangChain entry points -------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        statuses: list[str] = []
        token = _CELL_STATUSES.set(statuses)
        try:
            return _mark_failed(super().run(*args, **kwargs), statuses)
        finally:
            _CELL_STATUSES.reset(token)

    async def arun(self, *args: Any, **kwargs: Any) -> Any:
        statuses: list[str] = []
        token = _CELL_STATUSES.set(statuses)
        try:
            return _mark_failed(await super().arun(*args, **kwargs), statuses)
        finally:
            _CELL_STATUSES.reset(token)

    def _output(self, result: ExecutionResult) -> tuple[str, ExecutionResult] | str:
        statuses = _CELL_STATUSES.get()
        if statuses is not None:
            statuses.append(result.status)
        text = render_text(result, max_chars=self.max_chars)
        return (text, result) if self.response_format == "content_and_artifact" else text

    def _run(self, code: str, timeout_s: float | None = None,
             run_manager: CallbackManagerForToolRun | None = None,
             ) -> tuple[str, ExecutionResult] | str:
        try:
            box = self._async
            if box is not None:
                result = self._on_owner_loop(box.execute(code, timeout=timeout_s))
            else:
                result = self._sync_session().execute(code, timeout=timeout_s)
        except SandboxError as exc:
            raise ToolException(str(exc)) from exc
        return self._output(result)

    async def _arun(self, code: str, timeout_s: float | None = None,
                    run_manager: AsyncCallbackManagerForToolRun | None = None,
                    ) -> tuple[str, ExecutionResult] | str:
        try:
            sync = self._sync
            if sync is not None:  # started by invoke: share it without blocking this loop
                result = await asyncio.to_thread(sync.execute, code, timeout=timeout_s)
            else:
                result = await (await self._async_session()).execute(code, timeout=timeout_s)
        except SandboxError as exc:
            raise ToolException(str(exc)) from exc
        return self._output(result)

    # -- the sandbox ----------------------------------------------------------------------
    def _sync_session(self) -> Session:
        with self._lock:
            if self._sync is None or self._sync.state is SessionState.CLOSED:
                self._sync = Session(self.sandbox_config).start()
            return self._sync

    async def _async_session(self) -> AsyncSession:
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise ToolException("this tool's sandbox was started on another event loop; use "
                                "the tool there, or aclose() it first")
        task = self._starting
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None
                                             or task.result().state is SessionState.CLOSED)):
            box = AsyncSession(self.sandbox_config)
            self._async, self._loop = box, loop
            task = self._starting = loop.create_task(box.start())
        try:
            return await asyncio.shield(task)  # a caller that leaves does not stop the start
        except SandboxError:
            if self._starting is task:
                self._async = self._loop = self._starting = None
            raise

    def _on_owner_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or not loop.is_running() or loop is _running_loop():
            coro.close()
            raise ToolException("this tool's sandbox was started by ainvoke and belongs to its "
                                "event loop; use ainvoke there (or close the tool first)")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the sandbox (idempotent). An async-started one needs its loop: running
        in another thread, or not running (then it is run here); else use aclose()."""
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        box, loop = self._async, self._loop
        if box is None or loop is None:
            return
        if loop.is_closed() or _running_loop() is loop:
            raise RuntimeError("this tool's sandbox was started by ainvoke: close it with "
                               "`await tool.aclose()` on the event loop that started it")
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(box.close(), loop).result()
        else:
            loop.run_until_complete(box.close())
        self._async = self._loop = self._starting = None

    async def aclose(self) -> None:
        """Remove the sandbox (idempotent), from the loop that started it if async."""
        sync, self._sync = self._sync, None
        if sync is not None:
            await asyncio.to_thread(sync.close)
        box = self._async
        if box is not None:
            if self._loop is not asyncio.get_running_loop():
                await asyncio.to_thread(self.close)
                return
            await box.close()
            self._async = self._loop = self._starting = None

    def __enter__(self) -> SandboxTool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SandboxTool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _mark_failed(output: Any, statuses: list[str]) -> Any:
    """A tool message of a cell that did not finish cleanly says so: status "error"."""
    if isinstance(output, ToolMessage) and any(s != "ok" for s in statuses):
        output.status = "error"
    return output


def _invalid_input(exc: Exception) -> str:
    return f"invalid input: {exc}"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
