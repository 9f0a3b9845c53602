"""Building the kernel image, on machines with or without a registry.

Called by `agentbox image build` (and `make setup`). The steps, each named in
progress output and in any :class:`ImageBuildError`:

1. ``inputs``   hash every file of ``kernel_image/`` plus the requested base
   image; the tag ``agentbox-kernel:<hash>`` names the result, so an unchanged
   image is found and not rebuilt.
2. ``base``     the requested base image if it is present locally; else pull it;
   else, on a Debian host as root, bootstrap a minimal Debian with Python
   (debootstrap, then ``docker import``); else fail saying what to do.
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
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import docker
import docker.errors
import requests.exceptions

from sandbox._exceptions import EngineUnavailableError, ImageBuildError, ImageError
from sandbox._runtime.engine import connect

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


def _input_files(src: Path) -> list[Path]:
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
    for path in _input_files(src):
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
    suite = _debian_codename() or "stable"
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


def _debian_codename() -> str | None:
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


class DockerBaseOps:
    """The real :class:`BaseOps`: the engine, apt and debootstrap."""

    def __init__(self, client: docker.DockerClient, progress: Progress) -> None:
        self.client = client
        self.progress = progress

    def exists(self, image: str) -> bool:
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    def pull(self, image: str) -> None:
        repo, _, tag = image.partition(":")
        self.client.images.pull(repo, tag=tag or "latest")

    def bootstrap_blocker(self) -> str | None:
        if not Path("/etc/debian_version").is_file():
            return "this host is not Debian"
        if os.geteuid() != 0:
            return "debootstrap needs root"
        if _debian_codename() is None:
            return "cannot read VERSION_CODENAME from /etc/os-release"
        if debian_mirror() is None:
            return "no HTTP Debian mirror found in /etc/apt (set AGENTBOX_DEBIAN_MIRROR)"
        if shutil.which("debootstrap") is None and shutil.which("apt-get") is None:
            return "neither debootstrap nor apt-get is installed"
        return None

    def bootstrap(self, tag: str) -> None:
        if shutil.which("debootstrap") is None:
            self.progress.log("installing debootstrap with apt-get")
            _run(["apt-get", "update", "-qq"], "base", self.progress)
            _run(["apt-get", "install", "-y", "-qq", "debootstrap"], "base", self.progress)
        suite = _debian_codename() or "stable"
        mirror = debian_mirror()
        assert mirror is not None
        with tempfile.TemporaryDirectory(prefix="agentbox-rootfs-") as root:
            _run(
                ["debootstrap", "--variant=minbase",
                 "--include=python3,python3-venv,ca-certificates", suite, root, mirror],
                "base", self.progress,
            )
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            assert tar.stdout is not None
            repo, _, version = tag.partition(":")
            try:
                self.client.api.import_image_from_stream(tar.stdout, repository=repo, tag=version)
            finally:
                tar.stdout.close()
                if tar.wait() != 0:
                    raise ImageBuildError("base", "tar of the bootstrapped root failed")
        if not self.exists(tag):
            raise ImageBuildError("base", f"docker import did not produce {tag}")


def _run(argv: list[str], step: str, progress: Progress) -> None:
    """Run a host command, streaming its output to *progress*; fail as *step*."""
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except OSError as exc:
        raise ImageBuildError(step, f"cannot run {argv[0]}: {exc}") from exc
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            progress.log(line)
            tail = [*tail[-19:], line]
    if proc.wait() != 0:
        detail = "\n".join(tail[-8:])
        raise ImageBuildError(step, f"`{' '.join(argv[:3])} ...` exited {proc.returncode}:\n{detail}")


# -- steps 3-5 ----------------------------------------------------------------------


@dataclass(frozen=True)
class PythonTarget:
    version: str  # "3.11"
    machine: str  # "x86_64"


def probe_python(client: docker.DockerClient, image: str) -> PythonTarget:
    code = "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.machine())"
    try:
        out = client.containers.run(
            image, ["python3", "-c", code], entrypoint=[], remove=True,
            network_mode="none", user="65534:65534",
        )
    except docker.errors.ContainerError as exc:
        raise ImageBuildError("probe", f"{image} has no usable python3: {exc}") from exc
    text = out.decode().strip() if isinstance(out, bytes) else str(out)
    match = re.fullmatch(r"(3\.\d+) (\S+)", text)
    if not match:
        raise ImageBuildError("probe", f"unexpected answer from python3 in {image}: {text!r}")
    version, machine = match.groups()
    if tuple(int(x) for x in version.split(".")) < (3, 11):
        raise ImageBuildError("probe", f"{image} has Python {version}; 3.11 or newer is needed")
    if machine not in WHEEL_PLATFORMS:
        raise ImageBuildError("probe", f"no wheel platforms known for machine {machine}")
    return PythonTarget(version, machine)


def wheel_cache_dir(target: PythonTarget) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "agentbox" / "wheels" / f"cp{target.version.replace('.', '')}-{target.machine}"


def download_wheels(requirements: Path, target: PythonTarget, dest: Path,
                    progress: Progress) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--only-binary=:all:", "--no-deps", "--implementation", "cp",
            "--python-version", target.version, "-d", str(dest), "-r", str(requirements)]
    for platform in WHEEL_PLATFORMS[target.machine]:
        argv += ["--platform", platform]
    _run(argv, "wheels", progress)


def _stream_build(client: docker.DockerClient, context: Path, tag: str, base: str,
                  labels: dict[str, str], progress: Progress) -> None:
    tail: list[str] = []
    try:
        for chunk in client.api.build(
            path=str(context), tag=tag, buildargs={"BASE_IMAGE": base},
            network_mode="none", rm=True, forcerm=True, pull=False, decode=True,
            labels=labels,
        ):
            if "error" in chunk:
                detail = "\n".join(tail[-12:])
                raise ImageBuildError("build", f"{chunk['error'].strip()}\n{detail}".strip())
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    progress.log(line)
                    tail = [*tail[-30:], line]
    except docker.errors.APIError as exc:
        raise ImageBuildError("build", str(exc)) from exc


def build_image(
    *,
    base_image: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    client: docker.DockerClient | None = None,
    base_ops_factory: Callable[[docker.DockerClient, Progress], BaseOps] = DockerBaseOps,
) -> str:
    """Build the kernel image unless an identical one exists; returns its tag."""
    progress = progress or SilentProgress()
    base_image = base_image or default_base_image()
    src = kernel_image_dir()
    progress.step("inputs", "hashing kernel_image/")
    tag = f"{IMAGE_REPOSITORY}:{inputs_hash(base_image, src)}"
    progress.done("inputs", tag)
    own_client = client is None
    try:
        client = client or connect()
        if not force and _image_exists(client, tag):
            progress.done("build", f"{tag} is current; nothing to build")
            return tag

        progress.step("base", f"finding base image {base_image}")
        choice = choose_base(base_image, base_ops_factory(client, progress), progress)
        progress.done("base", f"{choice.image} ({choice.how})")

        progress.step("probe", f"asking {choice.image} for its Python")
        target = probe_python(client, choice.image)
        progress.done("probe", f"Python {target.version} on {target.machine}")

        progress.step("wheels", f"downloading wheels for cp{target.version} {target.machine}")
        cache = wheel_cache_dir(target)
        download_wheels(src / "requirements.txt", target, cache, progress)
        progress.done("wheels", f"{sum(1 for _ in cache.glob('*.whl'))} wheels in {cache}")

        progress.step("build", f"docker build --network none -t {tag}")
        with tempfile.TemporaryDirectory(prefix="agentbox-build-") as tmp:
            context = Path(tmp)
            for path in _input_files(src):
                dest = context / path.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
            (context / "wheels").mkdir()
            for wheel in cache.glob("*.whl"):
                _link_or_copy(wheel, context / "wheels" / wheel.name)
            labels = {LABEL_INPUTS: tag.split(":", 1)[1], LABEL_BASE: base_image,
                      "org.agentbox.base-resolved": choice.image}
            _stream_build(client, context, tag, choice.image, labels, progress)
        client.images.get(tag).tag(IMAGE_REPOSITORY, "latest")
        progress.done("build", f"built {tag}")
        pruned = prune_stale_images(client, keep=tag)
        if pruned:
            progress.log(f"removed {len(pruned)} older kernel image(s): {', '.join(pruned)}")
        return tag
    except requests.exceptions.RequestException as exc:
        raise EngineUnavailableError(f"the Docker engine stopped answering: {exc}") from exc
    except docker.errors.DockerException as exc:
        raise ImageBuildError("engine", str(exc)) from exc
    finally:
        if own_client and client is not None:
            client.close()


def prune_stale_images(client: docker.DockerClient, keep: str) -> list[str]:
    """Untag older ``agentbox-kernel`` builds (about 1 GB each); in-use ones stay."""
    removed = []
    for image in client.images.list(name=IMAGE_REPOSITORY):
        for t in image.tags:
            if t in (keep, f"{IMAGE_REPOSITORY}:latest"):
                continue
            try:
                client.images.remove(t)
            except docker.errors.APIError:
                continue  # a container still uses it
            removed.append(t)
    return removed


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def image_status(client: docker.DockerClient, base_image: str | None = None) -> dict[str, object]:
    """Whether the image for the current sources exists, and what else is there."""
    tag = image_tag(base_image)
    others = [t for img in client.images.list(name=IMAGE_REPOSITORY) for t in img.tags]
    current = _image_exists(client, tag)
    size = None
    if current:
        size = client.images.get(tag).attrs.get("Size")
    return {"tag": tag, "current": current, "size": size,
            "others": sorted(t for t in others if t != tag and not t.endswith(":latest"))}
