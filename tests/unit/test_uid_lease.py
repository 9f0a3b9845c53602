"""A session's uid lease (sandbox/_uids.py): leased lowest-free, released exactly once, and
released safely from anywhere, including a garbage-collector finalizer that runs while
the same thread is inside the lease search."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest

from sandbox import _uids


@pytest.fixture(autouse=True)
def _lease_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_uids, "LEASE_DIR", tmp_path / "uids")


def in_thread(fn: object, timeout: float = 10.0) -> None:
    """Run *fn* in a daemon thread; fail (not hang) when it does not return in time."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout), "deadlocked"
    assert not errors, errors


def test_leases_are_the_lowest_free_uid_and_a_released_one_is_reused() -> None:
    a, b = _uids.lease_uid(), _uids.lease_uid()
    assert (a.uid, b.uid) == (_uids.UID_BASE, _uids.UID_BASE + 1)
    a.release()
    a.release()  # idempotent
    assert not a.held and b.held
    assert _uids.lease_uid().uid == _uids.UID_BASE


def test_a_release_while_this_thread_holds_the_search_lock_does_not_deadlock() -> None:
    """What a session's weakref finalizer meets when the collector runs it inside
    lease_uid's search (seen as a hung server in a fresh-clone run)."""
    lease = _uids.lease_uid()

    def release_inside_the_search() -> None:
        with _uids._lock:
            lease.release()

    in_thread(release_inside_the_search)
    assert not lease.held


def test_a_finalizer_that_releases_during_a_search_does_not_deadlock() -> None:
    class Owner:
        pass

    held = _uids.lease_uid()
    owner = Owner()
    weakref.finalize(owner, held.release)
    cycle = [owner]
    cycle.append(cycle)  # type: ignore[arg-type]  # only the collector frees it
    del owner, cycle

    def search_with_collections() -> None:
        gc.disable()
        try:
            with _uids._lock:
                gc.collect()  # the finalizer runs here, in this thread, lock held
        finally:
            gc.enable()
        assert _uids.lease_uid().uid == _uids.UID_BASE  # freed by the finalizer

    in_thread(search_with_collections)
    assert not held.held
