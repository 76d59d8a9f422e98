"""``XlaGpuPagedAttentionBackend``: vLLM's attention layers, computed by the JAX paged-attention op.

Data flow inside one traced step (see ``runner/model_runner.py``):

1. The runner puts an :class:`XlaGpuAttentionMetadata` into vLLM's forward context. It holds the
   step's :class:`~vllm_xla_gpu.ops.attention_metadata.AttentionMetadata` (traced JAX arrays), the
   per-layer KV caches (``layer_name -> [2, num_blocks, block_size, num_kv_heads, head_dim]``)
   and the registry name of the chosen ``ragged_paged_attention`` implementation.
2. vLLM's ``Attention.forward`` calls :meth:`XlaGpuPagedAttentionImpl.forward` with torchax
   tensors ``query [T, Hq, D]``, ``key``/``value [T, Hkv, D]`` (rotary applied) and an
   ``output [T, Hq, D]`` to fill in place. vLLM's own ``kv_cache`` argument is an empty
   placeholder: the real cache comes from the forward context, keyed by ``layer.layer_name``.
3. The impl calls the torch operator ``torch.ops.xla_gpu.ragged_paged_attention`` (one node per
   layer in the captured torch graph), which torchax lowers to the JAX implementation. It
   writes the new K/V into the pages and attends; the updated cache replaces the old one in the
   context, and the runner returns all caches from the jitted step so they are donated.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import torch
from torchax.interop import jax_view, torch_view
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionLayer,
    AttentionType,
    MultipleOf,
)

from vllm_xla_gpu.attention.registration import BACKEND_NAME
from vllm_xla_gpu.ops import torch_op  # noqa: F401  (defines torch.ops.xla_gpu.*)
from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata


@dataclasses.dataclass
class XlaGpuAttentionMetadata:
    """What the runner hands every attention layer through vLLM's forward context.

    Attributes:
        metadata: the step's paged-attention metadata (traced arrays, shared by all layers).
        kv_caches: layer name -> KV cache; each layer replaces its entry with the updated cache.
        attention_impl: registry name of the ``ragged_paged_attention`` implementation
            (``reference``, ``triton``, ...), resolved from the config for the device.
    """

    metadata: AttentionMetadata
    kv_caches: dict[str, jax.Array]
    attention_impl: str


class XlaGpuPagedAttentionBackend(AttentionBackend):
    """Paged attention for the XLA backend: KV cache ``[2, blocks, block_size, Hkv, D]``."""

    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.bfloat16, torch.float16, torch.float32]
    forward_includes_kv_cache_update: bool = True

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[XlaGpuPagedAttentionImpl]:
        return XlaGpuPagedAttentionImpl

    @staticmethod
    def get_builder_cls():
        # Metadata for the whole step is built by XlaGpuModelRunner in numpy, not per backend.
        raise NotImplementedError("XlaGpuModelRunner builds the attention metadata itself.")

    @staticmethod
    def get_kv_cache_shape(
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_size: int,
        cache_dtype_str: str = "auto",
    ) -> tuple[int, ...]:
        """One array per layer; index 0 holds keys, 1 values (vLLM's FlashAttention layout)."""
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(8)]

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER


class XlaGpuPagedAttentionImpl(AttentionImpl):
    """Per-layer attention: hands q/k/v and the layer's cache to ``ragged_paged_attention``."""

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        **unused_extra_args,
    ) -> None:
        if alibi_slopes is not None:
            raise NotImplementedError("ALiBi is not supported by the XLA backend yet.")
        if kv_sharing_target_layer_name is not None:
            raise NotImplementedError("Cross-layer KV sharing is not supported yet.")
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"Attention type {attn_type} is not supported yet.")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap or None
        self.kv_cache_dtype = kv_cache_dtype

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: XlaGpuAttentionMetadata,
        output: torch.Tensor | None = None,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend over the paged cache; writes ``output [T, Hq, D]`` in place and returns it."""
        if output is None or output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("The XLA backend needs an output buffer and no fp8 output.")
        name = layer.layer_name
        md = attn_metadata.metadata
        out, new_cache = torch.ops.xla_gpu.ragged_paged_attention(
            query,
            key,
            value,
            torch_view(attn_metadata.kv_caches[name]),
            *torch_view((md.slot_mapping, md.block_tables, md.seq_lens, md.query_start_loc)),
            sm_scale=self.scale,
            sliding_window=self.sliding_window,
            soft_cap=self.logits_soft_cap,
            impl=attn_metadata.attention_impl,
        )
        attn_metadata.kv_caches[name] = jax_view(new_cache)
        output.copy_(out.reshape(output.shape))
        return output
