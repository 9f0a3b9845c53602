"""Connecting to the Docker engine, with an error that says what to do."""

from __future__ import annotations

import docker

from sandbox._runtime.dockerd.errors import DOCKER_ERRORS, unreachable

# A socket path that does not exist, a refused connection: all mean no engine there.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*DOCKER_ERRORS, OSError)


def connect(timeout: float = 30.0) -> docker.DockerClient:
    """A docker client that has answered a ping; raises EngineUnavailableError."""
    client: docker.DockerClient | None = None
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except _CONNECT_ERRORS as exc:
        if client is not None:
            client.close()
        raise unreachable(exc) from exc
    return client
