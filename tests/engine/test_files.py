"""Files in and out of the box: confined to the working directory, symlinks refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandbox import AsyncSession, FileOperationError, SandboxConfig, UnsafePathError

pytestmark = pytest.mark.usefixtures("engine")


@pytest.fixture
async def box() -> AsyncIterator[AsyncSession]:
    async with AsyncSession(SandboxConfig(max_upload_bytes=1_000_000,
                                          max_download_bytes=1_000_000)) as session:
        yield session


async def test_upload_is_visible_to_code_and_download_returns_what_code_wrote(
        box: AsyncSession) -> None:
    csv = b"city,n\nLisbon,3\nPorto,4\n"
    await box.upload("data/in.csv", csv)
    result = await box.execute(
        "import pandas as pd\ndf = pd.read_csv('data/in.csv')\n"
        "df.assign(double=df.n * 2).to_csv('out.csv', index=False)\nint(df.n.sum())")
    assert result.text == "7"
    assert await box.download("out.csv") == b"city,n,double\nLisbon,3,6\nPorto,4,8\n"
    listing = {f.path: f for f in await box.list_files()}
    assert listing["data"].is_dir and listing["data/in.csv"].size == len(csv)
    assert not listing["out.csv"].is_dir
    await box.delete_file("data")
    assert "data/in.csv" not in {f.path for f in await box.list_files()}


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../x", "a\0b", "",
                                  "x" * 300, "a/" * 600])
async def test_unsafe_paths_are_refused_before_anything_runs(box: AsyncSession,
                                                             path: str) -> None:
    with pytest.raises(UnsafePathError):
        await box.download(path)
    with pytest.raises(UnsafePathError):
        await box.upload(path, b"x")


async def test_planted_symlinks_are_never_followed(box: AsyncSession) -> None:
    await box.execute(
        "import os\n"
        "os.symlink('/etc/passwd', 'passwd')\n"
        "os.symlink('/etc', 'etcdir')\n"
        "os.symlink('../..', 'up')\n"
        "os.makedirs('real', exist_ok=True)\n"
        "os.symlink('real', 'reallink')")
    for path in ("passwd", "etcdir/passwd", "up/etc/passwd", "reallink/x"):
        with pytest.raises(FileOperationError, match="symbolic link"):
            await box.download(path)
    with pytest.raises(FileOperationError, match="symbolic link"):
        await box.upload("etcdir/evil", b"x")
    # Uploading onto a symlink replaces the link; it never writes through it.
    await box.upload("passwd", b"mine")
    check = await box.execute("import os\n(os.path.islink('passwd'), open('passwd').read(),"
                              " 'root' in open('/etc/passwd').read())")
    assert check.text == "(False, 'mine', True)"


async def test_size_limits(box: AsyncSession) -> None:
    with pytest.raises(FileOperationError, match="exceeds"):
        await box.upload("big.bin", b"x" * 1_000_001)
    await box.execute("open('big.bin', 'wb').write(b'y' * 1_500_000)")
    with pytest.raises(FileOperationError, match="too_large"):
        await box.download("big.bin")


async def test_missing_file_and_directory_errors_are_clear(box: AsyncSession) -> None:
    with pytest.raises(FileOperationError, match="not_found"):
        await box.download("nope.txt")
    await box.execute("import os; os.makedirs('d')")
    with pytest.raises(FileOperationError, match="is_directory"):
        await box.download("d")


async def test_working_directory_is_capped(box: AsyncSession) -> None:
    async with AsyncSession(SandboxConfig(workdir_size_mb=8)) as small:
        result = await small.execute("open('fill', 'wb').write(b'0' * 20 * 2**20)")
        assert result.status == "error" and result.error is not None
        assert "No space left" in result.error.evalue
