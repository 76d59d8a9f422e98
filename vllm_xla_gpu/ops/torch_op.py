"""``torch.ops.xla_gpu.ragged_paged_attention``: the paged-attention op as one PyTorch operator.

vLLM's model code is PyTorch. Exposing the op through ``torch.library`` lets torch code call it
as a single operator with a schema, so anything that captures torch graphs (torchax while the
runner traces a step, ``torch.compile``, FX) sees one node per attention layer instead of the
gathers and matmuls inside. It has three implementations:

* **torchax** (what the runner uses): inside ``torchax.default_env()`` the op's arguments are
  torchax tensors wrapping traced JAX arrays; :func:`register_torch_op` tells torchax to lower
  the op to the JAX ``ragged_paged_attention`` implementation named by its ``impl`` argument, so
  the kernel (or the reference) lands in the step's compiled program.
* **eager CPU tensors**: the arguments go through numpy to JAX, the same JAX implementation runs,
  and the results come back as torch tensors: a real result, useful for tests and tooling.
* **fake/meta**: shapes only (``out`` like ``q``, ``kv_cache_out`` like ``kv_cache``), for shape
  propagation by ``torch.compile`` and ``FakeTensorMode``.

The op is functional: it returns the updated cache instead of mutating ``kv_cache``, as the JAX
op does (XLA updates it in place through buffer donation).
"""

from __future__ import annotations

import functools

import torch

from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata

OP_NAME = "xla_gpu::ragged_paged_attention"


@torch.library.custom_op(OP_NAME, mutates_args=())
def ragged_paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    impl: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write K/V into the paged cache and attend; returns ``(out, kv_cache_out)``.

    Arguments are those of the JAX op (see ``ragged_paged_attention/reference.py``) with the
    metadata fields spelled out, plus ``impl``, the registry name of the JAX implementation
    (``reference``, ``triton``, ...). This eager version runs it on JAX's default device.
    """
    import jax.numpy as jnp
    import torchax.ops.mappings as mappings

    fn = _jitted_implementation(impl)
    md = AttentionMetadata(
        slot_mapping=jnp.asarray(slot_mapping.numpy()),
        block_tables=jnp.asarray(block_tables.numpy()),
        seq_lens=jnp.asarray(seq_lens.numpy()),
        query_start_loc=jnp.asarray(query_start_loc.numpy()),
    )
    to_jax = mappings.t2j  # handles bfloat16, which numpy lacks
    out, new_cache = fn(
        to_jax(q),
        to_jax(k),
        to_jax(v),
        to_jax(kv_cache),
        md,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
    )
    return mappings.j2t(out), mappings.j2t(new_cache)


@ragged_paged_attention.register_fake
def _(q, k, v, kv_cache, slot_mapping, block_tables, seq_lens, query_start_loc, *args, **kwargs):
    return torch.empty_like(q), torch.empty_like(kv_cache)


def _jax_implementation(impl: str):
    """The JAX function registered as ``impl`` for JAX's default backend."""
    import jax

    from vllm_xla_gpu.ops.ragged_paged_attention.registry import get_ragged_paged_attention

    return get_ragged_paged_attention(impl, jax.default_backend())


@functools.cache
def _jitted_implementation(impl: str):
    """``impl`` under ``jax.jit`` for eager calls (op by op, the reference's loop is slow)."""
    import jax

    return jax.jit(
        _jax_implementation(impl), static_argnames=("sm_scale", "sliding_window", "soft_cap")
    )


def _torchax_lowering(
    q, k, v, kv_cache, slot_mapping, block_tables, seq_lens, query_start_loc, *args, **kwargs
):
    """The op on torchax tensors: unwrap to JAX, run the JAX implementation, wrap the results."""
    from torchax.interop import jax_view, torch_view

    sm_scale, sliding_window, soft_cap, impl = _options(*args, **kwargs)
    md = AttentionMetadata(*jax_view((slot_mapping, block_tables, seq_lens, query_start_loc)))
    out, new_cache = _jax_implementation(impl)(
        *jax_view((q, k, v, kv_cache)),
        md,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
    )
    return torch_view((out, new_cache))


def _options(
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    impl: str = "reference",
) -> tuple[float, int | None, float | None, str]:
    """The op's non-tensor arguments, however torch passed them (positionally or by name)."""
    return sm_scale, sliding_window, soft_cap, impl


_registered_with_torchax = False


def register_torch_op() -> None:
    """Lower the op to JAX inside ``torchax.default_env()`` (idempotent; cheap after the first).

    The runner calls it before tracing; importing this module alone defines the torch op.
    """
    global _registered_with_torchax
    if _registered_with_torchax:
        return
    import torchax

    op = torch.ops.xla_gpu.ragged_paged_attention
    torchax.default_env().override_op_definition(op.default, _torchax_lowering)
    _registered_with_torchax = True
