"""Choosing a base image, and the content hash that names the kernel image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox._exceptions import ImageBuildError
from sandbox._image import (
    BaseChoice,
    SilentProgress,
    bootstrap_tag,
    choose_base,
    image_tag,
    inputs_hash,
    kernel_image_dir,
)

BASE = "python:3.12-slim"


class FakeOps:
    """A BaseOps that records calls instead of talking to Docker or apt."""

    def __init__(self, present: set[str] | None = None, pull_ok: bool = False,
                 blocker: str | None = None) -> None:
        self.present = set(present or ())
        self.pull_ok = pull_ok
        self.blocker = blocker
        self.calls: list[tuple[str, str]] = []

    def exists(self, image: str) -> bool:
        self.calls.append(("exists", image))
        return image in self.present

    def pull(self, image: str) -> None:
        self.calls.append(("pull", image))
        if not self.pull_ok:
            raise RuntimeError("pull access denied: no route to registry\nmore detail")
        self.present.add(image)

    def bootstrap_blocker(self) -> str | None:
        self.calls.append(("bootstrap_blocker", ""))
        return self.blocker

    def bootstrap(self, tag: str) -> None:
        self.calls.append(("bootstrap", tag))
        self.present.add(tag)

    def called(self, name: str) -> list[str]:
        return [arg for op, arg in self.calls if op == name]


def choose(ops: FakeOps) -> BaseChoice:
    return choose_base(BASE, ops, SilentProgress())


def test_local_base_is_used_without_pulling() -> None:
    ops = FakeOps(present={BASE})
    assert choose(ops) == BaseChoice(BASE, "local")
    assert ops.called("pull") == [] and ops.called("bootstrap") == []


def test_missing_base_is_pulled() -> None:
    ops = FakeOps(pull_ok=True)
    assert choose(ops) == BaseChoice(BASE, "pulled")
    assert ops.called("pull") == [BASE] and ops.called("bootstrap") == []


def test_failed_pull_uses_an_earlier_bootstrap() -> None:
    ops = FakeOps(present={bootstrap_tag(BASE)})
    assert choose(ops) == BaseChoice(bootstrap_tag(BASE), "bootstrap-cached")
    assert ops.called("bootstrap") == []


def test_failed_pull_bootstraps_when_possible() -> None:
    ops = FakeOps()
    assert choose(ops) == BaseChoice(bootstrap_tag(BASE), "bootstrapped")
    assert ops.called("bootstrap") == [bootstrap_tag(BASE)]


def test_failed_pull_without_bootstrap_says_what_to_do() -> None:
    ops = FakeOps(blocker="this host is not Debian")
    with pytest.raises(ImageBuildError) as info:
        choose(ops)
    err = info.value
    assert err.step == "base"
    message = str(err)
    assert "this host is not Debian" in message
    assert "pull access denied" in message and "more detail" not in message
    assert "--base-image" in message and "AGENTBOX_BASE_IMAGE" in message
    assert ops.called("bootstrap") == []


# -- the inputs hash -----------------------------------------------------------------

@pytest.fixture
def src(tmp_path: Path) -> Path:
    dest = tmp_path / "kernel_image"
    shutil.copytree(kernel_image_dir(), dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_hash_is_stable_for_identical_inputs(src: Path, tmp_path: Path) -> None:
    twin = shutil.copytree(src, tmp_path / "twin")
    assert inputs_hash(BASE, src) == inputs_hash(BASE, src) == inputs_hash(BASE, twin)


def test_hash_changes_when_a_source_file_changes(src: Path) -> None:
    before = inputs_hash(BASE, src)
    with (src / "Dockerfile").open("a") as f:
        f.write("\n# changed\n")
    assert inputs_hash(BASE, src) != before


def test_hash_changes_when_a_file_is_added(src: Path) -> None:
    before = inputs_hash(BASE, src)
    (src / "agentbox_kernel" / "extra.py").write_text("x = 1\n")
    assert inputs_hash(BASE, src) != before


def test_hash_changes_with_the_base_image(src: Path) -> None:
    assert inputs_hash(BASE, src) != inputs_hash("python:3.13-slim", src)


def test_hash_ignores_caches_and_wheels(src: Path) -> None:
    before = inputs_hash(BASE, src)
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "init.cpython-312.pyc").write_bytes(b"\0bytecode")
    (src / ".wheels").mkdir()
    (src / ".wheels" / "numpy-2.0-cp312.whl").write_bytes(b"PK")
    (src / "agentbox_kernel" / "mod.pyc").write_bytes(b"\0")
    assert inputs_hash(BASE, src) == before


def test_image_tag_names_the_kernel_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTBOX_BASE_IMAGE", raising=False)
    tag = image_tag(BASE)
    assert tag.startswith("agentbox-kernel:")
    assert tag == f"agentbox-kernel:{inputs_hash(BASE)}"
    monkeypatch.setenv("AGENTBOX_BASE_IMAGE", "python:3.13-slim")
    assert image_tag() == f"agentbox-kernel:{inputs_hash('python:3.13-slim')}" != tag
