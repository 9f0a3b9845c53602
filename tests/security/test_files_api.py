"""The file API (upload, download, list, delete) is confined to the working directory:
no path the caller gives and no symlink, FIFO or race the sandboxed code sets up makes it
read or write anything else — not a host path (a canary on the host proves it), not the
container's own /etc/passwd."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from sandbox import AsyncSession, FileOperationError, SandboxConfig, UnsafePathError

pytestmark = pytest.mark.asyncio(loop_scope="module")

LINK = r"symbolic link|symlink"
LIMITS = {"max_upload_bytes": 1_000_000, "max_download_bytes": 1_000_000}


@pytest.fixture(scope="module")
def host_canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file on the HOST that no API path may reach, with a directory next to it."""
    root = tmp_path_factory.mktemp("host-canary")
    canary = root / "canary.txt"
    canary.write_bytes(b"host canary: must never be read or written by a sandbox\n")
    (root / "dir").mkdir()
    return canary


def snapshot(canary: Path) -> tuple[Any, ...]:
    st = canary.stat()
    listing = tuple(sorted(p.name for p in canary.parent.rglob("*")))
    return (hashlib.sha256(canary.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_mode,
            st.st_uid, listing)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(runtime: str) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(SandboxConfig(runtime=runtime, **LIMITS)) as session:  # type: ignore[arg-type]
        yield session


async def run_ok(box: AsyncSession, code: str) -> Any:
    result = await box.execute(code, timeout=60)
    assert result.status == "ok", (result.error, result.notes)
    return result


def unsafe_paths(canary: Path) -> list[str]:
    depth = "../" * 12
    return ["../etc/passwd", "/etc/passwd", str(canary), depth + str(canary).lstrip("/"),
            "a/../../x", "./../x", "..", "a/b/../../..", "a\0b", "passwd\0.txt", "",
            "\\etc\\passwd", "x" * 300, "a/" * 600, f"{canary.name}/../../{canary.name}"]


async def test_unsafe_paths_are_refused_by_every_operation(box: AsyncSession,
                                                          host_canary: Path) -> None:
    before = snapshot(host_canary)
    for path in unsafe_paths(host_canary):
        with pytest.raises(UnsafePathError):
            await box.download(path)
        with pytest.raises(UnsafePathError):
            await box.upload(path, b"overwritten by the sandbox API")
        with pytest.raises(UnsafePathError):
            await box.delete_file(path)
        if path:  # "" lists the working directory itself
            with pytest.raises(UnsafePathError):
                await box.list_files(path)
    assert snapshot(host_canary) == before


PLANT = r"""
import os
os.makedirs("real/inner", exist_ok=True)
open("real/inner/keep.txt", "w").write("keep")
links = {
    "abs-file": "/etc/passwd",
    "abs-dir": "/etc",
    "rel-file": "../../etc/passwd",
    "rel-dir": "../..",
    "host-canary": %r,
    "host-canary-dir": %r,
    "run-kernel": "/run/kernel",
    "proc-root": "/proc/self/root",
    "dangling": "/nonexistent/target",
    "loop": "loop",
    "real-link": "real",
    "real/inner/up": "../../..",
    "replace-me": "/etc/passwd",
    "replace-canary": %r,
}
for name, target in links.items():
    if os.path.lexists(name):
        os.unlink(name)
    os.symlink(target, name)
print(sorted(links))
"""
DIR_LINKS = ["abs-dir", "rel-dir", "host-canary-dir", "run-kernel", "proc-root", "real-link",
             "real/inner/up", "loop", "dangling"]
FILE_LINKS = ["abs-file", "rel-file", "host-canary", "dangling", "loop"]
THROUGH = {"abs-dir": "passwd", "rel-dir": "etc/passwd", "host-canary-dir": "canary.txt",
           "run-kernel": "kernel-1.json", "proc-root": "etc/passwd", "real-link": "inner/keep.txt",
           "real/inner/up": "etc/passwd", "loop": "x", "dangling": "x"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def planted(box: AsyncSession, host_canary: Path) -> Path:
    await run_ok(box, PLANT % (str(host_canary), str(host_canary.parent), str(host_canary)))
    return host_canary


async def test_symlinks_planted_as_the_file_are_never_followed(box: AsyncSession,
                                                               planted: Path) -> None:
    before = snapshot(planted)
    for link in FILE_LINKS + DIR_LINKS:
        with pytest.raises(FileOperationError, match=LINK):
            await box.download(link)
    # The listing shows the links as entries and nothing behind them.
    listing = {f.path for f in await box.list_files()}
    assert {"abs-dir", "real-link", "run-kernel", "proc-root"} <= listing
    assert not any(p.startswith(tuple(f"{d}/" for d in DIR_LINKS)) for p in listing), listing
    assert "real/inner/keep.txt" in listing and not any("passwd" in p for p in listing)
    # Uploading onto a link replaces the link; deleting a link removes only the link.
    await box.upload("replace-me", b"mine")
    await box.upload("replace-canary", b"mine too")
    check = await run_ok(box, "import os\nprint([os.path.islink('replace-me'), open('replace-me').read(), "
                              "open('/etc/passwd').read().startswith('root:'), "
                              "open('replace-canary').read()])")
    assert check.stdout.strip() == "[False, 'mine', True, 'mine too']"
    assert snapshot(planted) == before


async def test_symlinks_planted_as_a_directory_on_the_path_are_never_followed(
        box: AsyncSession, planted: Path, runtime: str, request: pytest.FixtureRequest) -> None:
    before = snapshot(planted)
    leaks: list[str] = []

    async def attempt(op: str, path: str) -> None:
        try:
            if op == "download":
                await box.download(path)
            elif op == "upload":
                await box.upload(path, b"written through a link")
            elif op == "list":
                await box.list_files(path)
            else:
                await box.delete_file(path)
            leaks.append(f"{op} {path}: succeeded")
        except FileOperationError as exc:
            if not re.search(LINK, str(exc)):
                leaks.append(f"{op} {path}: {exc}")

    # Each attempt is a docker exec: read, write and list through every link; overwrite and
    # delete through the three that lead somewhere writable or interesting.
    attempts = [(op, path) for link, rest in THROUGH.items()
                for op, path in (("download", f"{link}/{rest}"), ("upload", f"{link}/new-file"),
                                 ("list", link))]
    attempts += [(op, f"{link}/{THROUGH[link]}") for link in ("run-kernel", "real-link", "abs-dir")
                 for op in ("upload", "delete")]
    attempts += [("list", link) for link in FILE_LINKS]
    if runtime == "runsc":
        attempts = attempts[:5]  # known to leak at once (see the xfail reason)
    gate = asyncio.Semaphore(4)  # each attempt is a docker exec: a few at a time

    async def gated(op: str, path: str) -> None:
        async with gate:
            await attempt(op, path)

    await asyncio.gather(*(gated(op, path) for op, path in attempts))
    assert snapshot(planted) == before  # the host canary: never reachable, either runtime
    await box.delete_file("real-link")
    await box.delete_file("abs-dir")
    await box.delete_file("real/inner/up")
    check = await run_ok(box, "import os\nprint([os.path.isdir('/etc'), open('real/inner/keep.txt').read(), "
                              "os.path.lexists('real-link'), os.path.exists('/run/kernel/new-file')])")
    assert check.stdout.strip() == "[True, 'keep', False, False]"
    assert leaks == []


async def test_a_hard_link_to_a_system_file_cannot_be_made(box: AsyncSession) -> None:
    # The other way to dress /etc/passwd up as a working-directory file: the working
    # directory is a tmpfs of its own, so the kernel refuses (EXDEV) and nothing appears.
    result = await run_ok(box, "import errno, os\nfor src in ('/etc/passwd', '/opt/venv/bin/python'):\n"
                               "    try:\n        os.link(src, 'hard-' + os.path.basename(src))\n"
                               "        print('linked')\n    except OSError as exc:\n"
                               "        print(errno.errorcode[exc.errno])")
    assert result.stdout.split() == ["EXDEV", "EXDEV"]
    with pytest.raises(FileOperationError, match="not_found"):
        await box.download("hard-passwd")


FLIPPER = r"""
import os, subprocess, sys
code = '''
import os, time
os.chdir("/home/sandbox/race")
end = time.time() + 60
while time.time() < end:
    for real, target in (("d.real", "%(dir_target)s"), ("f.real", "/etc/passwd")):
        name = real[0]
        try:
            os.rename(name, real)        # the real thing out...
            os.symlink(target, name)     # ...a link in its place...
            os.unlink(name)
            os.rename(real, name)        # ...and the real thing back
        except OSError:
            pass
'''
os.makedirs("/home/sandbox/race/d", exist_ok=True)
os.makedirs("%(dir_target)s", exist_ok=True)
open("/home/sandbox/race/d/passwd", "w").write("benign\n")
open("/home/sandbox/race/f", "w").write("benign\n")
flipper = subprocess.Popen([sys.executable, "-c", code])
"""


async def test_symlink_swapped_in_during_transfers_is_never_followed(
        box: AsyncSession, runtime: str) -> None:
    # A process in the sandbox keeps swapping race/d (a directory) and race/f (a file) for
    # symlinks to /tmp/elsewhere and /etc/passwd while the host downloads and uploads
    # through them: each transfer sees the real thing or fails, never the link's target.
    await run_ok(box, FLIPPER % {"dir_target": "/tmp/elsewhere"})
    outcomes: dict[str, int] = {}

    async def transfer(op: str, i: int) -> None:
        try:
            if op == "read d/passwd":
                assert await box.download("race/d/passwd") == b"benign\n"
            elif op == "read f":
                assert await box.download("race/f") == b"benign\n"
            elif op == "write d/":
                await box.upload(f"race/d/up-{i}", b"uploaded")
            else:
                await box.upload("race/f", b"benign\n")
            outcomes[op + " ok"] = outcomes.get(op + " ok", 0) + 1
        except FileOperationError:
            outcomes[op + " refused"] = outcomes.get(op + " refused", 0) + 1

    try:
        for i in range(6):  # each transfer is a docker exec: four at a time
            await asyncio.gather(*(transfer(op, i) for op in ("read d/passwd", "read f",
                                                              "write d/", "write f")))
    finally:
        await run_ok(box, "flipper.kill(); flipper.wait()")
    after = await run_ok(box, "import os\nprint(sorted(os.listdir('/tmp/elsewhere')), "
                              "open('/etc/passwd').read().startswith('root:'))")
    assert after.stdout.strip() == "[] True"  # nothing was ever written through the link
    # The race really ran both ways: some transfers got through, some met a link.
    assert sum(v for k, v in outcomes.items() if k.endswith(" ok")) > 0, outcomes
    assert sum(v for k, v in outcomes.items() if k.endswith(" refused")) > 0, outcomes


RELEASE_READERS = r"""
import subprocess, sys
code = '''
import os, time
while True:  # a writer comes and goes: every reader blocked in open() is let through
    try:
        os.close(os.open("/home/sandbox/pipe", os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: no reader right now
        pass
    time.sleep(0.01)
'''
releaser = subprocess.Popen([sys.executable, "-c", code])
"""


async def test_a_planted_fifo_neither_hangs_a_download_nor_stalls_other_sessions(
        box: AsyncSession, runtime: str, request: pytest.FixtureRequest) -> None:
    workers = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor size
    async with AsyncSession(SandboxConfig(runtime=runtime)) as other:  # type: ignore[arg-type]
        await run_ok(box, "import os\nif not os.path.exists('pipe'): os.mkfifo('pipe')")
        t0 = time.monotonic()
        downloads = [asyncio.create_task(box.download("pipe")) for _ in range(workers)]
        _, pending = await asyncio.wait(downloads, timeout=2)
        download_hung = bool(pending)
        t1 = time.monotonic()
        try:
            await asyncio.wait_for(other.upload("victim.txt", b"ok"), 2)
            other_upload_s = time.monotonic() - t1
        except TimeoutError:
            other_upload_s = float("inf")
        # Release the readers from inside until every download is back, so nothing outlives
        # the test; each download then ends with "not a regular file".
        await run_ok(box, RELEASE_READERS)
        try:
            outcomes = await asyncio.wait_for(asyncio.gather(*downloads, return_exceptions=True), 90)
        finally:
            await run_ok(box, "releaser.kill(); releaser.wait()")
        elapsed = time.monotonic() - t0
    assert all(isinstance(o, FileOperationError) and "not_a_file" in str(o) for o in outcomes)
    assert not download_hung and elapsed < 3, f"downloads of a FIFO took {elapsed:.1f}s"
    assert other_upload_s < 2, "another session's upload was stalled"
