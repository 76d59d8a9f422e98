"""vLLM V1 platform plugin that runs every forward pass through OpenXLA/PJRT.

vLLM finds this package through two entry points (see ``pyproject.toml``):

* ``vllm.platform_plugins`` -> :func:`register_platform`: returns the class path of
  :class:`vllm_xla_gpu.platform.XlaGpuPlatform`, or ``None`` when the plugin is turned off.
* ``vllm.general_plugins`` -> :func:`register_general`: registers the paged-attention
  backend with vLLM's backend registry.

Both run in every vLLM process, so they must be cheap and must not start a JAX backend.
Nothing else happens at import time.
"""


def register_platform() -> str | None:
    """Entry point for ``vllm.platform_plugins``.

    Returns:
        The qualified name of the platform class, or ``None`` when ``VLLM_XLA_GPU_DISABLE=1``
        (vLLM then falls back to its built-in platforms, e.g. CUDA).
    """
    from vllm_xla_gpu.config import plugin_enabled

    return "vllm_xla_gpu.platform.XlaGpuPlatform" if plugin_enabled() else None


def register_general() -> None:
    """Entry point for ``vllm.general_plugins``: register the attention backend (idempotent)."""
    from vllm_xla_gpu.config import plugin_enabled

    if not plugin_enabled():
        return
    from vllm_xla_gpu.attention.registration import register_attention_backend

    register_attention_backend()
