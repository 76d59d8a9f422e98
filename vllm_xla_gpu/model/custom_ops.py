"""JAX implementations of vLLM's small custom ops, registered as their out-of-tree versions.

vLLM's layers are ``CustomOp``s; on an out-of-tree platform such as this one each calls its
``forward_oot``, which defaults to the PyTorch-native code. Traced through torchax, that code
costs one torchax dispatch per torch op (about 0.6 ms each on the dev CPU) at every layer of
every bucket's program: the rotary embedding alone took 29 ms of tracing per decoder layer
(docs/performance.md, "Warm restart"). XLA merges what the layers recompute, so the compiled
program does not care, but start-up does: tracing is most of a warm restart.

Here ``forward_oot`` of three ops runs one JAX function on the unwrapped arrays instead, with
the arithmetic of vLLM's native code, op for op and in the same dtypes:

* ``RotaryEmbedding`` and each subclass that keeps its forward (Llama 3's scaling, NTK, YaRN...
  differ only in how they build ``cos_sin_cache``): ``RotaryEmbedding.forward_static`` and
  ``ApplyRotaryEmb.forward_static``;
* ``RMSNorm``: vLLM's IR ops ``rms_norm`` and ``fused_add_rms_norm`` (``vllm/ir/ops``);
* ``SiluAndMul``: ``SiluAndMul.forward_native``.

Subclasses with a forward of their own (multimodal M-RoPE, Gemma's norm...) keep it.
:func:`register_custom_ops` installs the replacements through ``CustomOp.register_oot``, before
the model is built.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import torch
from torchax.interop import jax_view, torch_view
from vllm.model_executor.custom_op import CustomOp, op_registry_oot
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding


def rotary_embedding(
    positions: jax.Array,  # i32[num_tokens] (or any shape; flattened)
    query: jax.Array,  # [num_tokens, num_heads * head_size] (or [..., head_size])
    key: jax.Array | None,
    cos_sin_cache: jax.Array,  # [max_position, rotary_dim]: cos then sin halves
    *,
    head_size: int,
    rotary_dim: int,
    is_neox_style: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """vLLM's ``RotaryEmbedding.forward_static`` in JAX: rotate the first ``rotary_dim``
    features of every head of ``query`` and ``key`` by each token's position."""
    positions = positions.reshape(-1)
    cos, sin = jnp.split(cos_sin_cache.astype(query.dtype)[positions], 2, axis=-1)

    def rotate(x: jax.Array) -> jax.Array:
        shape = x.shape
        x = x.reshape(positions.shape[0], -1, head_size)
        rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
        c, s = cos[:, None, :].astype(x.dtype), sin[:, None, :].astype(x.dtype)
        if is_neox_style:
            x1, x2 = jnp.split(rot, 2, axis=-1)
        else:
            x1, x2 = rot[..., ::2], rot[..., 1::2]
        o1 = x1 * c - x2 * s
        o2 = x2 * c + x1 * s
        if is_neox_style:
            rot = jnp.concatenate([o1, o2], axis=-1)
        else:
            rot = jnp.stack([o1, o2], axis=-1).reshape(rot.shape)
        return jnp.concatenate([rot, rest], axis=-1).reshape(shape)

    return rotate(query), None if key is None else rotate(key)


def rms_norm(
    x: jax.Array,  # [..., hidden]
    weight: jax.Array | None,  # [hidden]
    epsilon: float,
    variance_size: int | None = None,
    residual: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """vLLM's IR ops ``rms_norm`` (no ``residual``) and ``fused_add_rms_norm`` (returns the
    normalized sum and the sum itself, the next residual) in JAX."""
    orig_dtype = x.dtype
    x = x.astype(jnp.float32)
    if residual is not None:
        x = x + residual.astype(jnp.float32)
        residual = x.astype(orig_dtype)
    x_var = x if variance_size is None else x[..., :variance_size]
    variance = jnp.mean(x_var**2, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(variance + epsilon)
    if weight is not None:
        x = x.astype(weight.dtype) * weight
    x = x.astype(orig_dtype)
    return x if residual is None else (x, residual)


def silu_and_mul(x: jax.Array) -> jax.Array:
    """vLLM's ``SiluAndMul``: ``silu(x[..., :d]) * x[..., d:]`` with ``d`` half the last axis."""
    d = x.shape[-1] // 2
    return jax.nn.silu(x[..., :d]) * x[..., d:]


def _rotary_forward_oot(
    self: RotaryEmbedding,
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = rotary_embedding(
        *jax_view((positions, query, key, self.cos_sin_cache)),
        head_size=self.head_size,
        rotary_dim=self.rotary_dim,
        is_neox_style=self.is_neox_style,
    )
    return torch_view(out)


def _rms_norm_forward_oot(
    self: RMSNorm, x: torch.Tensor, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    pass_weight = self.pass_weight if residual is None else self.pass_weight_add
    out = rms_norm(
        *jax_view((x, self.weight if pass_weight else None)),
        self.variance_epsilon,
        self.variance_size_override,
        jax_view(residual),
    )
    return torch_view(out)


def _silu_and_mul_forward_oot(self: SiluAndMul, x: torch.Tensor) -> torch.Tensor:
    return torch_view(silu_and_mul(jax_view(x)))


# vLLM class -> (the methods a subclass must not override to share its forward, our forward_oot)
_REPLACED = {
    RotaryEmbedding: (("forward_native", "forward_static"), _rotary_forward_oot),
    RMSNorm: (("forward_native",), _rms_norm_forward_oot),
    SiluAndMul: (("forward_native",), _silu_and_mul_forward_oot),
}


def _plain_subclasses(base: type, methods: tuple[str, ...]) -> list[type]:
    """``base`` and every loaded subclass that overrides none of ``methods`` (nor ``forward``
    and ``forward_oot``): they all compute what ``base`` computes."""
    methods = (*methods, "forward", "forward_oot")
    found, todo = [], [base]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        same = all(getattr(cls, name) is getattr(base, name) for name in methods)
        if same and not cls.__name__.startswith("Xla"):
            found.append(cls)
    return found


@functools.cache
def register_custom_ops() -> None:
    """Register this module's ``forward_oot`` for each class above (once per process; vLLM
    then instantiates the registered subclass wherever a model asks for the class)."""
    import vllm.model_executor.layers.rotary_embedding  # noqa: F401  (loads the subclasses)

    for base, (methods, forward_oot) in _REPLACED.items():
        for cls in _plain_subclasses(base, methods):
            if cls.__name__ in op_registry_oot:
                continue  # another plugin's, or ours from an earlier import
            replacement = type(f"Xla{cls.__name__}", (cls,), {"forward_oot": forward_oot})
            CustomOp.register_oot(replacement, name=cls.__name__)
