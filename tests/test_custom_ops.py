"""The JAX custom ops (``model/custom_ops.py``) against vLLM's own PyTorch-native code.

References, on the same inputs in float32 and bfloat16: ``RotaryEmbedding.forward_static``
(both rotation styles: NeoX halves, GPT-J interleaved pairs; a partial rotary dimension), the
native implementations of vLLM's IR ops ``rms_norm`` and ``fused_add_rms_norm`` (with and
without a weight, a variance size override), and ``SiluAndMul.forward_native``. Also: the
registration makes vLLM build the JAX-backed classes, and leaves classes with a forward of their
own alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm import ir
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
from vllm.model_executor.layers.rotary_embedding.mrope import MRotaryEmbedding

from vllm_xla_gpu.model.custom_ops import (
    _REPLACED,
    _plain_subclasses,
    register_custom_ops,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
)

HEAD_SIZE, NUM_HEADS, NUM_KV_HEADS, NUM_TOKENS, MAX_POS = 16, 4, 2, 7, 64


@pytest.mark.parametrize("is_neox_style", [True, False])
@pytest.mark.parametrize("rotary_dim", [HEAD_SIZE, HEAD_SIZE // 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_embedding_matches_vllm(is_neox_style, rotary_dim, dtype):
    gen = torch.Generator().manual_seed(0)
    positions = torch.randint(0, MAX_POS, (NUM_TOKENS,), generator=gen)
    query = torch.randn(NUM_TOKENS, NUM_HEADS * HEAD_SIZE, generator=gen).to(dtype)
    key = torch.randn(NUM_TOKENS, NUM_KV_HEADS * HEAD_SIZE, generator=gen).to(dtype)
    cache = torch.randn(MAX_POS, rotary_dim, generator=gen)  # float32, as vLLM builds it
    ref_q, ref_k = RotaryEmbedding.forward_static(
        positions, query, key, HEAD_SIZE, rotary_dim, cache.to(dtype), is_neox_style
    )

    q, k = rotary_embedding(
        positions.numpy().astype(np.int32),
        _numpy(query),
        _numpy(key),
        cache.numpy(),
        head_size=HEAD_SIZE,
        rotary_dim=rotary_dim,
        is_neox_style=is_neox_style,
    )
    rtol = RTOL[dtype]
    _assert_close(q, ref_q, rtol)
    _assert_close(k, ref_k, rtol)


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A torch tensor as numpy of the same dtype (bfloat16 through ml_dtypes)."""
    return t.float().numpy().astype("bfloat16" if t.dtype == torch.bfloat16 else np.float32)


def _assert_close(ours, reference: torch.Tensor, rtol: float) -> None:
    assert str(ours.dtype) == str(reference.dtype).removeprefix("torch.")
    np.testing.assert_allclose(np.asarray(ours, np.float32), reference.float().numpy(), rtol, 1e-6)


# float32: exact up to a fused multiply-add or a reduction order. bfloat16: up to two roundings
# (torch rounds silu(x) once, JAX's sigmoid-then-multiply twice).
RTOL = {torch.float32: 1e-5, torch.bfloat16: 2**-6}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("variance_size", [None, 24])
def test_rms_norm_matches_vllm_ir_ops(dtype, with_weight, variance_size):
    gen = torch.Generator().manual_seed(1)
    x, residual = (torch.randn(5, 32, generator=gen).to(dtype) for _ in range(2))
    weight = torch.randn(32, generator=gen).to(dtype) if with_weight else None
    native_rms_norm = ir.ops.rms_norm.impls["native"].impl_fn
    native_fused_add = ir.ops.fused_add_rms_norm.impls["native"].impl_fn
    ref = native_rms_norm(x, weight, 1e-5, variance_size)
    ref_sum_normed, ref_sum = native_fused_add(x, residual, weight, 1e-5, variance_size)

    w = None if weight is None else _numpy(weight)
    _assert_close(rms_norm(_numpy(x), w, 1e-5, variance_size), ref, RTOL[dtype])
    normed, summed = rms_norm(_numpy(x), w, 1e-5, variance_size, _numpy(residual))
    _assert_close(normed, ref_sum_normed, RTOL[dtype])
    _assert_close(summed, ref_sum, RTOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul_matches_vllm(dtype):
    x = torch.randn(5, 2 * 24, generator=torch.Generator().manual_seed(2)).to(dtype)
    _assert_close(silu_and_mul(_numpy(x)), SiluAndMul.forward_native(x), RTOL[dtype])


def test_registration_replaces_plain_classes_only():
    register_custom_ops()
    with set_current_vllm_config(VllmConfig()):
        rope = RotaryEmbedding(HEAD_SIZE, HEAD_SIZE, MAX_POS, 10000.0, True, torch.float32)
        norm, act = RMSNorm(32), SiluAndMul()
    for layer, cls in [(rope, RotaryEmbedding), (norm, RMSNorm), (act, SiluAndMul)]:
        assert type(layer).__name__ == f"Xla{cls.__name__}" and isinstance(layer, cls)
    names = {c.__name__ for base, (m, _) in _REPLACED.items() for c in _plain_subclasses(base, m)}
    assert "Llama3RotaryEmbedding" in names
    # their own forward: multimodal positions; Gemma's (1 + weight) scaling
    assert MRotaryEmbedding.__name__ not in names and GemmaRMSNorm.__name__ not in names
