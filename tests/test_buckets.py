"""Token buckets: the sizes every step is padded to, against vLLM's TPU backend's semantics for
its padding gap, and the padding each leaves."""

from __future__ import annotations

import pytest

from vllm_xla_gpu.runner.buckets import pad_to_bucket, token_buckets


def test_padding_gap_gives_vllm_tpu_buckets():
    # vLLM's TPU backend's own example (its test of _get_paddings, gap 64).
    assert token_buckets(16, 512, 64) == [16, 32, 64, 128, 192, 256, 320, 384, 448, 512]


def test_no_gap_is_powers_of_two():
    assert token_buckets(16, 8192) == [16 << i for i in range(10)]
    assert token_buckets(16, 1000) == [16, 32, 64, 128, 256, 512, 1000]  # ends at the limit


@pytest.mark.parametrize(
    "minimum, maximum, gap", [(16, 8192, 1024), (16, 1000, 64), (16, 100, 64), (8, 48, 64)]
)
def test_every_step_pads_to_a_bucket_within_the_gap(minimum: int, maximum: int, gap: int):
    """Strictly increasing, ending at the limit; above the gap no step pads by a gap or more,
    below it no step pads past the next power of two."""
    buckets = token_buckets(minimum, maximum, gap)
    assert buckets == sorted(set(buckets)) and buckets[-1] == maximum
    for n in range(1, maximum + 1):
        padded = pad_to_bucket(n, buckets)
        assert padded >= n
        if n > gap:
            assert padded - n < gap
        elif n > minimum:
            assert padded < 2 * n


def test_gap_below_the_smallest_bucket_is_refused():
    with pytest.raises(ValueError, match="padding_gap=8"):
        token_buckets(16, 512, 8)
