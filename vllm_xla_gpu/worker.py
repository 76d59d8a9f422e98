"""``XlaGpuWorker``: the one worker of a single-process SPMD engine.

vLLM's engine core drives the worker through these RPCs, in order:
``init_device`` -> ``load_model`` -> ``get_kv_cache_spec`` -> ``determine_available_memory`` ->
``initialize_from_config`` -> ``compile_or_warm_up_model``, then per step ``execute_model`` and
``sample_tokens``. The worker owns the JAX device and the process-level set-up (persistent
compilation cache, vLLM's world-size-1 distributed state); everything per step lives in
:class:`~vllm_xla_gpu.runner.model_runner.XlaGpuModelRunner`.
"""

from __future__ import annotations

import os
import tempfile

import jax
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.distributed.parallel_state import (
    ensure_model_parallel_initialized,
    init_distributed_environment,
)
from vllm.logger import init_logger
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput
from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheSpec
from vllm.v1.outputs import AsyncModelRunnerOutput, ModelRunnerOutput
from vllm.v1.worker.worker_base import CompilationTimes, WorkerBase

from vllm_xla_gpu import steps_in_flight
from vllm_xla_gpu.compat import patch_torch_accelerator
from vllm_xla_gpu.config import XlaGpuConfig
from vllm_xla_gpu.runner.model_runner import XlaGpuModelRunner

logger = init_logger("vllm." + __name__)  # under "vllm": vLLM configures that logger


class XlaGpuWorker(WorkerBase):
    """Worker whose model runs as XLA programs on JAX's default device (GPU, else CPU)."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        local_rank: int,
        rank: int,
        distributed_init_method: str,
        is_driver_worker: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(vllm_config, local_rank, rank, distributed_init_method, is_driver_worker)
        self.config = XlaGpuConfig.from_vllm_config(vllm_config)
        self.model_runner: XlaGpuModelRunner | None = None
        # The engine core reads the depth after it built its executor (and so this worker),
        # in its own process: the front end's change to vLLM's config class is not there.
        # The platform has chosen the scheduler already; the same choice gives the same depth.
        steps_in_flight.install(steps_in_flight.choose_depth(vllm_config.scheduler_config))

    def init_device(self) -> None:
        """Start JAX on its default device and set up vLLM's (trivial) distributed state."""
        # Reserve vLLM's share of the device (not JAX's default 75%) as one region up front.
        # memory_stats() still counts only live buffers (the KV-cache budget), and one region
        # keeps the big per-layer caches from failing on fragmentation: grown on demand, the
        # allocator's regions left no contiguous room for the last layer's cache near the limit.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
        os.environ.setdefault(
            "XLA_PYTHON_CLIENT_MEM_FRACTION", str(self.cache_config.gpu_memory_utilization)
        )
        _add_default_xla_flags()
        patch_torch_accelerator()
        _enable_compilation_cache(self.config.compilation_cache_dir)
        self.device = torch.device("cpu")  # where vLLM's torch tensors live
        self.jax_device = jax.devices()[0]
        logger.info("XLA backend on %s (%s)", self.jax_device, self.jax_device.platform)
        _init_single_process_distributed(self.vllm_config)
        set_random_seed(self.model_config.seed)
        self.model_runner = XlaGpuModelRunner(self.vllm_config, self.config, self.jax_device)

    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        self.model_runner.load_model()

    def get_model(self) -> torch.nn.Module:
        return self.model_runner.model

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def get_kv_cache_spec(self) -> dict[str, KVCacheSpec]:
        return self.model_runner.get_kv_cache_spec()

    def determine_available_memory(self) -> int:
        """Bytes for the KV cache.

        ``--kv-cache-memory-bytes`` when given. On a device that reports memory: see
        :func:`kv_cache_budget`, with the scratch of the largest step from XLA's memory analysis.
        On XLA:CPU, which reports none, the stated default (``VLLM_XLA_GPU_CPU_KV_BYTES``).
        """
        explicit = self.cache_config.kv_cache_memory_bytes
        if explicit:
            return int(explicit)
        stats = self.jax_device.memory_stats()
        if not stats or "bytes_limit" not in stats:
            return self.config.cpu_kv_cache_bytes
        scratch = self.model_runner.step_scratch_bytes()
        budget = kv_cache_budget(stats, scratch)
        logger.info(
            "KV-cache budget %.2f GiB = free %.2f (largest free block %.2f) - step scratch %.2f "
            "- %.2f GiB",
            budget / 2**30,
            (stats["bytes_limit"] - stats["bytes_in_use"]) / 2**30,
            stats.get("largest_free_block_bytes", 0) / 2**30,
            scratch / 2**30,
            KV_HEADROOM_BYTES / 2**30,
        )
        return budget

    def initialize_from_config(self, kv_cache_config: KVCacheConfig) -> None:
        self.model_runner.initialize_kv_cache(kv_cache_config)

    def compile_or_warm_up_model(self) -> CompilationTimes:
        """Compile every shape bucket (progress bar); serving then compiles nothing."""
        seconds = self.model_runner.precompile()
        return CompilationTimes(language_model=seconds, encoder=0.0)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        return self.model_runner.execute_model(scheduler_output)

    def sample_tokens(
        self, grammar_output: GrammarOutput | None
    ) -> ModelRunnerOutput | AsyncModelRunnerOutput:
        return self.model_runner.sample_tokens(grammar_output)

    def take_draft_token_ids(self) -> None:
        return None

    def update_max_model_len(self, max_model_len: int) -> None:
        self.model_config.max_model_len = max_model_len

    def synchronize_device(self) -> None:
        jax.effects_barrier()

    def reset_mm_cache(self) -> None:
        """No multimodal cache on this backend."""

    def reset_encoder_cache(self) -> None:
        """No encoder cache on this backend."""

    def check_health(self) -> None:
        """The device is healthy as long as steps complete; nothing extra to probe."""

    def get_cache_block_size_bytes(self) -> int:
        return self.model_runner.kv_cache_block_bytes

    def sleep(self, level: int = 1) -> None:
        raise NotImplementedError("Sleep mode is not supported by the XLA backend.")

    def wake_up(self, tags: list[str] | None = None) -> None:
        raise NotImplementedError("Sleep mode is not supported by the XLA backend.")

    def add_lora(self, lora_request) -> bool:
        raise NotImplementedError("LoRA is not supported by the XLA backend yet.")

    def remove_lora(self, lora_id: int) -> bool:
        raise NotImplementedError("LoRA is not supported by the XLA backend yet.")

    def pin_lora(self, lora_id: int) -> bool:
        raise NotImplementedError("LoRA is not supported by the XLA backend yet.")

    def list_loras(self) -> set[int]:
        return set()

    def shutdown(self) -> None:
        if self.model_runner is not None:
            self.model_runner.launcher.shutdown()
        self.model_runner = None


# XLA runs a GPU program as CUDA graphs ("command buffers"), but by default it leaves every
# conditional (``lax.cond``) outside them. Such a conditional reads its predicate on the host:
# the host waits for the device to finish everything queued before it. The sampler's conds (greedy
# only? top-k/top-p? penalties? logprobs?) made each sample step wait for the model step, so the
# host never prepared step N+1 while the device ran step N: measured on an H100 (Llama-3.2-1B,
# 2026-11-27), recording conditionals as graph nodes (the predicate is read on the device) took
# 256 x 128/128 from 16.6k to 24.2k tokens/s and 256 x 2048/512 from 9.4k to 11.4k.
# XLA's parser applies only the first "+TYPE" of a list, so this adds one type.
# A conditional joins a graph only if every operation in its branches can be recorded, and XLA's
# CUB radix sort (``xla.gpu.ext.cub_sort_pairs``, chosen for large sorts) cannot: at 256 rows
# the sampler's random-sampling branch and its logprobs branch sorted with it
# (benchmarks/sampler_control_flow.py), and the profile still showed 8 ms of host wait per step
# in the all-greedy conditional (H100, 2026-11-27). XLA's own sort kernels can be recorded. The
# sampler and logprobs sort small candidate sets (sample/sampler.py, sample/logprobs.py); only
# the rare full-sort fallback of top-k/top-p sorts whole rows, where CUB was faster.
_DEFAULT_XLA_FLAGS = {
    "xla_gpu_enable_command_buffer": "+CONDITIONAL",
    "xla_gpu_enable_cub_radix_sort": "false",
}


def _add_default_xla_flags() -> None:
    """Append :data:`_DEFAULT_XLA_FLAGS` to ``XLA_FLAGS`` (before JAX starts its backend),
    except flags the user set there."""
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f"--{k}={v}" for k, v in _DEFAULT_XLA_FLAGS.items() if f"--{k}=" not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


# Headroom for the small per-step transfers.
KV_HEADROOM_BYTES = 256 << 20


def kv_cache_budget(stats: dict, scratch: int) -> int:
    """Bytes the KV cache may take, from a device's ``memory_stats()`` and the step scratch.

    JAX's pool (``bytes_limit``: ``gpu_memory_utilization`` of the device, preallocated, see
    ``init_device``) minus what is in use (weights) minus the steps' ``scratch`` minus
    :data:`KV_HEADROOM_BYTES`; but counted from the largest free block (or the pool's ungrown
    rest) when the pool reports one. Start-up leaves freed temporaries as holes between live
    buffers; the cache's per-layer arrays do not fit in them and go into the largest block, so
    what is left of that block must still hold the largest step's scratch in one piece (counting
    the holes as free once ran the sampler's warm-up out of memory with 512-token buckets on an
    H200).
    """
    limit = stats["bytes_limit"]
    free = limit - stats["bytes_in_use"]
    largest = stats.get("largest_free_block_bytes")
    if largest:
        # A pool that grows (XLA_PYTHON_CLIENT_PREALLOCATE=false) still has its ungrown rest.
        free = min(free, max(largest, limit - stats.get("pool_bytes", 0)))
    return int(free - scratch - KV_HEADROOM_BYTES)


def _enable_compilation_cache(cache_dir: str | None) -> None:
    """Turn on JAX's persistent compilation cache, so a restart reuses compiled programs."""
    if cache_dir is None:
        return
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    # Cache every program: the small ones add up across dozens of buckets.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _init_single_process_distributed(vllm_config: VllmConfig) -> None:
    """vLLM's model code asks for TP/PP groups: give it a world of one (gloo, file store).

    Parallelism on this backend is a JAX mesh inside this one process, not torch.distributed.
    """
    fd, store = tempfile.mkstemp(prefix="vllm_xla_gpu_dist_")
    os.close(fd)
    with set_current_vllm_config(vllm_config):
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"file://{store}",
            backend="gloo",
        )
        ensure_model_parallel_initialized(1, 1)
