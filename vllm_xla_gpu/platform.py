"""``XlaGpuPlatform``: how vLLM sees this backend.

vLLM asks the current platform which worker, attention backend and block size to use, and lets
it adjust the whole ``VllmConfig`` once (:meth:`XlaGpuPlatform.check_and_update_config`). Here
we pin what a compiled, single-process SPMD backend needs: our worker, the ``uni`` executor, no
torch.compile or CUDA graphs (XLA compiles instead), weights loaded on the host, synchronous
scheduling. Features not implemented yet fail here, at start-up, with a message naming them;
request options not implemented yet are refused per request in :meth:`validate_request`.

torch is vLLM's host language only: ``device_type`` is ``"cpu"`` so every torch tensor vLLM
builds stays on the host, while JAX owns the accelerator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.platforms.interface import Platform, PlatformEnum

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.pooling_params import PoolingParams
    from vllm.sampling_params import SamplingParams
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

ATTENTION_BACKEND = "vllm_xla_gpu.attention.backend.XlaGpuPagedAttentionBackend"
WORKER = "vllm_xla_gpu.worker.XlaGpuWorker"


class XlaGpuPlatform(Platform):
    """vLLM platform whose forward passes are compiled by OpenXLA and run through PJRT."""

    _enum = PlatformEnum.OOT
    # vLLM builds torch devices from these names: they must be a real torch device type.
    device_name: str = "cpu"
    device_type: str = "cpu"
    dispatch_key: str = "CPU"
    dist_backend: str = "gloo"
    simple_compile_backend: str = "eager"
    supported_quantization: list[str] = []

    def uses_host_device_handling(self) -> bool:
        """Tensors vLLM makes stay on the host; JAX moves what the device needs."""
        return True

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return "xla_gpu"

    @classmethod
    def import_kernels(cls) -> None:
        """No torch kernels to load: all device code is compiled by XLA."""

    @classmethod
    def get_attn_backend_cls(
        cls,
        selected_backend: AttentionBackendEnum,
        attn_selector_config: AttentionSelectorConfig,
        num_heads: int | None = None,
    ) -> str:
        if attn_selector_config.use_mla:
            raise NotImplementedError("MLA attention is not supported by the XLA backend yet.")
        return ATTENTION_BACKEND

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        """Host torch is seeded by vLLM; device sampling draws from per-request JAX keys."""
        torch.manual_seed(seed)

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        """JAX picks the device; torch stays on the host."""

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return False

    @classmethod
    def inference_mode(cls):
        return torch.no_grad()

    @property
    def supported_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        """Reject what is not supported yet, then pin the settings the XLA path needs."""
        _reject_unsupported(vllm_config)
        from vllm.config import CompilationMode, CUDAGraphMode

        from vllm_xla_gpu import steps_in_flight

        depth = steps_in_flight.choose_depth(vllm_config.scheduler_config, announce=True)
        steps_in_flight.install(depth)

        parallel = vllm_config.parallel_config
        parallel.worker_cls = WORKER
        parallel.distributed_executor_backend = "uni"
        parallel.disable_custom_all_reduce = True

        compilation = vllm_config.compilation_config
        # XLA compiles the whole step; torch.compile cannot run under torchax.
        compilation.mode = CompilationMode.NONE
        compilation.cudagraph_mode = CUDAGraphMode.NONE
        compilation.cudagraph_capture_sizes = []
        # vLLM's IR ops must be plain torch (not a custom-op wrapper) for torchax to lower them.
        compilation.ir_enable_torch_wrap = False

        # scheduler_config.async_scheduling is left as vLLM resolved it (on unless
        # --no-async-scheduling or an incompatible feature): the runner returns an
        # AsyncModelRunnerOutput then (runner/async_output.py).
        # Weights are built on the host, then moved to the device as JAX arrays.
        vllm_config.load_config.device = "cpu"
        if vllm_config.model_config is not None:
            vllm_config.model_config.enforce_eager = True

    @classmethod
    def validate_request(
        cls, processed_inputs: object, params: SamplingParams | PoolingParams
    ) -> None:
        """Refuse request options the runner does not implement yet.

        Raises vLLM's ``VLLMValidationError``, which the OpenAI server answers with a 400 and
        ``LLM.generate`` raises before the request reaches the engine, so serving goes on.
        """
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import SamplingParams

        if not isinstance(params, SamplingParams):
            raise VLLMValidationError("Pooling requests are not supported by the XLA backend yet.")
        unsupported = _unsupported_sampling_options(params)
        if unsupported:
            raise VLLMValidationError(
                "The XLA backend does not support these sampling options yet: "
                + ", ".join(unsupported),
                parameter=unsupported[0],
            )


def _unsupported_sampling_options(params: SamplingParams) -> list[str]:
    from vllm_xla_gpu.sample.metadata import MAX_LOGIT_BIAS, MAX_LOGPROBS

    def too_many_logprobs(n: int | None) -> bool:
        # -1 asks for the whole vocabulary; the sampler computes the top MAX_LOGPROBS.
        return n is not None and (n < 0 or n > MAX_LOGPROBS)

    checks = {
        f"logprobs above {MAX_LOGPROBS}": too_many_logprobs(params.logprobs),
        f"prompt_logprobs above {MAX_LOGPROBS}": too_many_logprobs(params.prompt_logprobs),
        f"logit_bias with more than {MAX_LOGIT_BIAS} entries": len(params.logit_bias or ())
        > MAX_LOGIT_BIAS,
        "logprob_token_ids": getattr(params, "logprob_token_ids", None) is not None,
        "prompt_logprob_token_ids": getattr(params, "prompt_logprob_token_ids", None) is not None,
        "logits_processors": bool(getattr(params, "logits_processors", None)),
    }
    return [name for name, used in checks.items() if used]


def _reject_unsupported(vllm_config: VllmConfig) -> None:
    """Fail at start-up, naming each feature this backend cannot run yet."""
    parallel = vllm_config.parallel_config
    model = vllm_config.model_config
    problems = {
        "LoRA adapters (--enable-lora)": vllm_config.lora_config is not None,
        "speculative decoding": vllm_config.speculative_config is not None,
        "pipeline parallelism": parallel.pipeline_parallel_size > 1,
        "tensor parallelism": parallel.tensor_parallel_size > 1,
        "data parallelism": parallel.data_parallel_size > 1,
        "KV-cache transfer connectors": vllm_config.kv_transfer_config is not None,
        "multimodal models": model is not None and model.is_multimodal_model,
        "pooling models": model is not None and model.runner_type == "pooling",
        "quantized checkpoints": model is not None and model.quantization is not None,
        "a quantized KV cache (--kv-cache-dtype)": vllm_config.cache_config.cache_dtype
        not in ("auto", "bfloat16", "float16", "float32"),
        # The sampler returns vLLM's default, log-softmax of the raw logits, only.
        "--logprobs-mode other than raw_logprobs": model is not None
        and model.logprobs_mode != "raw_logprobs",
    }
    names = [name for name, present in problems.items() if present]
    if names:
        raise NotImplementedError(
            "The XLA backend (vllm-xla-gpu) does not support " + ", ".join(names) + " yet. "
            "Set VLLM_XLA_GPU_DISABLE=1 to use another vLLM platform."
        )
