"""Registry of ``ragged_paged_attention`` implementations, keyed by name and device platform.

Every implementation has the reference's exact signature (see ``reference.py``). The runner asks
for one by the config's ``attention_impl`` name: ``"auto"`` takes the first implementation
registered for the device's PJRT platform (``"gpu"``, ``"cpu"``, ...) and falls back to the
portable reference. A port to another chip adds one module and one :func:`register` line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# name -> (module path, platforms it runs on; empty = every platform)
_IMPLEMENTATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "reference": ("vllm_xla_gpu.ops.ragged_paged_attention.reference", ()),
    "triton": ("vllm_xla_gpu.ops.ragged_paged_attention.triton_gpu", ("gpu",)),
}
# platform -> preferred implementation names for "auto", best first
_AUTO_ORDER: dict[str, list[str]] = {"gpu": ["triton"]}


def register(name: str, module: str, platforms: tuple[str, ...], *, auto: bool = True) -> None:
    """Add an implementation.

    Args:
        name: config name of the implementation (``VLLM_XLA_GPU_ATTENTION``).
        module: module exposing ``ragged_paged_attention`` with the reference's signature.
        platforms: PJRT platforms it runs on (``jax.Device.platform``), empty for all.
        auto: prefer it for those platforms when the config says ``"auto"``.
    """
    _IMPLEMENTATIONS[name] = (module, platforms)
    if auto:
        for platform in platforms:
            _AUTO_ORDER.setdefault(platform, []).append(name)


def available(platform: str) -> list[str]:
    """Names of the implementations that run on ``platform``."""
    return [n for n, (_, p) in _IMPLEMENTATIONS.items() if not p or platform in p]


def resolve(name: str, platform: str) -> str:
    """The concrete implementation name that ``name`` (or ``"auto"``) means on ``platform``.

    Raises:
        ValueError: unknown name, or an implementation that does not run on ``platform``.
    """
    if name == "auto":
        name = next(iter(_AUTO_ORDER.get(platform, [])), "reference")
    if name not in available(platform):
        raise ValueError(
            f"attention implementation {name!r} is not available on {platform!r}; "
            f"choose one of {available(platform)}"
        )
    return name


def get_ragged_paged_attention(name: str, platform: str) -> Callable:
    """The ``ragged_paged_attention`` function called ``name`` (or ``"auto"``) for ``platform``.

    Raises:
        ValueError: unknown name, or an implementation that does not run on ``platform``.
    """
    module = importlib.import_module(_IMPLEMENTATIONS[resolve(name, platform)][0])
    return module.ragged_paged_attention
