"""``load_format="dummy"`` with the random weights drawn on the device.

vLLM's ``DummyModelLoader`` fills every parameter and persistent buffer of the model it built
with uniform values in ``[-1e-3, 1e-3]`` (``initialize_single_dummy_weight``). On this backend
the model is built on the host, so that loader fills 16 GB of Llama-3.1-8B tensors on the CPU
(about 60 s on the H100 machine, 2026-11-27), and :func:`extract_params` then copies them to the
device. Benchmarks start engines with dummy weights many times (weights do not change speed).

Here vLLM's loader runs as it is (``create_model`` under the model's dtype, the fill, then
``process_weights_after_loading``), except that tensors of :data:`DEVICE_FILL_MIN_NUMEL` elements
or more are left unfilled (``torch.empty``: no host memory touched) and drawn on the device
afterwards, in the same range and dtype (other values: dummy outputs mean nothing either way).
Smaller tensors (norms, biases, scales) are filled by vLLM's own function on the host, so they
equal vLLM's, and processing may still overwrite them (attention resets its KV scales to 1).
Quantized models keep vLLM's loader, which may process a layer while it fills it.
"""

from __future__ import annotations

import functools

import jax
import torch
from torch import nn
from torchax.ops.mappings import t2j_dtype
from vllm.config import LoadConfig, ModelConfig, VllmConfig
from vllm.model_executor.model_loader.dummy_loader import DummyModelLoader
from vllm.model_executor.model_loader.reload.utils import get_layer_tensors
from vllm.model_executor.model_loader.weight_utils import initialize_single_dummy_weight

from vllm_xla_gpu.model.torchax_model import Params, extract_params

# vLLM's initialize_single_dummy_weight range.
_LOW, _HIGH = -1e-3, 1e-3
# Tensors this large are drawn on the device: every weight matrix and embedding of a real
# model, while vectors (norms, biases) and scalars stay with vLLM's host fill.
DEVICE_FILL_MIN_NUMEL = 1 << 16


def uses_device_dummy_weights(vllm_config: VllmConfig) -> bool:
    """Whether the model's dummy weights are drawn here (dummy load format, not quantized)."""
    return (
        vllm_config.load_config.load_format == "dummy"
        and vllm_config.model_config.quantization is None
    )


class _DeviceDummyLoader(DummyModelLoader):
    """vLLM's dummy loader, leaving large floating-point tensors unfilled in ``deferred``."""

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self.deferred: list[torch.Tensor] = []

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        for layer in model.modules():
            for name, tensor in get_layer_tensors(layer).items():
                if name in layer._non_persistent_buffers_set:
                    continue  # as vLLM's loader: computed at construction, kept
                if torch.is_floating_point(tensor) and tensor.numel() >= DEVICE_FILL_MIN_NUMEL:
                    self.deferred.append(tensor)
                else:
                    initialize_single_dummy_weight(tensor)


def load_dummy_model(vllm_config: VllmConfig) -> tuple[nn.Module, list[torch.Tensor]]:
    """vLLM's dummy-weight model built on the host, and its tensors left for the device."""
    loader = _DeviceDummyLoader(vllm_config.load_config)
    model = loader.load_model(vllm_config=vllm_config, model_config=vllm_config.model_config)
    return model, loader.deferred


def dummy_params(
    model: nn.Module, deferred: list[torch.Tensor], device: jax.Device, seed: int = 0
) -> Params:
    """:func:`extract_params` of ``model``, with the ``deferred`` tensors drawn uniformly on
    ``device`` instead of copied from the host."""
    key = jax.random.key(seed)
    draws = {
        id(t): _uniform_fn(tuple(t.shape), t2j_dtype(t.dtype), device)(jax.random.fold_in(key, i))
        for i, t in enumerate(deferred)
    }
    return extract_params(model, device, replace=draws)


@functools.cache
def _uniform_fn(shape: tuple[int, ...], dtype, device: jax.Device):
    """One small program per (shape, dtype), its output placed on ``device``."""
    sharding = jax.sharding.SingleDeviceSharding(device)
    return jax.jit(
        lambda key: jax.random.uniform(key, shape, dtype, _LOW, _HIGH), out_shardings=sharding
    )
