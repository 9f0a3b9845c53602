"""A typed client for the Agent Box HTTP API (v1), synchronous and asynchronous.

    with AgentBoxClient("http://127.0.0.1:8000", api_key="...") as client:
        with client.create_session() as box:
            result = box.execute("import pandas as pd; pd.DataFrame({'a': [1]})")
            result.status, result.dataframes, result.images
            for item in box.stream("print('hi')"):   # outputs, then the ExecutionResult
                ...

``AsyncAgentBoxClient`` mirrors it with ``await`` and ``async for``. Results are
:class:`sandbox.ExecutionResult`; every HTTP error is an :class:`ApiClientError`.
Each request is described once (a :class:`_Call`) and sent by either transport.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from sandbox._extras import require

require("the HTTP client", "client", "httpx")

import httpx  # noqa: E402

from api import _sse  # noqa: E402
from sandbox import ExecutionResult, FileInfo, Output  # noqa: E402
from sandbox._models import output_from_dict  # noqa: E402

T = TypeVar("T")
StreamItem = Output | dict[str, Any] | ExecutionResult
"""What ``stream`` yields: outputs (``clear_output`` and ``update_display_data`` as
plain dicts), then the :class:`ExecutionResult` last."""

# Requests that run code or start a sandbox: no read limit (the server enforces the
# cell's timeout and keeps event streams alive), 30 s for everything else.
_LONG = httpx.Timeout(30.0, read=None)


class ApiClientError(Exception):
    """An error answer of the API. ``status`` is the HTTP status; 0 when the error came
    inside an event stream (after the 200) or the stream ended without a result."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A session as the server describes it."""

    id: str
    status: str
    created_at: float
    limits: dict[str, Any]
    metadata: dict[str, str]
    from_pool: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionDescription:
        return cls(id=data["id"], status=data["status"], created_at=data["created_at"],
                   limits=dict(data["limits"]), metadata=dict(data["metadata"]),
                   from_pool=bool(data.get("from_pool", False)))


# -- requests, described once -------------------------------------------------------------
@dataclass
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    long: bool = False  # runs code: no read timeout (the server enforces the cell's)
    accept: tuple[int, ...] = field(default=())  # non-2xx statuses that are answers


def _none(_: httpx.Response) -> None:
    return None


def _json(response: httpx.Response) -> Any:
    return response.json()


def _result(response: httpx.Response) -> ExecutionResult:
    return ExecutionResult.from_dict(response.json())


def _describe(response: httpx.Response) -> SessionDescription:
    return SessionDescription.from_dict(response.json())


def _sessions(response: httpx.Response) -> list[SessionDescription]:
    return [SessionDescription.from_dict(s) for s in response.json()["sessions"]]


def _files(response: httpx.Response) -> list[FileInfo]:
    return [FileInfo(**f) for f in response.json()["files"]]


def _bytes(response: httpx.Response) -> bytes:
    return response.content


def _s(session_id: str, rest: str = "") -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}{rest}"


def _f(session_id: str, path: str) -> str:
    """The file's URL, its path sent as given: '.' and '..' segments percent-encoded so
    that no URL normalisation resolves them on the way (the server judges the path)."""
    parts = [quote(p, safe="").replace(".", "%2E") if p in (".", "..") else quote(p, safe="")
             for p in path.split("/")]
    return _s(session_id, "/files/" + "/".join(parts))


def _create(limits: dict[str, Any] | None, env: dict[str, str] | None,
            metadata: dict[str, str] | None) -> _Call[SessionDescription]:
    return _Call("POST", "/v1/sessions", _describe,
                 json={"limits": limits or {}, "env": env or {}, "metadata": metadata or {}},
                 long=True)


def _list(metadata: dict[str, str] | None) -> _Call[list[SessionDescription]]:
    params = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
    return _Call("GET", "/v1/sessions", _sessions, params=params)


def _one_shot(code: str, timeout: float | None, limits: dict[str, Any] | None,
              env: dict[str, str] | None) -> _Call[ExecutionResult]:
    return _Call("POST", "/v1/execute", _result, json={
        "code": code, "timeout_s": timeout, "limits": limits or {}, "env": env or {}}, long=True)


def _upload(sid: str, path: str, data: bytes | str) -> _Call[None]:
    return _Call("PUT", _f(sid, path), _none,
                 content=data.encode() if isinstance(data, str) else data)


def _error_of(response: httpx.Response) -> ApiClientError:
    try:
        body = response.json()["error"]
        return ApiClientError(response.status_code, str(body["code"]), str(body["message"]))
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:500] or response.reason_phrase
        return ApiClientError(response.status_code, "http_error", text)


def _check(response: httpx.Response, accept: tuple[int, ...] = ()) -> None:
    if not response.is_success and response.status_code not in accept:
        raise _error_of(response)


# -- server-sent events (framed and parsed in api/_sse.py) -------------------------------
def _item(event: str, data: Any) -> StreamItem | None:
    if event == "output":
        if data.get("type") in ("stream", "display_data", "execute_result", "error"):
            return output_from_dict(data)
        out: dict[str, Any] = data
        return out  # clear_output, update_display_data
    if event == "result":
        return ExecutionResult.from_dict(data)
    if event == "error":
        err = data.get("error", {})
        raise ApiClientError(0, str(err.get("code", "stream_error")), str(err.get("message")))
    return None  # unknown event types are ignored, as SSE says


def _feed(parser: _sse.Parser, line: str) -> StreamItem | None:
    event = parser.feed(line)
    return None if event is None else _item(*event)


def _ended() -> ApiClientError:
    return ApiClientError(0, "stream_ended", "the event stream ended without a result")


def _items(lines: Iterable[str]) -> Iterator[StreamItem]:
    parser = _sse.Parser()
    for line in itertools.chain(lines, [""]):
        if (item := _feed(parser, line)) is not None:
            yield item
            if isinstance(item, ExecutionResult):
                return
    raise _ended()


async def _alines(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        yield line
    yield ""


def _exec_body(code: str, timeout: float | None) -> dict[str, Any]:
    return {"code": code, "timeout_s": timeout}


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# -- synchronous --------------------------------------------------------------------------
class AgentBoxClient:
    """Synchronous client (``httpx.Client``); close it, or use it as a context manager."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key),
                                  timeout=timeout, transport=transport)

    def __enter__(self) -> AgentBoxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: _Call[T]) -> T:
        response = self._http.request(call.method, call.path, json=call.json,
                                      content=call.content, params=call.params,
                                      timeout=_LONG if call.long else httpx.USE_CLIENT_DEFAULT)
        _check(response, call.accept)
        return call.parse(response)

    def create_session(self, limits: dict[str, Any] | None = None,
                       env: dict[str, str] | None = None,
                       metadata: dict[str, str] | None = None) -> RemoteSession:
        return RemoteSession(self, self._do(_create(limits, env, metadata)))

    def get_session(self, session_id: str) -> RemoteSession:
        return RemoteSession(self, self._do(_Call("GET", _s(session_id), _describe)))

    def list_sessions(self, metadata: dict[str, str] | None = None) -> list[SessionDescription]:
        return self._do(_list(metadata))

    def execute(self, code: str, timeout: float | None = None,
                limits: dict[str, Any] | None = None,
                env: dict[str, str] | None = None) -> ExecutionResult:
        """One-shot: a fresh sandbox runs *code* and is removed."""
        return self._do(_one_shot(code, timeout, limits, env))

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._do(_Call("GET", "/healthz", _json, accept=(503,)))
        return result


class RemoteSession:
    """A session on the server; as a context manager it is deleted on exit."""

    def __init__(self, client: AgentBoxClient, info: SessionDescription) -> None:
        self._client, self.info, self.id = client, info, info.id
        self._closed = False

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        return self._client._do(_Call("POST", _s(self.id, "/execute"), _result,
                                      json=_exec_body(code, timeout), long=True))

    def stream(self, code: str, timeout: float | None = None) -> Iterator[StreamItem]:
        """Each output as published, then the :class:`ExecutionResult`. Leaving the
        loop early closes the connection, which interrupts the cell."""
        with self._client._http.stream(
                "POST", _s(self.id, "/execute"), json=_exec_body(code, timeout),
                headers={"Accept": "text/event-stream"},
                timeout=_LONG) as response:
            if not response.is_success:
                response.read()
                raise _error_of(response)
            yield from _items(response.iter_lines())

    def interrupt(self) -> None:
        self._client._do(_Call("POST", _s(self.id, "/interrupt"), _none))

    def restart(self) -> SessionDescription:
        self.info = self._client._do(_Call("POST", _s(self.id, "/restart"), _describe, long=True))
        return self.info

    def upload(self, path: str, data: bytes | str) -> None:
        self._client._do(_upload(self.id, path, data))

    def download(self, path: str) -> bytes:
        return self._client._do(_Call("GET", _f(self.id, path), _bytes))

    def list_files(self) -> list[FileInfo]:
        return self._client._do(_Call("GET", _s(self.id, "/files"), _files))

    def delete_file(self, path: str) -> None:
        self._client._do(_Call("DELETE", _f(self.id, path), _none))

    def notebook(self) -> dict[str, Any]:
        """The session's cells and outputs as nbformat 4 JSON (also after closing)."""
        nb: dict[str, Any] = self._client._do(_Call("GET", _s(self.id, "/notebook"), _json))
        return nb

    def close(self) -> None:
        """Delete the session; idempotent (a session already gone is not an error)."""
        if not self._closed:
            self._closed = True
            self._client._do(_Call("DELETE", _s(self.id), _none, accept=(404,)))


# -- asynchronous -------------------------------------------------------------------------
class AsyncAgentBoxClient:
    """The asynchronous twin of :class:`AgentBoxClient` (``httpx.AsyncClient``)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key),
                                       timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncAgentBoxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close

    async def _do(self, call: _Call[T]) -> T:
        response = await self._http.request(
            call.method, call.path, json=call.json, content=call.content, params=call.params,
            timeout=_LONG if call.long else httpx.USE_CLIENT_DEFAULT)
        _check(response, call.accept)
        return call.parse(response)

    async def create_session(self, limits: dict[str, Any] | None = None,
                             env: dict[str, str] | None = None,
                             metadata: dict[str, str] | None = None) -> AsyncRemoteSession:
        return AsyncRemoteSession(self, await self._do(_create(limits, env, metadata)))

    async def get_session(self, session_id: str) -> AsyncRemoteSession:
        return AsyncRemoteSession(self, await self._do(_Call("GET", _s(session_id), _describe)))

    async def list_sessions(self, metadata: dict[str, str] | None = None
                            ) -> list[SessionDescription]:
        return await self._do(_list(metadata))

    async def execute(self, code: str, timeout: float | None = None,
                      limits: dict[str, Any] | None = None,
                      env: dict[str, str] | None = None) -> ExecutionResult:
        return await self._do(_one_shot(code, timeout, limits, env))

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._do(_Call("GET", "/healthz", _json, accept=(503,)))
        return result


class AsyncRemoteSession:
    """A session on the server; ``async with`` deletes it on exit."""

    def __init__(self, client: AsyncAgentBoxClient, info: SessionDescription) -> None:
        self._client, self.info, self.id = client, info, info.id
        self._closed = False

    async def __aenter__(self) -> AsyncRemoteSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def execute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        return await self._client._do(_Call("POST", _s(self.id, "/execute"), _result,
                                            json=_exec_body(code, timeout), long=True))

    async def stream(self, code: str, timeout: float | None = None
                     ) -> AsyncIterator[StreamItem]:
        async with self._client._http.stream(
                "POST", _s(self.id, "/execute"), json=_exec_body(code, timeout),
                headers={"Accept": "text/event-stream"},
                timeout=_LONG) as response:
            if not response.is_success:
                await response.aread()
                raise _error_of(response)
            parser = _sse.Parser()
            async for line in _alines(response):
                if (item := _feed(parser, line)) is not None:
                    yield item
                    if isinstance(item, ExecutionResult):
                        return
            raise _ended()

    async def interrupt(self) -> None:
        await self._client._do(_Call("POST", _s(self.id, "/interrupt"), _none))

    async def restart(self) -> SessionDescription:
        self.info = await self._client._do(_Call("POST", _s(self.id, "/restart"), _describe,
                                                 long=True))
        return self.info

    async def upload(self, path: str, data: bytes | str) -> None:
        await self._client._do(_upload(self.id, path, data))

    async def download(self, path: str) -> bytes:
        return await self._client._do(_Call("GET", _f(self.id, path), _bytes))

    async def list_files(self) -> list[FileInfo]:
        return await self._client._do(_Call("GET", _s(self.id, "/files"), _files))

    async def delete_file(self, path: str) -> None:
        await self._client._do(_Call("DELETE", _f(self.id, path), _none))

    async def notebook(self) -> dict[str, Any]:
        nb: dict[str, Any] = await self._client._do(_Call("GET", _s(self.id, "/notebook"), _json))
        return nb

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client._do(_Call("DELETE", _s(self.id), _none, accept=(404,)))
