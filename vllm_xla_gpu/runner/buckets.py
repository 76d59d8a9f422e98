"""Shape buckets: the fixed set of shapes every step is padded to, and precompiled at start-up.

XLA compiles one program per input shape. A serving step has a varying number of tokens and of
requests, so each axis gets one list of sizes (powers of two from a minimum, with the limit
itself as the last entry). The *same* list is used to pad a step (:func:`pad_to_bucket`) and to
precompile (``for n in buckets: compile(n)``), so serving can never meet a shape that was not
compiled.
"""

from __future__ import annotations

import bisect


def power_of_two_buckets(minimum: int, maximum: int) -> list[int]:
    """Sizes ``minimum, 2*minimum, ...`` below ``maximum``, then ``maximum`` itself.

    Args:
        minimum: the smallest bucket (a power of two is not required).
        maximum: the largest size a step may have; always the last bucket.

    Returns:
        Strictly increasing bucket sizes.
    """
    if minimum < 1 or maximum < 1:
        raise ValueError(f"{minimum=} and {maximum=} must be positive")
    buckets = []
    size = min(minimum, maximum)
    while size < maximum:
        buckets.append(size)
        size *= 2
    buckets.append(maximum)
    return buckets


def pad_to_bucket(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``n``.

    Raises:
        ValueError: ``n`` is larger than the largest bucket.
    """
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{n=} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]
