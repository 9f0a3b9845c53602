"""Alternating runs: a subject and its baselines take turns, in blocks, in orders that
change from round to round, so that no side always runs first or after the same one and
a drift of the machine's load reaches every side alike."""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence

Step = Callable[[], Awaitable[float | None]]
Record = Callable[[str, float], None]

# Every order of three sides, each side first twice and after each other side thrice.
ROTATION_3 = (("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b"),
              ("a", "c", "b"), ("b", "a", "c"), ("c", "b", "a"))


def alternating(names: Sequence[str]) -> list[tuple[str, ...]]:
    """The sides in their order, then reversed, then in order again..."""
    return [tuple(names), tuple(reversed(names))]


def rotation(names: Sequence[str]) -> list[tuple[str, ...]]:
    """For three sides: the six orders of :data:`ROTATION_3`, *names* standing for a, b, c."""
    if len(names) != 3:
        raise ValueError(f"rotation() takes three sides, not {len(names)}")
    by_letter = dict(zip("abc", names, strict=True))
    return [tuple(by_letter[x] for x in order) for order in ROTATION_3]


def shuffled(names: Sequence[str], seed: int) -> list[tuple[str, ...]]:
    """Every permutation of the sides, in a seeded random order."""
    orders = list(itertools.permutations(names))
    random.Random(seed).shuffle(orders)
    return orders


def block_counts(n: int, block: int) -> list[int]:
    """How many runs each side gets per round: *block* at a time, the rest last."""
    block = max(1, min(block, n))
    return [min(block, n - done) for done in range(0, n, block)]


async def interleave(sides: Mapping[str, Step], n: int, *, block: int,
                     orders: Sequence[Sequence[str]], record: Record | None = None,
                     advance: Callable[[int], None] | None = None) -> None:
    """Run each side *n* times: in rounds of blocks (*block* runs of one side, then of the
    next), the sides in ``orders[round % len(orders)]``. A step that returns a number
    has it recorded under the side's name (when *record* is given); *advance* is told
    of every run (a progress bar)."""
    for rnd, k in enumerate(block_counts(n, block)):
        for name in orders[rnd % len(orders)]:
            for _ in range(k):
                value = await sides[name]()
                if value is not None and record is not None:
                    record(name, value)
                if advance is not None:
                    advance(1)
