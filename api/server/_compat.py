"""The private parts of uvicorn and asyncio this server relies on, all of them here.

Each is an undeclared version pin, so each has a check that fails when the library
changes it: tests/security/test_http_exhaustion.py::test_uvicorn_internals_the_guard_relies_on
(beside the connection guard that uses them).

* ``uvicorn.protocols.http.h11_impl`` (not a public module): ``H11Protocol``, built by
  uvicorn from ``Config(http=<class>)`` as ``cls(config=, server_state=, app_state=,
  _loop=)``, with the attributes ``conn``, ``client``, ``transport``, ``loop``, ``cycle``
  and the hooks ``on_response_complete()`` and ``_unsupported_upgrade_warning()``;
  ``RequestResponseCycle`` with ``response_started``, ``disconnected``, ``message_event``.
* ``uvicorn.Server._captured_signals``: the signals it re-raises after shutting down.
* asyncio's ``BaseSelectorEventLoop._accept_connection`` reports an exhausted accept
  loop through the loop's exception handler with ``ACCEPT_OUT_OF_RESOURCES`` as the
  message.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"

__all__ = ["ACCEPT_OUT_OF_RESOURCES", "H11Protocol", "ProtocolBase", "RequestResponseCycle",
           "cut_request", "forget_captured_signals"]


class ProtocolBase(H11Protocol):
    """uvicorn's h11 protocol with its private upgrade hook under a name of ours."""

    def _unsupported_upgrade_warning(self) -> None:
        self.upgrade_refused()

    def upgrade_refused(self) -> None:
        """A request asked for an upgrade (WebSocket) this server does not do."""
        super()._unsupported_upgrade_warning()


def cut_request(cycle: Any) -> None:
    """The app sees its request's client gone, and nothing it sends after this goes out."""
    cycle.disconnected = True
    cycle.message_event.set()


def forget_captured_signals(server: uvicorn.Server) -> None:
    """uvicorn re-raises the signals it caught once it has shut down (so the process
    would end "killed by SIGTERM"); forgetting them lets a clean stop exit 0."""
    captured = getattr(server, "_captured_signals", None)
    if isinstance(captured, list):
        captured.clear()
