"""Workarounds for upstream quirks, each in one function with a note on when to remove it."""

from __future__ import annotations

import functools

import torch


def patch_torch_accelerator() -> None:
    """Make ``torch.accelerator`` memory/sync calls safe on a host-only torch.

    vLLM's model loader calls ``torch.accelerator.empty_cache()``, ``synchronize()`` and
    ``get_memory_info()``. With torch on the CPU (JAX owns the GPU) these raise, and raise
    differently once torchax has registered its ``jax`` device. Here they become no-ops (and
    ``(0, 0)`` for the memory query) when they fail; working calls are untouched.

    Remove when vLLM stops calling them for platforms whose ``uses_host_device_handling()`` is
    true. Idempotent.
    """
    acc = getattr(torch, "accelerator", None)
    if acc is None or getattr(acc, "_vllm_xla_gpu_patched", False):
        return
    for name, fallback in (
        ("empty_cache", None),
        ("synchronize", None),
        ("get_memory_info", (0, 0)),
    ):
        original = getattr(acc, name, None)
        if original is not None:
            setattr(acc, name, _tolerant(original, fallback))
    acc._vllm_xla_gpu_patched = True


def _tolerant(fn, fallback):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, ValueError, AssertionError):
            return fallback

    return call
