"""What a client can hold before it has proven anything: bounded connections and bounded waits.

uvicorn's h11 protocol keeps a connection that never finishes its request head forever,
waits forever for a body that never ends, has no cap per client address, and lets the
accept loop log one line per failed ``accept()`` once descriptors run out. This module
closes those gaps with a subclass of uvicorn's ``H11Protocol`` (one per connection) and a
``ConnectionGuard`` (one per server) that counts connections in total and per client:

* a connection over a cap gets a canned 503 with ``Retry-After`` and is closed at once
  (before a byte of it is parsed);
* the request head must arrive within ``header_timeout_s`` of the connection opening or of
  its first byte (an idle keep-alive connection is uvicorn's ``timeout_keep_alive``);
* the body must arrive within ``body_timeout_s`` of the end of the head;
* a client that stops reading a response for ``send_timeout_s`` is cut;
* the total is kept below the descriptor limit (``connection_budget``), and an exhausted
  accept loop is logged as a rate, not once per failed ``accept()``.

Cuts and refusals are said: a 408/503 to the client when it can still be told, and a
rate-limited warning (``RateLimitedLog``) in the log, so an attack costs a bounded number
of log lines.

The uvicorn and asyncio internals this relies on are api/server/_compat.py's.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11

from api.server._compat import ACCEPT_OUT_OF_RESOURCES, ProtocolBase, cut_request
from api.server.coalesce import CoalescingTransport

log = logging.getLogger("agentbox.api.connections")

# Descriptors the server needs besides client connections (measured: 16 at start with
# the database and the engine client; a started session adds 15: its ZMQ sockets, their
# context's epoll and signalling fds, the engine connection).
BASE_FDS = 64
FDS_PER_SESSION = 16
# A soft RLIMIT_NOFILE below the hard one is raised up to this (never above the hard one).
NOFILE_TARGET = 65536


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_per_client: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    log_interval_s: float = 10.0


class RateLimitedLog:
    """Logs the first event at once, then at most one line per interval with the counts of
    what happened meanwhile: an attack costs a bounded number of log lines, and nothing
    is dropped unsaid (the counts are exact)."""

    def __init__(self, logger: logging.Logger, message: str, interval_s: float) -> None:
        self.logger, self.message, self.interval_s = logger, message, interval_s
        self.pending: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.last = -float("inf")
        self.flush_handle: asyncio.TimerHandle | None = None

    def note(self, kind: str) -> None:
        """Called on the event loop (protocol callbacks, the loop's exception handler)."""
        self.pending[kind] += 1
        self.totals[kind] += 1
        wait = self.last + self.interval_s - time.monotonic()
        if wait <= 0:
            self.flush()
        elif self.flush_handle is None:
            self.flush_handle = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if not self.pending:
            return
        self.last = time.monotonic()
        self.logger.warning(self.message, extra={"counts": dict(self.pending),
                                                 "window_s": self.interval_s})
        self.pending.clear()


def client_key(client: tuple[str, int] | None) -> str | None:
    """What the per-client cap counts: the IPv4 address, or the /64 of an IPv6 one (one
    host usually has a whole /64). None (a Unix socket) is not capped per client."""
    if client is None:
        return None
    try:
        ip = ipaddress.ip_address(client[0])
    except ValueError:
        return client[0]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def canned(status: int, code: str, message: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 response in our error format, written before (or instead of)
    parsing a request; it always closes the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


TOO_MANY = canned(503, "too_many_connections",
                  "too many open connections (from this address or in total); retry later",
                  "retry-after: 1")


class ConnectionGuard:
    """One per server: open connections in total and per client, and the shared log."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open = 0
        self.per_client: Counter[str] = Counter()
        self.events = RateLimitedLog(log, "http connections cut or refused", limits.log_interval_s)

    def admit(self, client: str | None) -> str | None:
        """None if the connection may stay (and is counted), else why not."""
        if self.open >= self.limits.max_connections:
            return "refused_total"
        if client is not None and self.per_client[client] >= self.limits.max_per_client:
            return "refused_per_client"
        self.open += 1
        if client is not None:
            self.per_client[client] += 1
        return None

    def release(self, client: str | None) -> None:
        self.open -= 1
        if client is not None:
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]


class GuardedH11Protocol(ProtocolBase):
    """uvicorn's h11 protocol plus caps and read/write deadlines (see the module doc)."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counted = False
        self._client_key: str | None = None
        self._fresh = True  # no request head seen yet: the header deadline runs from connect
        self._timing: str | None = None  # "head" or "body": what the deadline is for
        self._deadline: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # The response's head and body in one send (api/server/coalesce.py).
        super().connection_made(CoalescingTransport(transport, self.loop))
        self._client_key = client_key(self.client)
        refusal = self.guard.admit(self._client_key)
        if refusal is not None:
            self.guard.events.note(refusal)
            transport.write(TOO_MANY)
            transport.close()
            return
        self._counted = True
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        # The whole answer is written: send it now, not after what the app and uvicorn
        # still do in this step of the loop (the access-log line, the keep-alive timer).
        if isinstance(self.transport, CoalescingTransport):
            self.transport.flush()
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._counted:
            self._counted = False
            self.guard.release(self._client_key)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(self.guard.limits.send_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def upgrade_refused(self) -> None:
        # uvicorn logs two warnings per request with an Upgrade header; count them instead.
        self.guard.events.note("upgrade_refused")

    # -- deadlines ---------------------------------------------------------------------
    def _phase(self) -> str | None:
        """What we are waiting for from the client, if anything it could stall."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return "body"
        if state is h11.IDLE and (self._fresh or self.conn.trailing_data[0]):
            return "head"  # a new connection, or part of a next request head is buffered
        return None  # the app is working, or an idle keep-alive (uvicorn's own timer)

    def _watch(self) -> None:
        if self.transport.is_closing():
            return
        if self.conn.their_state is not h11.IDLE:
            self._fresh = False
        phase = self._phase()
        if phase == self._timing:
            return  # the deadline of this phase keeps running
        self._cancel_deadline()
        if phase is not None:
            limits = self.guard.limits
            delay = limits.header_timeout_s if phase == "head" else limits.body_timeout_s
            self._timing = phase
            self._deadline = self.loop.call_later(delay, self._expired, phase)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._timing = None, None

    def _expired(self, phase: str) -> None:
        self._deadline, self._timing = None, None
        if self.transport.is_closing():
            return
        self.guard.events.note(f"{phase}_timeout")
        limits = self.guard.limits
        cycle = self.cycle
        if phase == "head" or (cycle is not None and not cycle.response_started):
            seconds = limits.header_timeout_s if phase == "head" else limits.body_timeout_s
            self.transport.write(canned(408, "request_timeout",
                                        f"request {phase} not received within {seconds:g} s"))
        if phase == "body" and cycle is not None:
            cut_request(cycle)
        self._close()

    def _stalled(self) -> None:
        self._stall = None
        self.guard.events.note("send_timeout")
        self.transport.abort()  # close() would wait for the unread buffer to drain

    def _close(self) -> None:
        # close() flushes the write buffer first: a client that reads nothing would keep
        # the descriptor, so anything still unsent is dropped.
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()


def protocol_class(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """uvicorn builds protocols from a class: one subclass per server carries its guard."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})


def raise_nofile_limit() -> int:
    """Raise the soft descriptor limit toward the hard one (as Go does at start-up); the
    soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_TARGET if hard == resource.RLIM_INFINITY else min(hard, NOFILE_TARGET)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return NOFILE_TARGET if soft == resource.RLIM_INFINITY else soft


def connection_budget(max_connections: int, fd_reserve: int, nofile: int) -> int:
    """How many client connections fit under the descriptor limit with *fd_reserve* kept
    free for everything else; at least 1 (a server that admits nothing is of no use; the
    caller warns when the budget is below what was asked)."""
    return max(1, min(max_connections, nofile - fd_reserve))


def default_fd_reserve(max_sessions: int, pool_size: int, accept_backlog: int) -> int:
    """Descriptors kept free: the server's own, every possible kernel's, and one accept
    burst (asyncio accepts up to *backlog* connections per loop turn before any of them
    can be refused)."""
    return BASE_FDS + FDS_PER_SESSION * (max_sessions + pool_size) + accept_backlog


def install_accept_error_handler(loop: asyncio.AbstractEventLoop, events: RateLimitedLog) -> None:
    """Out of descriptors, asyncio calls the loop's exception handler once per failed
    ``accept()`` (up to *backlog* times per turn, with a traceback each): count those as a
    rate instead; everything else goes to the handler that was there."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_OUT_OF_RESOURCES:
            exc = context.get("exception")
            code = errno.errorcode.get(getattr(exc, "errno", 0) or 0, "unknown")
            events.note(f"accept_{code}")
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
