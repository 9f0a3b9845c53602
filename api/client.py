"""A typed client for the Agent Box HTTP API (v1), synchronous and asynchronous.

    with AgentBoxClient("http://127.0.0.1:8000", api_key="...") as client:
        with client.create_session() as box:
            result = box.execute("import pandas as pd; pd.DataFrame({'a': [1]})")
            result.status, result.dataframes, result.images
            for item in box.stream("print('hi')"):   # outputs, then the ExecutionResult
                ...

``AsyncAgentBoxClient`` mirrors it with ``await`` and ``async for``. Results are
:class:`sandbox.ExecutionResult`; every HTTP error is an :class:`ApiClientError`.
Each request is described once (a :class:`_Call`, in :mod:`api._client_base`) and sent by
either transport here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from sandbox._extras import require

require("the HTTP client", "client", "httpx")

import httpx  # noqa: E402

from api._client_base import (  # noqa: E402
    _LONG,
    ApiClientError,
    SessionDescription,
    StreamItem,
    T,
    _aitems,
    _bytes,
    _Call,
    _check,
    _create,
    _describe,
    _error_of,
    _exec_body,
    _f,
    _feed,  # noqa: F401  (re-exported: tests/api/test_wire_shape.py)
    _files,
    _headers,
    _items,
    _json,
    _list,
    _none,
    _one_shot,
    _result,
    _s,
    _upload,
)
from sandbox import ExecutionResult, FileInfo  # noqa: E402

__all__ = ["AgentBoxClient", "ApiClientError", "AsyncAgentBoxClient", "AsyncRemoteSession",
           "RemoteSession", "SessionDescription", "StreamItem"]


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
            async for item in _aitems(response.aiter_lines()):
                yield item

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
