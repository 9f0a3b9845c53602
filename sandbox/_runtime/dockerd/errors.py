"""The one table that turns docker SDK and transport errors into the sandbox's own.

Every call into the docker SDK leaves through here (:func:`translate`, :func:`guarded`,
:func:`translated`), so code above ``sandbox._runtime`` only ever sees a
:class:`~sandbox._exceptions.SandboxError`, and a change of the SDK's error classes is
met in one place (``tests/unit/test_docker_errors.py`` holds every class to it).

The order of the table matters: ``docker.errors.APIError`` is also a
``requests.exceptions.HTTPError`` (an answer that says no is not an engine that does
not answer), and ``ImageNotFound`` is a ``NotFound`` is an ``APIError``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import docker.errors
import requests.exceptions

from sandbox._exceptions import (
    EngineUnavailableError,
    FileOperationError,
    ImageBuildError,
    ImageError,
    SandboxError,
    SessionStartError,
)

ENGINE_HINT = (
    "start one with `scripts/ensure-docker` (as root on Debian it installs and starts "
    "dockerd), or point DOCKER_HOST at a running engine"
)
BUILD_HINT = "run `agentbox image build`"

# Everything the SDK and its transport raise; translate() has an entry for each.
DOCKER_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    docker.errors.StreamParseError,  # a RuntimeError, not a DockerException
    requests.exceptions.RequestException,
    ConnectionError,
)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


def short(exc: BaseException) -> str:
    """The first line of an error's text (at most 300 characters), or its class name."""
    return _first_line(str(exc)) or type(exc).__name__


def explanation(exc: BaseException) -> str:
    """What the engine said (an APIError's explanation), else the error's first line."""
    said = getattr(exc, "explanation", None)
    return (_first_line(str(said)) if said else "") or short(exc)


def is_gone(exc: BaseException) -> bool:
    """The engine says the object (container, exec, image) does not exist."""
    return isinstance(exc, docker.errors.NotFound)


def is_gone_or_busy(exc: BaseException) -> bool:
    """404 (gone) or 409 (not running, or its removal already in progress)."""
    return is_gone(exc) or (isinstance(exc, docker.errors.APIError) and exc.status_code == 409)


def _image_missing(what: str, exc: BaseException) -> SandboxError:
    return ImageError(f"{what}: image not found ({explanation(exc)}); {BUILD_HINT}")


def _build_failed(what: str, exc: BaseException) -> SandboxError:
    return ImageBuildError("build", f"{what}: {short(exc)}")


def _container_failed(what: str, exc: BaseException) -> SandboxError:
    assert isinstance(exc, docker.errors.ContainerError)
    stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
    said = _first_line(str(stderr or "")) or "no output"
    return SandboxError(f"{what}: the container exited {exc.exit_status}: {said}")


def _refused(what: str, exc: BaseException) -> SandboxError:
    return SandboxError(f"{what}: {explanation(exc)}")


def _silent(what: str, exc: BaseException) -> SandboxError:
    return EngineUnavailableError(f"{what}: the Docker engine does not answer ({short(exc)}); "
                                  f"{ENGINE_HINT}")


def _other(what: str, exc: BaseException) -> SandboxError:
    return SandboxError(f"{what}: {short(exc)}")


# (class, translation): the first entry the error is an instance of applies.
TABLE: tuple[tuple[type[BaseException], Callable[[str, BaseException], SandboxError]], ...] = (
    (docker.errors.ImageNotFound, _image_missing),
    (docker.errors.APIError, _refused),  # NotFound, and every other answer of the engine
    (docker.errors.BuildError, _build_failed),
    (docker.errors.ContainerError, _container_failed),
    (requests.exceptions.RequestException, _silent),  # ConnectionError, ReadTimeout, ...
    (ConnectionError, _silent),  # the socket's own (refused, reset, broken pipe)
    (docker.errors.DockerException, _other),  # TLS, context, config, argument errors
    (docker.errors.StreamParseError, _other),
)


def translate(what: str, exc: BaseException) -> SandboxError:
    """The sandbox error for *exc*, raised by the SDK while doing *what*."""
    if isinstance(exc, SandboxError):
        return exc
    for cls, make in TABLE:
        if isinstance(exc, cls):
            return make(what, exc)
    return SandboxError(f"{what}: {short(exc)}")


def guarded(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """*fn(\\*args, \\*\\*kwargs)* with the SDK's errors translated (blocking)."""
    with translated(what):
        return fn(*args, **kwargs)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """The SDK's errors raised inside the block leave it translated."""
    try:
        yield
    except SandboxError:
        raise
    except DOCKER_ERRORS as exc:
        raise translate(what, exc) from exc


# -- the few places that say more than the table ----------------------------------------


def unreachable(exc: BaseException) -> EngineUnavailableError:
    """Connecting failed: no engine at DOCKER_HOST (or the local socket)."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return EngineUnavailableError(f"no Docker engine answers at {where}: {short(exc)}; "
                                  f"{ENGINE_HINT}")


def start_failed(name: str, image: str, exc: BaseException) -> SandboxError:
    """Creating or starting the container *name* from *image* failed."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageError(f"kernel image {image} not found; {BUILD_HINT}")
    if isinstance(exc, docker.errors.APIError):
        return SessionStartError(f"container {name} did not start: {explanation(exc)}")
    return translate("start container", exc)


def exec_refused(exc: BaseException) -> SandboxError:
    """Creating a command in a container failed."""
    if is_gone_or_busy(exc):
        return FileOperationError("the sandbox container is not running")
    return translate("exec in container", exc)


def build_failed(step: str, exc: BaseException) -> SandboxError:
    """A step of the image build failed in the engine (an engine that does not answer
    stays an EngineUnavailableError)."""
    error = translate(f"image build ({step})", exc)
    if isinstance(error, EngineUnavailableError | ImageBuildError):
        return error
    return ImageBuildError(step, str(error).removeprefix(f"image build ({step}): "))
