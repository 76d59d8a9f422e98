"""Triton launches that XLA can record into its CUDA graphs (command buffers).

XLA runs a compiled program as a few CUDA graphs ("command buffers") when every operation in a
stretch can be recorded. It records a custom call only if the call is a typed-FFI handler whose
traits say it is command-buffer compatible (``IsConvertible`` in XLA's
``command_buffer_conversion_pass.cc``); any other custom call ends the graph. jax-triton 0.3.1,
the newest release, lowers ``triton_call`` to the legacy custom call ``triton_kernel_call``, so a
16-layer model step ran as 18 graphs with 32 Triton launches between them: at batch 1 the host
time of those launches was most of the gap between the GPU's busy time and the step time
(docs/performance.md).

jaxlib (0.10.1 and later) has the same launcher as the typed-FFI handler
``triton_kernel_call_ffi``, declared command-buffer compatible, which reads the same serialized
kernel call (kernel image, grid, parameters, outputs to zero) from its ``opaque`` attribute;
Pallas' Triton backend emits it, and so does jax-triton's unreleased main branch. This module
keeps jax-triton's lowering (it compiles the kernel and serializes the call) and retargets the
custom call it emits to that handler. ``VLLM_XLA_GPU_TRITON_LAUNCH=legacy`` keeps the legacy
call, for comparison.

The rule is registered for jax-triton's primitive on CUDA, so it applies to every
``triton_call`` in the process once :func:`install_launch_lowering` has run.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from jax.interpreters import mlir

LEGACY_TARGET = "triton_kernel_call"
FFI_TARGET = "triton_kernel_call_ffi"
FIRST_JAXLIB_WITH_FFI = (0, 10, 1)


def retarget_to_ffi(op: mlir.ir.Operation) -> None:
    """Turn one legacy ``triton_kernel_call`` op into a call of the FFI handler, in place.

    The legacy call carries the zlib-compressed kernel call as its raw ``backend_config``
    string; the FFI handler reads the same bytes from the ``opaque`` attribute of a typed-FFI
    call. The op is written the way ``jax.ffi.ffi_lowering`` writes one (``mlir.custom_call``):
    the attributes go in ``mhlo.backend_config`` and the StableHLO ``backend_config`` and
    ``api_version`` stay at their defaults, which XLA reads as a typed-FFI call. Operands,
    results and aliasing are unchanged.
    """
    attrs = op.attributes
    if mlir.ir.StringAttr(attrs["call_target_name"]).value != LEGACY_TARGET:
        return
    opaque = attrs["backend_config"]
    attrs["call_target_name"] = mlir.ir.StringAttr.get(FFI_TARGET)
    attrs["backend_config"] = mlir.ir.StringAttr.get("")
    attrs["api_version"] = mlir.ir.IntegerAttr.get(mlir.ir.IntegerType.get_signless(32), 1)
    attrs["mhlo.backend_config"] = mlir.ir.DictAttr.get({"opaque": opaque})


def _ffi_lowering(legacy_rule, ctx, *args, **params) -> Sequence[mlir.ir.Value]:
    results = legacy_rule(ctx, *args, **params)
    op = results[0].owner
    retarget_to_ffi(getattr(op, "operation", op))
    return results


@functools.cache
def install_launch_lowering(mode: str = "ffi") -> str:
    """Register the lowering of jax-triton's launches for ``mode``; returns the mode in force.

    ``"ffi"`` (the default) emits ``triton_kernel_call_ffi`` when jaxlib has it, else falls back
    to ``"legacy"``, jax-triton's own rule. Called by the attention wrapper before it traces a
    launch (lowering rules are looked up when a program is lowered, after tracing); repeated
    calls with the same mode are free.
    """
    if mode not in ("ffi", "legacy"):
        raise ValueError(f"Triton launch mode must be 'ffi' or 'legacy', not {mode!r}")
    from jax._src.lib import version as jaxlib_version
    from jax_triton import triton_lib  # GPU-only dependency (the ``cuda`` extra)

    legacy = functools.partial(triton_lib.triton_kernel_call_lowering, triton_lib.get_cuda_backend)
    if mode == "ffi" and tuple(jaxlib_version) < FIRST_JAXLIB_WITH_FFI:
        mode = "legacy"
    rule = legacy if mode == "legacy" else functools.partial(_ffi_lowering, legacy)
    mlir.register_lowering(triton_lib.triton_kernel_call_p, rule, platform="cuda")
    return mode
