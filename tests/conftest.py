"""Test-session defaults: XLA:CPU, vLLM's engine in-process, and shared tiny checkpoints."""

from __future__ import annotations

import os

# Before JAX or vLLM import: run on XLA:CPU and keep vLLM's engine core in this process, so
# tests can reach the runner through collective_rpc and one process owns the device.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# Without a GPU, Triton kernels can only run in Triton's interpreter, and only if it is on
# before Triton is first imported (its standard library is built at import).
if os.environ["JAX_PLATFORMS"] == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

# Float32 is the reference dtype of the token-exact tests. On NVIDIA GPUs XLA would run float32
# dots as TF32 by default (10-bit mantissa), which can flip a greedy choice; ask for full float32.
# XLA:CPU computes float32 dots in float32 either way.
jax.config.update("jax_default_matmul_precision", "highest")
from tiny_models import write_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(arch)`` -> directory of a random-weight model (written once)."""
    made = {}

    def make(arch: str):
        if arch not in made:
            made[arch] = write_tiny_checkpoint(arch, tmp_path_factory.mktemp(arch))
        return made[arch]

    return make
