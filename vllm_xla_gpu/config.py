"""The one configuration object of the backend, and the only reader of environment variables.

:class:`XlaGpuConfig` is built once from vLLM's ``VllmConfig`` (plus a few ``VLLM_XLA_GPU_*``
variables) by the worker and passed down to the runner, attention backend and ops. Nothing
else in the package looks at ``os.environ``.

Environment variables (all optional):

====================================  ==============================================================
``VLLM_XLA_GPU_DISABLE``              ``1`` turns the plugin off: vLLM uses its built-in platform.
``VLLM_XLA_GPU_ATTENTION``            ``auto`` (default), ``triton`` or ``reference``: attention op.
``VLLM_XLA_GPU_CACHE_DIR``            JAX persistent compilation cache (default
                                      ``~/.cache/vllm_xla_gpu/jax``); ``off`` disables it.
``VLLM_XLA_GPU_MIN_TOKENS``           smallest token bucket (default 16).
``VLLM_XLA_GPU_BUCKET_PADDING_GAP``   token buckets: powers of two up to this many tokens, then
                                      steps of it (default 0: powers of two throughout; the knob
                                      of vLLM's TPU backend, ``runner/buckets.py``).
``VLLM_XLA_GPU_PRECOMPILE``           ``0`` skips compiling every bucket at start-up (debug only:
                                      serving then compiles on first use of each shape).
``VLLM_XLA_GPU_COMPILE_THREADS``      programs compiled at once at start-up (default: up to 4).
``VLLM_XLA_GPU_TRITON_LAUNCH``        ``ffi`` (default): Triton kernels launch through jaxlib's
                                      typed-FFI handler, which XLA records into its CUDA graphs;
                                      ``legacy``: jax-triton's own custom call; ``xla``
                                      (experimental): XLA's own Triton custom call, which XLA
                                      compiles (``ops/triton_launch.py``).
``VLLM_XLA_GPU_STAGE_INPUTS``         ``1`` (default): a compiled step copies its transferred inputs
                                      into its own scratch memory before using them; ``0``: it reads
                                      them where they arrived (``runner/transfer.py``, ``stage``).
``VLLM_XLA_GPU_LAUNCH_THREAD``        ``1`` (default): the runner starts its compiled steps from one
                                      launch thread, so vLLM's Python overlaps XLA's launch, and the
                                      process takes a short GIL switch interval; ``0``: each call
                                      runs when the runner makes it (``runner/launch.py``).
``VLLM_XLA_GPU_SWITCH_INTERVAL_MS``   that GIL switch interval with a launch thread (default 0.1;
                                      Python's own is 5): shorter starts a launch sooner, longer
                                      lets vLLM's scheduler run with fewer interruptions (0.02
                                      and 1 measured no faster on an H200, 2026-11-28).
``VLLM_XLA_GPU_MODEL_STEP_COPIES``    loaded copies of each token bucket's model step on a GPU,
                                      launched in turn, so a launch does not update the CUDA graph
                                      still running (``runner/precompile.py``, ``loaded_copies``);
                                      default 1 (2 measured no faster in serving, 2026-11-28).
``VLLM_XLA_GPU_STEPS_IN_FLIGHT``      steps vLLM's engine keeps in flight under async scheduling
                                      (default 3: the host work for a step overlaps two device
                                      steps; 2 is vLLM's own; ``steps_in_flight.py``).
``VLLM_XLA_GPU_CACHE``                root of converted checkpoints (default
                                      ``~/.cache/vllm_xla_gpu``).
``VLLM_XLA_GPU_CPU_KV_BYTES``         KV-cache bytes on XLA:CPU when ``--kv-cache-memory-bytes`` is
                                      not given (default 1 GiB).
====================================  ==============================================================
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm.config import VllmConfig

_ENV_PREFIX = "VLLM_XLA_GPU_"
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


def _env(name: str, default: str) -> str:
    return os.environ.get(_ENV_PREFIX + name, default)


def plugin_enabled() -> bool:
    """Whether the platform plugin is active (``VLLM_XLA_GPU_DISABLE`` is not ``1``)."""
    return _env("DISABLE", "0") not in ("1", "true", "True")


def checkpoint_cache_root() -> str:
    """Root of converted checkpoints: ``$VLLM_XLA_GPU_CACHE`` or ``~/.cache/vllm_xla_gpu``."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "vllm_xla_gpu")
    return os.path.expanduser(os.environ.get("VLLM_XLA_GPU_CACHE") or default)


def triton_launch_mode() -> str:
    """How Triton kernels are launched: ``VLLM_XLA_GPU_TRITON_LAUNCH``, ``ffi``, ``legacy`` or
    ``xla`` (``ops/triton_launch.py``)."""
    return _env("TRITON_LAUNCH", "ffi")


def configured_steps_in_flight() -> int:
    """Steps vLLM's engine keeps in flight under async scheduling:
    ``VLLM_XLA_GPU_STEPS_IN_FLIGHT``, default 3 (``steps_in_flight.py``)."""
    return max(2, int(_env("STEPS_IN_FLIGHT", "3")))


def steps_in_flight_requested() -> bool:
    """Whether ``VLLM_XLA_GPU_STEPS_IN_FLIGHT`` is set (a depth the user asked for, which the
    platform must not lower silently)."""
    return bool(_env("STEPS_IN_FLIGHT", ""))


def default_compilation_cache_dir() -> str | None:
    """Directory of JAX's persistent compilation cache, or ``None`` when turned off."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "vllm_xla_gpu", "jax")
    path = _env("CACHE_DIR", default)
    return None if path.lower() in ("", "off", "0", "none") else path


@dataclasses.dataclass(frozen=True)
class XlaGpuConfig:
    """Backend settings, derived once from ``VllmConfig`` and the environment.

    Attributes:
        attention_impl: name of the ragged paged attention implementation
            (``"auto"`` picks the best registered one for the device).
        compilation_cache_dir: JAX persistent compilation cache directory, or None.
        min_token_bucket: smallest padded token count of a step.
        bucket_padding_gap: token buckets step by this above it (0: powers of two throughout).
        precompile: compile every bucket at start-up.
        compile_threads: start-up compilations in flight at once; 0 = the runner's default
            for the device.
        cpu_kv_cache_bytes: KV-cache budget on XLA:CPU when vLLM gives none.
        max_num_batched_tokens: vLLM's per-step token budget (largest token bucket).
        max_num_seqs: vLLM's per-step request limit (largest request bucket).
        max_model_len: longest sequence; sets the block-table width.
        stage_inputs: compiled steps read their transferred inputs through a copy
            (``runner.transfer.stage``).
        launch_thread: the runner starts its compiled steps from a launch thread
            (``runner/launch.py``).
        switch_interval_s: the process's GIL switch interval while it has a launch thread.
        model_step_copies: loaded copies of each token bucket's model step, launched in
            turn on a GPU (``runner.precompile.loaded_copies``).
    """

    attention_impl: str
    compilation_cache_dir: str | None
    min_token_bucket: int
    bucket_padding_gap: int
    precompile: bool
    compile_threads: int
    cpu_kv_cache_bytes: int
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    stage_inputs: bool
    launch_thread: bool
    switch_interval_s: float
    model_step_copies: int

    @classmethod
    def from_vllm_config(cls, vllm_config: VllmConfig) -> XlaGpuConfig:
        """Build the config from vLLM's config and the ``VLLM_XLA_GPU_*`` variables."""
        sched = vllm_config.scheduler_config
        kv_bytes = vllm_config.cache_config.kv_cache_memory_bytes
        return cls(
            attention_impl=_env("ATTENTION", "auto"),
            compilation_cache_dir=default_compilation_cache_dir(),
            min_token_bucket=int(_env("MIN_TOKENS", "16")),
            bucket_padding_gap=int(_env("BUCKET_PADDING_GAP", "0")),
            precompile=_env("PRECOMPILE", "1") != "0",
            compile_threads=int(_env("COMPILE_THREADS", "0")),
            cpu_kv_cache_bytes=kv_bytes
            or int(_env("CPU_KV_BYTES", str(DEFAULT_CPU_KV_CACHE_BYTES))),
            max_num_batched_tokens=sched.max_num_batched_tokens,
            max_num_seqs=sched.max_num_seqs,
            max_model_len=vllm_config.model_config.max_model_len,
            stage_inputs=_env("STAGE_INPUTS", "1") != "0",
            launch_thread=_env("LAUNCH_THREAD", "1") != "0",
            switch_interval_s=float(_env("SWITCH_INTERVAL_MS", "0.1")) / 1e3,
            model_step_copies=max(1, int(_env("MODEL_STEP_COPIES", "1"))),
        )
