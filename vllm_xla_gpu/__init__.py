"""vLLM V1 platform plugin that runs every forward pass through OpenXLA/PJRT.

vLLM finds this package through two entry points (see ``pyproject.toml``):

* ``vllm.platform_plugins`` -> :func:`register_platform`: returns the class path of
  :class:`vllm_xla_gpu.platform.XlaGpuPlatform`, or ``None`` when the plugin is turned off.
* ``vllm.general_plugins`` -> :func:`register_general`: registers the paged-attention
  backend with vLLM's backend registry.

Both run in every vLLM process, so they must be cheap and must not start a JAX backend.
Nothing else happens at import time.
"""

import os


def register_platform() -> str | None:
    """Entry point for ``vllm.platform_plugins``.

    Returns:
        The qualified name of the platform class, or ``None`` when ``VLLM_XLA_GPU_DISABLE=1``
        (vLLM then falls back to its built-in platforms, e.g. CUDA).
    """
    from vllm_xla_gpu.config import plugin_enabled

    if not plugin_enabled():
        return None
    # vLLM's scheduler speaks one of two protocols to the runner, picked by
    # ``VllmConfig.use_v2_model_runner``: by default V2 wherever Triton can start (a GPU host),
    # V1 elsewhere (XLA:CPU). Pin V1, the protocol this runner follows (as vLLM's V1 GPU runner
    # does), so that serving on a GPU runs the scheduler the CPU tests run. The runner still
    # accepts V2's (``VLLM_USE_V2_MODEL_RUNNER=1``). Set before any ``VllmConfig`` exists: its
    # ``__post_init__`` reads the choice before the platform's ``check_and_update_config``.
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    return "vllm_xla_gpu.platform.XlaGpuPlatform"


def register_general() -> None:
    """Entry point for ``vllm.general_plugins``: register the attention backend (idempotent)."""
    from vllm_xla_gpu.config import plugin_enabled

    if not plugin_enabled():
        return
    from vllm_xla_gpu.attention.registration import register_attention_backend

    register_attention_backend()
