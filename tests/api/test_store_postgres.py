"""The history store on a real PostgreSQL server (what several API processes share).

A throwaway cluster per module: ``initdb`` into a temporary directory and
``pg_ctl start`` listening on a Unix socket only, as the ``postgres`` system user
when the tests run as root (initdb refuses root). Every test gets a fresh database.
When the server binaries are missing the tests FAIL with what to do (run
``scripts/ensure-postgres``), never skip: CI must not go green without them.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nbformat
import psycopg
import pytest
from sqlalchemy.engine import make_url

from api.server.store import HistoryStore
from sandbox import DisplayOutput, ExecutionResult, StreamOutput
from sandbox._models import ErrorOutput, TimeoutInfo
from tests.api.conftest import KEY_A, KEY_B, make_settings, run_server

SUPERUSER = "postgres"  # initdb -U: the role the tests connect as (trust auth, socket only)


# -- the throwaway cluster ------------------------------------------------------------
def postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl (Debian)."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for entry in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(entry)
        version = path.parent.name
        if not all(part.isdigit() for part in version.split(".")):
            continue
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            found.append((tuple(int(p) for p in version.split(".")), path))
    return max(found)[1] if found else None


@dataclass(frozen=True)
class Cluster:
    bindir: Path
    socket_dir: Path
    start_s: float  # initdb + start, what the fixture costs once per module

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{dbname}?host={self.socket_dir}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host=str(self.socket_dir), user=SUPERUSER, dbname=dbname,
                               autocommit=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail("these tests need the PostgreSQL server binaries (initdb, pg_ctl in "
                    "/usr/lib/postgresql/<version>/bin): run scripts/ensure-postgres "
                    "(or `make postgres`)", pytrace=False)
    owner = None
    if os.geteuid() == 0:  # initdb refuses root: the cluster runs as postgres
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, and initdb refuses root: the 'postgres' system "
                        "user is missing (run scripts/ensure-postgres)", pytrace=False)

    started = time.monotonic()
    # Short paths in /tmp: a Unix socket path has a ~100-byte limit, and pytest's
    # tmp_path (0700, root's) is not reachable by the postgres user.
    base = Path(tempfile.mkdtemp(prefix="agentbox-pg-"))
    data, sock, log = base / "data", base / "sock", base / "server.log"

    def run(tool: str, *args: str | Path, check: bool = True) -> None:
        cmd = [str(bindir / tool), *map(str, args)]
        if owner is not None:
            cmd = ["runuser", "-u", owner.pw_name, "--", *cmd]
        proc = subprocess.run(cmd, cwd=base, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            server_log = log.read_text()[-3000:] if log.exists() else ""
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}"
                        f"{proc.stderr}\n{server_log}", pytrace=False)

    try:
        sock.mkdir()
        if owner is not None:
            for path in (base, sock):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        run("initdb", "-D", data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync")
        run("pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o",
            f"-k {sock} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off", "start")
        yield Cluster(bindir, sock, time.monotonic() - started)
    finally:
        if (data / "postmaster.pid").exists():  # also after a start that timed out
            run("pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: Cluster) -> str:
    """A fresh, empty database on the module's cluster; its SQLAlchemy URL."""
    dbname = f"agentbox_{uuid.uuid4().hex[:12]}"
    with postgres.connect() as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    return postgres.url(dbname)


def test_the_cluster_is_real_and_listens_on_its_socket_only(postgres: Cluster,
                                                            pg_url: str) -> None:
    dbname = make_url(pg_url).database
    assert dbname is not None
    with postgres.connect(dbname) as conn:
        row = conn.execute("SELECT current_database(), current_setting('listen_addresses'), "
                           "current_setting('unix_socket_directories')").fetchone()
    assert row == (dbname, "", str(postgres.socket_dir))
    assert postgres.start_s < 60, f"starting the cluster took {postgres.start_s:.1f}s"


# -- (a) the store's contract, on every backend ----------------------------------------
def sample_result(i: int) -> ExecutionResult:
    """Every kind of output, Unicode, nested JSON, exact floats, nulls and booleans."""
    outputs: list[StreamOutput | DisplayOutput | ErrorOutput] = [
        StreamOutput(name="stdout", text=f"ligne {i}: héllo ✓ — 日本\n"),
        DisplayOutput(type="execute_result", execution_count=i, data={
            "text/plain": f"{i / 3!r}",
            "application/json": {"n": i, "f": 0.1 + i, "big": 2**53 + i, "neg": -1e-300,
                                 "none": None, "yes": True, "list": [1, "2", [3.5]],
                                 "quote": 'a "b" \\ c', "empty": {}}})]
    if i % 2:
        outputs.append(ErrorOutput(ename="ValueError", evalue="bad ✗",
                                   traceback=["Traceback", "  line 1", "ValueError: bad ✗"]))
    return ExecutionResult(status="error" if i % 2 else "ok", execution_count=i,
                           outputs=outputs, duration_s=i * 0.001234567,
                           timeout=TimeoutInfo(limit_s=1.5, ended_by="interrupt",
                                               state_lost=False) if i == 3 else None,
                           notes=[f"note {i}"])


async def check_store_contract(url: str) -> None:
    """What the API relies on from HistoryStore, whatever database *url* names:
    per-session seq numbers from 1 in order, exact JSON and float round trips,
    closing once, surviving a restart (a new store on the same URL), marking what a
    previous process left open, and purging only closed sessions past retention."""
    store = HistoryStore(url)
    limits = {"memory_mb": 1024, "cpus": 1.5, "execution_timeout_s": 60.0}
    await store.add_session("s-1", "k-a", limits, {"team": "x", "ünï": "✓"})
    await store.add_session("s-2", "k-b", {}, {}, one_shot=True)
    assert await store.get_session("nope") is None and await store.history("nope") == []

    written = []
    for i in range(1, 6):  # interleaved: each session numbers its own cells
        code = f"x = {i}\nprint('héllo ✓', x)  # {'é' * i}"
        started = time.time() + i / 7  # not representable in fewer than 53 bits
        body = sample_result(i).to_dict()
        assert await store.add_execution("s-1", code, body, started) == i
        assert await store.add_execution("s-2", f"y = {i}", {"status": "ok"}, started) == i
        written.append((i, code, body, started))

    history = await store.history("s-1")
    assert [(h["seq"], h["code"], h["result"], h["started_at"]) for h in history] == written
    for h, (i, _, body, _) in zip(history, written, strict=True):
        assert h["session_id"] == "s-1" and h["status"] == body["status"]
        assert h["execution_count"] == i and h["duration_ms"] == body["duration_ms"]
        assert ExecutionResult.from_dict(h["result"]).to_dict() == body
    assert [h["code"] for h in await store.history("s-2")] == [f"y = {i}" for i in range(1, 6)]

    before = time.time()
    await store.close_session("s-1")
    closed_at = (await store.get_session("s-1") or {})["closed_at"]
    assert before <= closed_at <= time.time()
    await store.close_session("s-1")  # closing twice keeps the first time
    assert (await store.get_session("s-1") or {})["closed_at"] == closed_at
    store.close()

    store = HistoryStore(url)  # a restart: the tables exist, nothing is lost
    try:
        assert await store.history("s-1") == history
        s2 = await store.get_session("s-2")
        assert s2 is not None and s2["closed_at"] is None and s2["one_shot"] == 1
        s1 = await store.get_session("s-1")
        assert s1 is not None and (s1["key_id"], s1["limits"], s1["metadata"], s1["one_shot"]) \
            == ("k-a", limits, {"team": "x", "ünï": "✓"}, 0)
        assert isinstance(s1["created_at"], float) and s1["created_at"] <= closed_at

        assert await store.purge_closed_before(closed_at) == 0  # closed *at*, not before
        assert await store.purge_closed_before(time.time() + 1) == 1  # s-2 is still open
        assert await store.get_session("s-1") is None and await store.history("s-1") == []
        assert len(await store.history("s-2")) == 5

        beating = HistoryStore(url, server_id="srv-new")  # a start-up: s-2 has no live server
        assert await beating.heartbeat() == 1
        s2 = await store.get_session("s-2")
        assert s2 is not None and s2["closed_at"] is not None
        assert await beating.heartbeat() == 0  # already closed: time kept
        assert (await store.get_session("s-2") or {})["closed_at"] == s2["closed_at"]
        await beating.leave()
        beating.close()
        assert await store.purge_closed_before(time.time() + 1) == 1
        assert await store.get_session("s-2") is None and await store.history("s-2") == []
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


async def test_the_store_contract_holds(store_url: str) -> None:
    await check_store_contract(store_url)


# -- (b) two API processes, one database -----------------------------------------------
async def test_two_stores_on_one_database_write_concurrently_and_see_each_other(
        pg_url: str) -> None:
    first, second = HistoryStore(pg_url), HistoryStore(pg_url)  # = two API processes
    try:
        await first.add_session("s-a", "k-a", {}, {"process": "first"})
        await second.add_session("s-b", "k-b", {}, {"process": "second"})
        cells = 30

        async def write(store: HistoryStore, sid: str) -> list[int]:
            seqs = []
            for i in range(cells):
                seqs.append(await store.add_execution(
                    sid, f"{sid} cell {i}", {"status": "ok", "i": i, "by": sid}, time.time()))
            return seqs

        seqs_a, seqs_b = await asyncio.gather(write(first, "s-a"), write(second, "s-b"))
        assert seqs_a == seqs_b == list(range(1, cells + 1))

        for reader in (first, second):
            for sid in ("s-a", "s-b"):
                history = await reader.history(sid)
                assert [(h["seq"], h["code"], h["result"]["i"]) for h in history] == \
                    [(i + 1, f"{sid} cell {i}", i) for i in range(cells)]
        other = await first.get_session("s-b")
        assert other is not None and other["metadata"] == {"process": "second"}

        await second.close_session("s-a")  # one process closes what the other wrote
        closed = await first.get_session("s-a")
        assert closed is not None and closed["closed_at"] is not None
    finally:
        first.close()
        second.close()


# -- (c) end to end: a server, a restart, the notebook ---------------------------------
@pytest.mark.usefixtures("engine")  # real Docker, only here: the store tests need none
def test_history_on_postgresql_survives_a_server_restart(pg_url: str, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY_A}"}
    with run_server(make_settings(tmp_path / "one", database_url=pg_url)) as url, \
            httpx.Client(base_url=url, headers=auth, timeout=60) as client:
        created = client.post("/v1/sessions", json={"metadata": {"db": "postgres"}})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        for code in ("n = 6 * 7", "print(n, 'héllo ✓')"):
            resp = client.post(f"/v1/sessions/{sid}/execute", json={"code": code})
            assert resp.status_code == 200 and resp.json()["status"] == "ok", resp.text
    assert not (tmp_path / "one" / "history.sqlite3").exists()  # it used PostgreSQL

    with run_server(make_settings(tmp_path / "two", database_url=pg_url)) as url, \
            httpx.Client(base_url=url, headers=auth, timeout=60) as client:
        assert client.get(f"/v1/sessions/{sid}").status_code == 404  # its box is gone...
        resp = client.get(f"/v1/sessions/{sid}/notebook")  # ...its history is not
        assert resp.status_code == 200, resp.text
        nb = nbformat.reads(resp.text, as_version=4)
        nbformat.validate(nb)
        assert [c.source for c in nb.cells] == ["n = 6 * 7", "print(n, 'héllo ✓')"]
        assert nb.cells[1].outputs[0]["text"] == "42 héllo ✓\n"
        meta = nb.metadata["agentbox"]
        assert meta["session"] == sid and meta["metadata"] == {"db": "postgres"}
        assert meta["closed_at"] is not None
        other_key = client.get(f"/v1/sessions/{sid}/notebook",
                               headers={"Authorization": f"Bearer {KEY_B}"})
        assert other_key.status_code == 404  # another key's history stays hidden


async def test_concurrent_writes_to_one_session_get_distinct_numbers(pg_url: str) -> None:
    one, two = HistoryStore(pg_url), HistoryStore(pg_url)
    try:
        await one.add_session("s-race", "k", {}, {})
        seqs = await asyncio.gather(*(store.add_execution("s-race", f"c{i}", {"status": "ok"},
                                                          time.time())
                                      for i, store in enumerate([one, two] * 10)))
        assert sorted(seqs) == list(range(1, 21))
        assert [h["seq"] for h in await one.history("s-race")] == list(range(1, 21))
    finally:
        one.close()
        two.close()
