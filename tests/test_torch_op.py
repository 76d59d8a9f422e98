"""``torch.ops.xla_gpu.ragged_paged_attention`` against dense attention, eagerly and under torchax.

The same paged steps as the JAX op's tests (``test_ragged_paged_attention.make_step``). The op
must give the real result on plain CPU tensors, propagate shapes under fake tensors, and, inside
``torchax.default_env()`` under ``jax.jit`` (how the runner traces vLLM's attention layers),
lower to the JAX implementation: the captured torch graph holds one op node per call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchax
from test_ragged_paged_attention import ATOL, RTOL, expected_output, make_step
from torch._subclasses.fake_tensor import FakeTensorMode
from torchax.interop import jax_view, torch_view

from vllm_xla_gpu.ops import torch_op


def op_args(step) -> tuple[torch.Tensor, ...]:
    """The op's tensor arguments for ``step``, as CPU torch tensors."""
    md = step.md
    arrays = (step.q, step.k, step.v, step.kv_cache)
    metadata = (md.slot_mapping, md.block_tables, md.seq_lens, md.query_start_loc)
    return (*(torch.tensor(a) for a in arrays), *(torch.tensor(a) for a in metadata))


@pytest.mark.parametrize("case", ["decode_only", "mixed", "chunked_prefill"])
def test_eager_cpu_tensors_match_dense(case: str) -> None:
    step = make_step(case, 8, 2, seed=11)
    sm_scale = step.q.shape[-1] ** -0.5
    out, kv_cache = torch.ops.xla_gpu.ragged_paged_attention(
        *op_args(step), sm_scale=sm_scale, impl="reference"
    )
    np.testing.assert_allclose(
        out.numpy(), expected_output(step, sm_scale=sm_scale), atol=ATOL[jnp.float32], rtol=0
    )
    np.testing.assert_array_equal(kv_cache.numpy(), step.expected_kv_cache)


def test_sliding_window_and_soft_cap_pass_through() -> None:
    step = make_step("chunked_prefill", 4, 2, block_size=4, seed=12)
    options = {"sm_scale": step.q.shape[-1] ** -0.5, "sliding_window": 5, "soft_cap": 0.5}
    out, _ = torch.ops.xla_gpu.ragged_paged_attention(*op_args(step), **options)
    np.testing.assert_allclose(
        out.numpy(), expected_output(step, **options), atol=ATOL[jnp.float32], rtol=0
    )


def test_fake_tensors_propagate_shapes() -> None:
    step = make_step("mixed", 8, 2, seed=13)
    with FakeTensorMode() as mode:
        fake = tuple(mode.from_tensor(t) for t in op_args(step))
        out, kv_cache = torch.ops.xla_gpu.ragged_paged_attention(*fake, sm_scale=1.0)
    assert out.shape == step.q.shape and out.dtype == torch.float32
    assert kv_cache.shape == step.kv_cache.shape


def test_opcheck() -> None:
    """torch's own consistency checks: schema, fake implementation, dispatch."""
    step = make_step("decode_only", 4, 2, seed=14)
    torch.library.opcheck(
        torch.ops.xla_gpu.ragged_paged_attention.default,
        op_args(step),
        {"sm_scale": 0.5},
        test_utils=("test_schema", "test_faketensor"),
    )


def test_torchax_lowers_to_jax_under_jit() -> None:
    """Inside torchax, under ``jax.jit``: the op runs the JAX implementation on traced arrays."""
    torch_op.register_torch_op()
    step = make_step("mixed", 8, 2, dtype=jnp.bfloat16, head_dim=64, seed=15)
    sm_scale = 64**-0.5

    def layer(*arrays: jax.Array) -> tuple[jax.Array, jax.Array]:
        q, *rest = torch_view(arrays)
        out, kv_cache = torch.ops.xla_gpu.ragged_paged_attention(q * 1.0, *rest, sm_scale=sm_scale)
        return jax_view((out, kv_cache))

    args = [jnp.asarray(a, jnp.bfloat16) for a in (step.q, step.k, step.v, step.kv_cache)]
    md = step.md
    args += [jnp.asarray(a) for a in (md.slot_mapping, md.block_tables, md.seq_lens)]
    args.append(jnp.asarray(md.query_start_loc))
    with torchax.default_env():
        out, kv_cache = jax.jit(layer)(*args)
    assert out.dtype == jnp.bfloat16
    expected = expected_output(step, sm_scale=sm_scale)
    np.testing.assert_allclose(
        np.asarray(out, np.float32), expected, atol=ATOL[jnp.bfloat16], rtol=RTOL[jnp.bfloat16]
    )
    np.testing.assert_array_equal(np.asarray(kv_cache, np.float32), step.expected_kv_cache)
