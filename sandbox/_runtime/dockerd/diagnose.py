"""What ``/healthz`` and ``agentbox doctor`` ask the engine, past the Runtime interface.

Both used to open a raw docker client of their own; now they ask here:
:func:`probe_engine` (or :meth:`DockerRuntime.probe`) for health, :class:`Engine` for
the doctor's longer list (versions, runtimes, cgroups, the image, a container that
reads its own limits). Every answer is plain data; every error a SandboxError.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from sandbox._exceptions import SandboxError
from sandbox._runtime.base import EngineProbe
from sandbox._runtime.dockerd.build import image_status
from sandbox._runtime.dockerd.client import connect
from sandbox._runtime.dockerd.errors import translated


def probe_engine(image: str | None = None, timeout_s: float = 5.0) -> EngineProbe:
    """Ask a fresh connection whether the engine answers and *image* (default: the tag the
    current sources build to) is present (blocking; never raises a SandboxError)."""
    try:
        engine = Engine(timeout_s)
    except SandboxError as exc:
        return EngineProbe(engine=False, engine_error=str(exc))
    with engine:
        try:
            if image is None:
                status = engine.image_status()
                return EngineProbe(engine=True, image=str(status["tag"]),
                                   image_present=bool(status["current"]))
            return EngineProbe(engine=True, image=image, image_present=engine.has_image(image))
        except SandboxError as exc:
            return EngineProbe(engine=True, engine_error=str(exc), image=image or "")


class Engine:
    """A short-lived connection for diagnostics (``with Engine(15) as engine: ...``).
    Connecting raises EngineUnavailableError; every question, a SandboxError."""

    def __init__(self, timeout_s: float = 15.0) -> None:
        self._client = connect(timeout=timeout_s)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def info(self) -> dict[str, Any]:
        """``docker info``."""
        with translated("engine info"):
            info: dict[str, Any] = self._client.info()
        return info

    def version(self) -> dict[str, Any]:
        """``docker version``."""
        with translated("engine version"):
            version: dict[str, Any] = self._client.version()
        return version

    def image_status(self, base_image: str | None = None) -> dict[str, object]:
        """The current sources' tag, whether it is built, its size, and older builds."""
        return image_status(self._client, base_image)

    def has_image(self, image: str) -> bool:
        with translated("list images"):
            return bool(self._client.images.list(name=image))

    def run_once(self, image: str, argv: list[str], **limits: Any) -> str:
        """Run *argv* in a throwaway container of *image* with *limits* (docker SDK
        ``containers.run`` arguments), networkless; what it printed."""
        with translated("probe container"):
            out = self._client.containers.run(image, argv, entrypoint=[], remove=True,
                                              network_mode="none", **limits)
        return out.decode() if isinstance(out, bytes) else str(out)

