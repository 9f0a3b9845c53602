"""A Unix-socket proxy in front of the Docker engine that a test can cut and restore.

Stopping the real dockerd would kill every container on the machine, so the fault
tests talk to the engine through this proxy instead and cut *it*:

- ``up``: every connection is forwarded byte for byte to the engine's socket (half
  closes too: ``docker exec`` with stdin shuts its write side and reads on);
- ``refuse``: open connections are closed and the listening socket is closed, so a
  connect gets ECONNREFUSED, as from an engine that crashed and left its socket file;
- ``hang``: connections are accepted and read, never answered: an engine that is
  wedged (or a network that drops packets);
- ``mute``: requests reach the engine, which acts on them, but its answers are
  dropped: an engine too slow to answer within the client's timeout.

It runs its own event loop in a thread, so it keeps serving while the test's loop
waits, and while the sandbox's blocking docker calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Literal

ENGINE_SOCKET = "/var/run/docker.sock"
Mode = Literal["up", "refuse", "hang", "mute"]


class EngineProxy:
    def __init__(self, path: Path, target: str = ENGINE_SOCKET) -> None:
        self.path = path
        self.target = target
        self.mode: Mode = "up"
        self.forwarded = 0  # connections forwarded to the engine (for the test's asserts)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-proxy",
                                        daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    # -- control, from the test's thread ---------------------------------------------
    def _run(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    def start(self) -> EngineProxy:
        self._thread.start()
        self._run(self._listen())
        return self

    def cut(self, mode: Mode = "refuse") -> None:
        """The engine stops answering: every open connection is closed at once."""
        self._run(self._set_mode(mode))

    def restore(self) -> None:
        self._run(self._set_mode("up"))

    def stop(self) -> None:
        self._run(self._set_mode("refuse"))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # -- inside the proxy's loop -----------------------------------------------------
    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))

    async def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        for writer in list(self._writers):  # whatever was open belongs to the old mode
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None  # the socket file stays: connect() -> ECONNREFUSED
        else:
            await self._listen()

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._track(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.mode == "hang":
                while await reader.read(65536):  # swallow the request, never answer
                    pass
                return
            up_reader, upstream = await asyncio.open_unix_connection(self.target)
            self._track(upstream)
            self.forwarded += 1
            if self.mode == "mute":
                await asyncio.gather(self._pipe(reader, upstream), self._drain(up_reader))
            else:
                await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
            self._tasks.discard(task)

    @staticmethod
    async def _drain(reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()  # pass a half close on (docker exec's end of stdin)
        except OSError:
            writer.close()
