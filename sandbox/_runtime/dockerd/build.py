"""Building the kernel image on the engine (``agentbox image build``, ``make setup``).

The steps and the pure decisions (inputs hash, which base) are described in
:mod:`sandbox._image`; this module runs them: the engine, apt and debootstrap for the
base, pip for the wheels, ``docker build --network none`` for the image.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from sandbox._exceptions import ImageBuildError
from sandbox._image import (
    IMAGE_REPOSITORY,
    LABEL_BASE,
    LABEL_INPUTS,
    WHEEL_PLATFORMS,
    BaseOps,
    Progress,
    SilentProgress,
    choose_base,
    debian_codename,
    debian_mirror,
    default_base_image,
    image_tag,
    input_files,
    inputs_hash,
    kernel_image_dir,
)
from sandbox._runtime.dockerd.client import connect
from sandbox._runtime.dockerd.errors import DOCKER_ERRORS, build_failed, translate, translated


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
        if debian_codename() is None:
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
        suite = debian_codename() or "stable"
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
        raise ImageBuildError("probe", f"{image} has no usable python3: "
                                       f"{translate('python3 -c', exc)}") from exc
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
    except DOCKER_ERRORS as exc:
        raise build_failed("build", exc) from exc


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
        if not force and image_exists(client, tag):
            progress.done("build", f"{tag} is current; nothing to build")
            return tag
        _build(client, src, tag, base_image, progress, base_ops_factory(client, progress))
        return tag
    except DOCKER_ERRORS as exc:
        raise build_failed("engine", exc) from exc
    finally:
        if own_client and client is not None:
            client.close()


def _build(client: docker.DockerClient, src: Path, tag: str, base_image: str,
           progress: Progress, ops: BaseOps) -> None:
    """Steps 2-5: base, probe, wheels, build (then tag ``latest`` and prune)."""
    progress.step("base", f"finding base image {base_image}")
    choice = choose_base(base_image, ops, progress)
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
        _fill_context(context, src, cache)
        labels = {LABEL_INPUTS: tag.split(":", 1)[1], LABEL_BASE: base_image,
                  "org.agentbox.base-resolved": choice.image}
        _stream_build(client, context, tag, choice.image, labels, progress)
    client.images.get(tag).tag(IMAGE_REPOSITORY, "latest")
    progress.done("build", f"built {tag}")
    pruned = prune_stale_images(client, keep=tag)
    if pruned:
        progress.log(f"removed {len(pruned)} older kernel image(s): {', '.join(pruned)}")


def _fill_context(context: Path, src: Path, wheels: Path) -> None:
    """The build context: the kernel_image sources and the downloaded wheels."""
    for path in input_files(src):
        dest = context / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    (context / "wheels").mkdir()
    for wheel in wheels.glob("*.whl"):
        _link_or_copy(wheel, context / "wheels" / wheel.name)


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


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def image_status(client: docker.DockerClient, base_image: str | None = None) -> dict[str, object]:
    """Whether the image for the current sources exists, and what else is there."""
    with translated("list images"):
        return _image_status(client, base_image)


def _image_status(client: docker.DockerClient, base_image: str | None) -> dict[str, object]:
    tag = image_tag(base_image)
    others = [t for img in client.images.list(name=IMAGE_REPOSITORY) for t in img.tags]
    current = image_exists(client, tag)
    size = None
    if current:
        size = client.images.get(tag).attrs.get("Size")
    return {"tag": tag, "current": current, "size": size,
            "others": sorted(t for t in others if t != tag and not t.endswith(":latest"))}
