"""All orders of the actors' steps that keep each actor's own order.

For step counts (2, 1) that is three orders: AAB, ABA, BAA. The count is the
multinomial coefficient, which is why exhaustive enumeration is for small
scenarios and larger ones are sampled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from math import factorial, prod


def interleavings(steps: Mapping[str, int]) -> Iterator[tuple[str, ...]]:
    """Every merge of the actors' step sequences, in lexicographic order of actor names."""
    remaining = {actor: count for actor, count in steps.items() if count > 0}
    total = sum(remaining.values())
    order: list[str] = []

    def extend() -> Iterator[tuple[str, ...]]:
        if len(order) == total:
            yield tuple(order)
            return
        for actor in sorted(remaining):
            if remaining[actor]:
                remaining[actor] -= 1
                order.append(actor)
                yield from extend()
                order.pop()
                remaining[actor] += 1

    yield from extend()


def count_interleavings(steps: Mapping[str, int]) -> int:
    counts = [c for c in steps.values() if c > 0]
    return factorial(sum(counts)) // prod(factorial(c) for c in counts)
