"""Routes racing each other on one session, and creates racing the caps (P12).

Every race must end in a clear answer (2xx, 404 or 409), never a 5xx nor a 4xx that
blames the caller; the caps must hold exactly however many creates arrive at once.
Real server, real containers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import KEY_A, KEY_B, make_settings, run_server

pytestmark = pytest.mark.usefixtures("engine")
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
CLEAR = {200, 201, 204, 404, 409}


@pytest.fixture(scope="module")
def race_server(engine: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("races"), max_sessions=12,
                             max_sessions_per_key=12, pool_size=0)
    with run_server(settings) as url:
        yield url


async def close_all(client: httpx.AsyncClient) -> None:
    """Whatever a test left open is closed: the leak check counts containers."""
    for s in (await client.get("/v1/sessions")).json()["sessions"]:
        await client.delete(f"/v1/sessions/{s['id']}")


@pytest.fixture
async def client(race_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=race_server, headers=AUTH_A, timeout=60) as c:
        try:
            yield c
        finally:
            await close_all(c)


async def new_sessions(client: httpx.AsyncClient, n: int) -> list[str]:
    created = await asyncio.gather(*(client.post("/v1/sessions") for _ in range(n)))
    assert all(r.status_code == 201 for r in created), [r.text for r in created]
    sids = [str(r.json()["id"]) for r in created]
    for sid in sids:  # something for the file routes to find
        resp = await client.put(f"/v1/sessions/{sid}/files/seed.txt", content=b"seed")
        assert resp.status_code == 204, resp.text
    return sids


Call = Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]
ROUTES: dict[str, Call] = {
    "restart": lambda c, s: c.post(f"/v1/sessions/{s}/restart"),
    "interrupt": lambda c, s: c.post(f"/v1/sessions/{s}/interrupt"),
    "delete": lambda c, s: c.delete(f"/v1/sessions/{s}"),
    "execute": lambda c, s: c.post(f"/v1/sessions/{s}/execute", json={"code": "1+1"}),
    "get": lambda c, s: c.get(f"/v1/sessions/{s}"),
    "upload": lambda c, s: c.put(f"/v1/sessions/{s}/files/a.txt", content=b"x" * 1000),
    "download": lambda c, s: c.get(f"/v1/sessions/{s}/files/seed.txt"),
    "list": lambda c, s: c.get(f"/v1/sessions/{s}/files"),
    "delete_file": lambda c, s: c.delete(f"/v1/sessions/{s}/files/a.txt"),
}
OTHERS = [name for name in ROUTES if name != "delete"]


async def volley(client: httpx.AsyncClient, sid: str, now: list[str], later: list[str],
                 delay: float) -> list[tuple[str, httpx.Response]]:
    """The routes *now* at once, and *later* after *delay* seconds, on one session."""
    async def call(name: str, wait: float) -> tuple[str, httpx.Response]:
        await asyncio.sleep(wait)
        return name, await ROUTES[name](client, sid)

    return list(await asyncio.gather(*(call(n, 0.0) for n in now),
                                     *(call(n, delay) for n in later)))


def unclear(answers: list[tuple[str, httpx.Response]]) -> list[str]:
    return [f"{name}: {r.status_code} {r.text[:200]}" for name, r in answers
            if r.status_code not in CLEAR]


# Offsets that land the second request before, during and after the first one's work
# (a restart takes a few hundred ms: kill, new kernel, kernel_info; a file operation
# about a hundred).
DELAYS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]


async def test_restart_racing_delete_never_answers_5xx(client: httpx.AsyncClient) -> None:
    """Was a 500 (KeyError): the restart route looked the session up again after its
    await, and the delete had taken it out of the table meanwhile."""
    sids = await new_sessions(client, len(DELAYS) + 2)
    plans = [(["restart"], ["delete"], d) for d in DELAYS] + \
            [(["delete"], ["restart"], d) for d in (0.0, 0.02)]
    answers = await asyncio.gather(*(volley(client, sid, now, later, d)
                                     for sid, (now, later, d) in zip(sids, plans, strict=True)))
    flat = [a for one in answers for a in one]
    assert not unclear(flat)
    assert Counter(r.status_code for name, r in flat if name == "delete") == {204: len(sids)}
    for sid in sids:
        assert (await client.get(f"/v1/sessions/{sid}")).status_code == 404


async def test_every_route_racing_a_delete_never_answers_5xx(client: httpx.AsyncClient) -> None:
    """Every other route at once on the same session, the delete a little later; and
    the delete first. File operations whose container vanished were 400 or 500."""
    delays = DELAYS[:4]
    sids = await new_sessions(client, len(delays) + 2)
    plans = [(OTHERS, ["delete"], d) for d in delays] + \
            [(["delete"], OTHERS, d) for d in (0.0, 0.02)]
    answers = await asyncio.gather(*(volley(client, sid, now, later, d)
                                     for sid, (now, later, d) in zip(sids, plans, strict=True)))
    flat = [a for one in answers for a in one]
    assert not unclear(flat)
    for sid in sids:
        assert (await client.get(f"/v1/sessions/{sid}")).status_code == 404


async def test_routes_racing_a_restart_keep_the_session_usable(client: httpx.AsyncClient
                                                               ) -> None:
    """Restarts racing every other route (and each other) on live sessions: clear
    answers, and the session works afterwards."""
    sids = await new_sessions(client, 3)
    for _ in range(2):
        answers = await asyncio.gather(*(volley(client, sid, ["restart"],
                                                [*OTHERS], d)
                                         for sid, d in zip(sids, (0.0, 0.05, 0.15),
                                                           strict=True)))
        flat = [a for one in answers for a in one]
        assert not unclear(flat)
    for sid in sids:
        result = (await ROUTES["execute"](client, sid)).json()
        assert result["status"] == "ok" and result["outputs"][0]["data"]["text/plain"] == "2"


# -- the per-key and server caps under concurrent creates -----------------------------------

def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


async def burst(client: httpx.AsyncClient, n: int) -> list[httpx.Response]:
    return list(await asyncio.gather(*(client.post("/v1/sessions") for _ in range(n))))


async def test_concurrent_creates_cannot_pass_the_key_or_server_cap(engine: object,
                                                                    tmp_path: Path) -> None:
    """Was: all creates of one key passed the check before any was recorded, so key A
    got every server slot (past its own cap) and key B got 429."""
    settings = make_settings(tmp_path, max_sessions=6, max_sessions_per_key=4, pool_size=0)
    with run_server(settings) as url:
        async with httpx.AsyncClient(base_url=url, headers=AUTH_A, timeout=60) as a, \
                httpx.AsyncClient(base_url=url, headers=AUTH_B, timeout=60) as b:
            try:
                first = await burst(a, 8)
                assert statuses(first) == {201: 4, 429: 4}, [r.text for r in first]
                second = await burst(b, 8)  # the server has 2 places left, not 0
                assert statuses(second) == {201: 2, 429: 6}, [r.text for r in second]
                refused = [r for r in first + second if r.status_code == 429]
                assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
                assert all("per key" in r.json()["error"]["message"]
                           for r in first if r.status_code == 429)
                assert all("maximum of 6" in r.json()["error"]["message"]
                           for r in second if r.status_code == 429)
                listed = [len((await c.get("/v1/sessions")).json()["sessions"]) for c in (a, b)]
                assert listed == [4, 2]
            finally:
                await close_all(a)
                await close_all(b)


async def test_a_refused_start_gives_its_place_back(engine: object, tmp_path: Path) -> None:
    """Creates refused by the start line (one slot, no waiting) hold no place: the key
    can then fill its cap exactly, and not one more."""
    settings = make_settings(tmp_path, max_sessions=8, max_sessions_per_key=3, pool_size=0,
                             max_concurrent_starts=1, start_queue_timeout_s=0)
    with run_server(settings) as url:
        async with httpx.AsyncClient(base_url=url, headers=AUTH_A, timeout=60) as a:
            try:
                first = await burst(a, 3)
                assert statuses(first) == {201: 1, 503: 2}, [r.text for r in first]
                for r in first:
                    if r.status_code == 503:
                        assert r.json()["error"]["code"] == "start_queue_full"
                        assert int(r.headers["Retry-After"]) >= 1
                for _ in range(2):
                    assert (await a.post("/v1/sessions")).status_code == 201
                over = await a.post("/v1/sessions")
                assert over.status_code == 429 and "per key" in over.json()["error"]["message"]
            finally:
                await close_all(a)
