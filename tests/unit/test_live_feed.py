"""LiveFeed (api/live.py): what one event-stream client can have waiting is bounded, and
a client that falls behind is told, once, in order. The attack itself runs against a
real server in tests/security/test_sse_backpressure.py."""

from __future__ import annotations

import json

from api.server.live import END, LiveFeed


async def drain(feed: LiveFeed) -> list[tuple[str, object]]:
    frames = []
    while (item := await feed.next(0.01)) not in (END, None):
        assert isinstance(item, str)
        head, data = item.split("\n", 1)
        frames.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return frames


async def test_a_feed_holds_at_most_its_bound_then_says_it_is_lagging() -> None:
    feed = LiveFeed(max_bytes=10_000, max_events=1000)
    sent = [feed.offer("output", {"text": "x" * 900}) for _ in range(100)]
    assert sent.count(True) == 10 and feed.lagging and feed.missed == 90
    assert feed.peak_bytes <= 10_000 + 400  # the bound, and the small `lagging` frame
    feed.finish("result", {"status": "ok"})
    frames = await drain(feed)
    assert [k for k, _ in frames] == ["output"] * 10 + ["lagging", "result"]
    assert feed.queued_bytes == 0
    note = feed.note()
    assert note is not None and "90 event(s) were not sent" in note


async def test_the_event_count_is_bounded_too() -> None:
    feed = LiveFeed(max_bytes=1 << 30, max_events=5)
    assert [feed.offer("output", {}) for _ in range(7)] == [True] * 5 + [False] * 2


async def test_one_frame_larger_than_the_bound_still_gets_through_an_empty_feed() -> None:
    feed = LiveFeed(max_bytes=1000, max_events=10)
    assert feed.offer("output", {"text": "y" * 5000})
    assert not feed.lagging and feed.note() is None


async def test_a_client_that_left_drops_everything_and_the_result_says_so() -> None:
    feed = LiveFeed(max_bytes=10_000, max_events=100)
    feed.offer("output", {"text": "a"})
    feed.leave()
    assert feed.queued_bytes == 0 and not feed.offer("output", {"text": "b"})
    note = feed.note()
    assert note is not None and "client disconnected" in note


async def test_next_times_out_for_keep_alives_and_ends_after_the_last_frame() -> None:
    feed = LiveFeed(max_bytes=10_000, max_events=100)
    assert await feed.next(0.01) is None  # nothing yet: the caller sends a keep-alive
    feed.finish("error", {"error": {}})
    feed.finish("result", {})  # only the first final frame counts
    assert (await feed.next(0.01) or "").startswith("event: error")
    assert await feed.next(0.01) is END
