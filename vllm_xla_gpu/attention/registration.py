"""Registers :class:`XlaGpuPagedAttentionBackend` under its own name in vLLM's backend enum.

``Attention.__init__`` looks its backend up by ``get_name()`` in ``AttentionBackendEnum``, so the
name must exist there in every process that builds a model; the general-plugin entry point calls
:func:`register_attention_backend` once per process.
"""

from __future__ import annotations

BACKEND_NAME = "XLA_GPU_PAGED_ATTN"
BACKEND_PATH = "vllm_xla_gpu.attention.backend.XlaGpuPagedAttentionBackend"


def register_attention_backend() -> None:
    """Add ``XLA_GPU_PAGED_ATTN`` to vLLM's attention backend registry (idempotent)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if BACKEND_NAME in AttentionBackendEnum.__members__:
        return
    register_backend(BACKEND_NAME, BACKEND_PATH)
