"""The HTTP API's protocol as the client sees it, with no transport: the error and session
types, each request described once (a :class:`_Call`), the parsing of answers and of
server-sent events. :mod:`api.client` sends these calls over ``httpx.Client`` or
``httpx.AsyncClient``; both share everything here.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
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


async def _then_blank(lines: AsyncIterable[str]) -> AsyncIterator[str]:
    async for line in lines:
        yield line
    yield ""  # as itertools.chain(lines, [""]) in _items: dispatch a last unterminated event


async def _aitems(lines: AsyncIterable[str]) -> AsyncIterator[StreamItem]:
    """:func:`_items` for an asynchronous stream of lines."""
    parser = _sse.Parser()
    async for line in _then_blank(lines):
        if (item := _feed(parser, line)) is not None:
            yield item
            if isinstance(item, ExecutionResult):
                return
    raise _ended()


def _exec_body(code: str, timeout: float | None) -> dict[str, Any]:
    return {"code": code, "timeout_s": timeout}


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
