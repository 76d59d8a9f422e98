"""``runner/transfer.py``: a pytree survives packing, the jitted call's transfer and unpacking
bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata
from vllm_xla_gpu.runner.step_inputs import dummy_step_inputs, pack_step_inputs
from vllm_xla_gpu.runner.transfer import pack, unpack


def sample_tree(rng: np.random.Generator) -> dict:
    floats = rng.standard_normal(7).astype(np.float32)
    floats[:3] = [np.nan, -0.0, np.inf]  # bit patterns a float round trip could change
    return {
        "ids": rng.integers(-(2**31), 2**31 - 1, 5, dtype=np.int32),
        "floats": floats,
        "seeds": rng.integers(0, 2**32 - 1, 3, dtype=np.uint32),
        "mask": rng.random(4) < 0.5,
        "scalar": np.float32(0.25),
        "empty": np.zeros(0, np.int32),
        "table": rng.integers(0, 9, (3, 4), dtype=np.int32),  # 2-D: travels as it is
        "bitmask": rng.random((2, 3)) < 0.5,  # a big bool leaf
        "constant": jnp.ones((2, 2), jnp.float32),  # a device array among the big leaves
        "md": AttentionMetadata(
            slot_mapping=np.arange(4, dtype=np.int32),
            block_tables=np.ones((2, 3), np.int32),
            seq_lens=np.array([3, 0], np.int32),
            query_start_loc=np.array([0, 4, 4], np.int32),
        ),
    }


@pytest.mark.parametrize("staged", [False, True])
def test_round_trip_under_jit_is_bit_exact(staged: bool) -> None:
    """With ``staged``, every leaf is read through ``stage``'s copy, which must not change a
    bit either (NaN, -0.0, bools, negative ints)."""
    tree = sample_tree(np.random.default_rng(0))
    words, big, packing = pack(tree)  # numpy: jit moves it to the device, as the runner does
    assert words.dtype == np.uint32 and words.ndim == 1
    assert len(big) == 4  # table, bitmask, constant, block_tables
    step = jax.jit(unpack, static_argnums=(2, 3))
    out = step(words, big, packing, staged)
    # The copy is there to stay (a barrier between its two halves), only when asked for.
    lowered = step.lower(words, big, packing, staged).as_text()
    assert ("optimization_barrier" in lowered) == staged
    for expected, got in zip(jax.tree.leaves(tree), jax.tree.leaves(out), strict=True):
        expected = np.asarray(expected)
        got = np.asarray(got)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(
            got.reshape(-1).view(np.uint8), expected.reshape(-1).view(np.uint8)
        )
    assert isinstance(out["md"], AttentionMetadata)


def test_layout_depends_only_on_shapes() -> None:
    """Two steps of one bucket share a layout, so they share one compiled program."""
    a = pack(sample_tree(np.random.default_rng(1)))[2]
    b = pack(sample_tree(np.random.default_rng(2)))[2]
    assert a == b and hash(a) == hash(b)


def test_rejects_what_it_cannot_carry() -> None:
    with pytest.raises(TypeError, match="cannot pack int64"):
        pack({"x": np.arange(3, dtype=np.int64)})
    with pytest.raises(TypeError, match="must be host arrays"):
        pack({"x": jnp.arange(3)})


@pytest.mark.parametrize(("bucket", "rows"), [(16, 16), (512, 256)])
def test_step_inputs_travel_in_one_buffer(bucket: int, rows: int) -> None:
    """A token bucket's per-request rows are ``min(bucket, max_num_seqs)``, and the model
    step's inputs, block table included, pack into the words alone (one transfer a step)."""
    inputs = dummy_step_inputs(bucket, max_num_reqs=256, max_blocks=8)
    inputs.attn.block_tables[:] = np.random.default_rng(3).integers(0, 99, (rows, 8))
    assert inputs.attn.block_tables.shape == (rows, 8)
    assert inputs.attn.seq_lens.shape == inputs.logits_indices.shape == (rows,)
    assert inputs.attn.query_start_loc.shape == (rows + 1,)
    words, big, packing = pack_step_inputs(inputs)
    assert big == []
    out = jax.jit(unpack, static_argnums=(2,))(words, big, packing)
    for expected, got in zip(jax.tree.leaves(inputs), jax.tree.leaves(out), strict=True):
        np.testing.assert_array_equal(np.asarray(got), expected)
