"""Shape buckets: the fixed set of shapes every step is padded to, and precompiled at start-up.

XLA compiles one program per input shape. A serving step has a varying number of tokens and of
requests, so each axis gets one list of sizes (powers of two from a minimum, with the limit
itself as the last entry). The *same* list is used to pad a step (:func:`pad_to_bucket`) and to
precompile (``for n in buckets: compile(n)``), so serving can never meet a shape that was not
compiled.

Granularity trades start-up against padding: a prompt of 1,100 tokens runs in the 2,048-token
program, and prefill costs in proportion to the padded tokens, while each bucket more is one
model-step program (and one prompt-logprobs program) more to compile. :func:`token_buckets`
takes vLLM's TPU backend's knob for it (``VLLM_TPU_BUCKET_PADDING_GAP``): powers of two up to
the gap, then steps of the gap.
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


def token_buckets(minimum: int, maximum: int, padding_gap: int = 0) -> list[int]:
    """The token buckets: :func:`power_of_two_buckets`, or with ``padding_gap`` those up to
    ``padding_gap``, then every multiple of it up to ``maximum`` (always the last bucket).

    ``token_buckets(16, 512, 64)`` is ``[16, 32, 64, 128, 192, ..., 448, 512]``: at most
    ``padding_gap - 1`` padding tokens above the gap, where powers of two pad up to half a step.

    Raises:
        ValueError: a ``padding_gap`` that is negative, or positive and below ``minimum``.
    """
    if padding_gap == 0:
        return power_of_two_buckets(minimum, maximum)
    if padding_gap < minimum:
        raise ValueError(f"{padding_gap=} must be 0 or at least the smallest bucket {minimum}")
    small = power_of_two_buckets(minimum, min(padding_gap, maximum))
    if small[-1] == maximum:  # the limit is at or below the gap
        return small
    return [*small, *range(2 * padding_gap, maximum, padding_gap), maximum]


def pad_to_bucket(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``n``.

    Raises:
        ValueError: ``n`` is larger than the largest bucket.
    """
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{n=} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]
