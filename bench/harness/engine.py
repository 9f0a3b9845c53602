"""The few engine names the harness itself uses: the kernel image, this run's
containers. (Every import of sandbox internals is at the top of the module using it.)"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from bench.harness.errors import BenchError
from sandbox import image_tag
from sandbox._runtime.base import LABEL_APP, LABEL_OWNER_PID

__all__ = ["agentbox_containers", "check_image", "docker_client", "image_tag"]


def docker_client() -> Any:
    """A docker SDK client from the environment (DOCKER_HOST...)."""
    import docker

    return docker.from_env()


def agentbox_containers(client: Any, *, mine: bool, extra: Sequence[str] = ()) -> list[str]:
    """Names of agentbox containers (running or not); *mine*: of this process only (by the
    ``org.agentbox.owner-pid`` label); *extra*: more ``key=value`` label filters."""
    labels = [f"{LABEL_APP}=agentbox", *extra] + ([f"{LABEL_OWNER_PID}={os.getpid()}"] if mine
                                                   else [])
    return [c.name for c in client.containers.list(all=True, filters={"label": labels})]


def check_image(client: Any, image: str) -> None:
    try:
        client.images.get(image)
    except Exception as exc:
        raise BenchError(f"kernel image {image} not found ({exc}); run `make image`") from exc
