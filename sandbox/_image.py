"""The kernel image's name and the pure part of building it (a leaf: no docker here).

The tag ``agentbox-kernel:<hash>`` hashes every file of ``kernel_image/`` plus the
requested base image, so an unchanged image is found and not rebuilt. The build itself
(``agentbox image build``, :func:`build_image`) runs against the engine, in
:mod:`sandbox._runtime.dockerd.build`; its steps, each named in progress output and in
any :class:`ImageBuildError`:

1. ``inputs``   hash the inputs (here).
2. ``base``     the requested base image if it is present locally; else pull it;
   else, on a Debian host as root, bootstrap a minimal Debian with Python
   (debootstrap, then ``docker import``); else fail saying what to do
   (:func:`choose_base`, here, decides; the build does).
3. ``probe``    ask the base for its Python version and machine, so that the
   right wheels are fetched.
4. ``wheels``   ``pip download`` every pinned requirement on the host, as
   binary wheels for that Python and platform (cached between builds).
5. ``build``    ``docker build --network none`` with the wheels in the build
   context; they are installed in a build stage that the final image leaves
   behind.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandbox._exceptions import ImageBuildError, ImageError

IMAGE_REPOSITORY = "agentbox-kernel"
DEFAULT_BASE_IMAGE = "python:3.12-slim"
BOOTSTRAP_REPOSITORY = "agentbox-base"
LABEL_INPUTS = "org.agentbox.inputs-hash"
LABEL_BASE = "org.agentbox.base-image"
# Bump when the build procedure changes in a way the input files do not show.
BUILD_FORMAT = "1"
WHEEL_PLATFORMS = {
    "x86_64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
               "manylinux_2_5_x86_64", "manylinux1_x86_64"],
    "aarch64": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"],
}
_IGNORED = {"__pycache__", ".wheels", ".pytest_cache"}


def kernel_image_dir() -> Path:
    """The ``kernel_image`` sources: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_kernel_image", here.parent / "kernel_image"):
        if (candidate / "Dockerfile").is_file():
            return candidate
    raise ImageError(f"kernel_image sources not found near {here}")


def default_base_image() -> str:
    return os.environ.get("AGENTBOX_BASE_IMAGE", DEFAULT_BASE_IMAGE)


def input_files(src: Path) -> list[Path]:
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and not (_IGNORED & set(rel.parts)) and path.suffix != ".pyc":
            files.append(path)
    return files


def inputs_hash(base_image: str | None = None, src: Path | None = None) -> str:
    """A short hash of everything that decides the image's content."""
    src = src or kernel_image_dir()
    digest = hashlib.sha256()
    digest.update(f"format={BUILD_FORMAT}\nbase={base_image or default_base_image()}\n".encode())
    for path in input_files(src):
        digest.update(str(path.relative_to(src)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def image_tag(base_image: str | None = None) -> str:
    """The tag the current kernel_image sources build to, e.g. ``agentbox-kernel:3f2a...``."""
    return f"{IMAGE_REPOSITORY}:{inputs_hash(base_image)}"


# -- progress -----------------------------------------------------------------------


class Progress(Protocol):
    """Receives progress from a build; the CLI renders it with rich."""

    def step(self, name: str, description: str) -> None: ...
    def log(self, line: str) -> None: ...
    def done(self, name: str, detail: str) -> None: ...


class SilentProgress:
    def step(self, name: str, description: str) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def done(self, name: str, detail: str) -> None:
        pass


# -- step 2: the base ---------------------------------------------------------------


class BaseOps(Protocol):
    """What choosing a base needs from the outside world (a fake in tests)."""

    def exists(self, image: str) -> bool: ...
    def pull(self, image: str) -> None: ...
    def bootstrap_blocker(self) -> str | None: ...
    def bootstrap(self, tag: str) -> None: ...


@dataclass(frozen=True)
class BaseChoice:
    image: str
    how: str  # "local", "pulled", "bootstrapped", "bootstrap-cached"


def bootstrap_tag(base_image: str) -> str:
    """The local base used in place of *base_image* when it cannot be pulled."""
    suite = debian_codename() or "stable"
    return f"{BOOTSTRAP_REPOSITORY}:{suite}"


def choose_base(base_image: str, ops: BaseOps, progress: Progress) -> BaseChoice:
    """Local image, else pull, else bootstrap (Debian + root), else a clear failure."""
    if ops.exists(base_image):
        return BaseChoice(base_image, "local")
    pull_error = ""
    progress.log(f"{base_image} is not present locally; trying to pull it")
    try:
        ops.pull(base_image)
    except Exception as exc:
        pull_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        progress.log(f"pull failed: {pull_error}")
    else:
        return BaseChoice(base_image, "pulled")
    fallback = bootstrap_tag(base_image)
    if ops.exists(fallback):
        return BaseChoice(fallback, "bootstrap-cached")
    blocker = ops.bootstrap_blocker()
    if blocker is not None:
        raise ImageBuildError(
            "base",
            f"{base_image} is not present locally and could not be pulled ({pull_error}), "
            f"and a Debian base cannot be bootstrapped here: {blocker}. Load an image with "
            f"Python 3.11+ (docker load / docker pull on a machine with a registry) and "
            f"pass it as --base-image or AGENTBOX_BASE_IMAGE.",
        )
    progress.log(f"bootstrapping a minimal Debian base as {fallback} (about a minute)")
    ops.bootstrap(fallback)
    return BaseChoice(fallback, "bootstrapped")


def debian_codename() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.M)
    return match.group(1) if match else None


def debian_mirror() -> str | None:
    """The host's own Debian mirror (plain HTTP works where HTTPS from containers does not)."""
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                url = next((p for p in parts[1:] if p.startswith("http")), None)
                if url:
                    candidates.append(url)
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        block_uris: list[str] = []
        suites_ok = False
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                block_uris = line.split()[1:]
            if line.startswith("Suites:") and any(
                s.count("-") == 0 for s in line.split()[1:]
            ):
                suites_ok = True
            if not line.strip() and block_uris:
                if suites_ok:
                    candidates.extend(block_uris)
                block_uris, suites_ok = [], False
        if block_uris and suites_ok:
            candidates.extend(block_uris)
    plain = [u for u in candidates if "security" not in u]
    env = os.environ.get("AGENTBOX_DEBIAN_MIRROR")
    return env or (plain[0] if plain else None)
