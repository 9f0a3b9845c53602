"""Connecting to the Docker engine, with errors that say what to do."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import docker
import docker.errors
import requests.exceptions

from sandbox._exceptions import EngineUnavailableError, SandboxError

P = ParamSpec("P")
T = TypeVar("T")

ENGINE_HINT = (
    "start one with `scripts/ensure-docker` (as root on Debian it installs and starts "
    "dockerd), or point DOCKER_HOST at a running engine"
)


def connect(timeout: float = 30.0) -> docker.DockerClient:
    """A docker client that has answered a ping; raises EngineUnavailableError."""
    client: docker.DockerClient | None = None
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        if client is not None:
            client.close()
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EngineUnavailableError(
            f"no Docker engine answers at {where}: {_short(exc)}; {ENGINE_HINT}"
        ) from exc
    return client


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def translate(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator: docker/requests errors raised by the call become SandboxErrors."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except SandboxError:
                raise
            except (requests.exceptions.ConnectionError, ConnectionError) as exc:
                raise EngineUnavailableError(
                    f"{what}: the Docker engine stopped answering ({_short(exc)}); {ENGINE_HINT}"
                ) from exc
            except requests.exceptions.Timeout as exc:
                raise EngineUnavailableError(
                    f"{what}: the Docker engine did not answer in time ({_short(exc)})"
                ) from exc
            except docker.errors.DockerException as exc:
                raise SandboxError(f"{what}: {_short(exc)}") from exc

        return inner

    return wrap
