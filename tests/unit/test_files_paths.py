"""check_path: every path the host sends into the sandbox is relative and bounded."""

from __future__ import annotations

import pytest

from sandbox._exceptions import FileOperationError, UnsafePathError
from sandbox._files import check_path


@pytest.mark.parametrize(("path", "why"), [
    ("/etc/passwd", "absolute"),
    ("\\windows\\x", "absolute"),
    ("..", r"'\.\.'"),
    ("../x", r"'\.\.'"),
    ("a/../../x", r"'\.\.'"),
    ("a/b/..", r"'\.\.'"),
    ("a\0b", "NUL"),
    ("", "empty"),
    (".", "empty"),
    ("./", "empty"),
    ("a/" * 600, "1024 bytes"),
    ("a/" + "b" * 256, "255 bytes"),
    ("é" * 128, "255 bytes"),  # 256 bytes in UTF-8, 128 characters
])
def test_unsafe_paths_are_refused(path: str, why: str) -> None:
    with pytest.raises(UnsafePathError, match=why):
        check_path(path)


def test_unsafe_path_error_is_a_value_error_and_a_file_error() -> None:
    with pytest.raises(ValueError):
        check_path("../secret")
    assert issubclass(UnsafePathError, FileOperationError)


@pytest.mark.parametrize(("path", "expected"), [
    ("./a//b/", "a/b"),
    ("a/./b", "a/b"),
    ("data.csv", "data.csv"),
    ("dir/..hidden", "dir/..hidden"),
    ("b" * 255, "b" * 255),
])
def test_safe_paths_are_normalised(path: str, expected: str) -> None:
    assert check_path(path) == expected


def test_the_root_is_allowed_only_when_asked() -> None:
    assert check_path("", allow_root=True) == ""
    assert check_path("./", allow_root=True) == ""
    with pytest.raises(UnsafePathError):
        check_path("..", allow_root=True)
    with pytest.raises(UnsafePathError):
        check_path("/", allow_root=True)
