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

XLA records an FFI call into its graph by stream capture, as a child-graph node
(``CustomCallCmd::RecordXlaFfiCall`` in XLA's ``command_buffer_cmd.cc``). ``xla`` (experimental,
off by default) hands XLA the kernel's Triton IR instead, in XLA's own Triton custom call
``__gpu$xla.gpu.triton`` (what Pallas' Triton backend emitted up to jaxlib 0.10.2): XLA compiles
the kernel with its own Triton and launches it as an ordinary kernel, a plain node in the graph.
Measured on an H200 (docs/performance.md, eighth session), the plain node saves about 1.9 us of
host time per launch, but XLA's Triton builds the attention kernel 9% (decode) to 20% (prefill)
slower than the ``triton`` package does, and compiles it more slowly; so ``ffi`` stays the default.

The rule is registered for jax-triton's primitive on CUDA, so it applies to every
``triton_call`` in the process once :func:`install_launch_lowering` has run.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Sequence

import jax
import numpy as np
from jax.interpreters import mlir

LEGACY_TARGET = "triton_kernel_call"
FFI_TARGET = "triton_kernel_call_ffi"
XLA_TARGET = "__gpu$xla.gpu.triton"
MODES = ("ffi", "legacy", "xla")
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


def compile_for_cuda(
    fn,
    pointer_types: Sequence[str],
    constants: dict,
    num_warps: int,
    num_stages: int,
    compute_capability: int,
):
    """The ``@triton.jit`` function ``fn`` compiled by the ``triton`` package for NVIDIA's
    ``compute_capability`` (no GPU needed): its non-constant arguments the pointers
    ``pointer_types`` in order (e.g. ``"*bf16"``, each assumed 16-byte aligned, as jax-triton
    assumes), ``constants`` its constexprs. Returns Triton's compiled kernel (``.asm`` holds
    each stage's code, ``.metadata`` its name and shared memory)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs, types = {}, {}, iter(pointer_types)
    for i, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            continue
        signature[name] = next(types)
        attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn, signature, constants, attrs)
    target = GPUTarget("cuda", compute_capability, 32)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if triton.knobs.cache.dir:
        return triton.compile(source, target=target, options=options)
    # triton.compile always files its output in a cache directory, and with TRITON_CACHE_DIR
    # set empty (as on some GPU images) it has none: compile into a temporary one instead.
    with triton.knobs.cache.scope(), tempfile.TemporaryDirectory() as cache_dir:
        triton.knobs.cache.dir = cache_dir
        return triton.compile(source, target=target, options=options)


def kernel_ttir(fn, pointer_types: Sequence[str], constants: dict, num_warps: int,
                num_stages: int, compute_capability: int) -> tuple[str, str]:  # fmt: skip
    """``(name, TTIR text)`` of ``fn`` compiled as :func:`compile_for_cuda` does."""
    compiled = compile_for_cuda(
        fn, pointer_types, constants, num_warps, num_stages, compute_capability
    )
    return compiled.metadata.name, compiled.asm["ttir"]


def xla_triton_lowering(
    ctx, *args, name: str, ttir: str, grid, num_warps: int, num_stages: int, aliases: dict
) -> Sequence[mlir.ir.Value]:
    """XLA's own Triton custom call of the kernel ``name`` in ``ttir`` on ``args``.

    The attributes are those Pallas' Triton backend wrote for this target (jaxlib 0.10.2's
    ``pallas_call_registration.py``), written through ``jax.ffi.ffi_lowering`` (API version 4,
    attributes in ``mhlo.backend_config``); operands then results are the kernel's pointer
    arguments, in order."""
    grid = (*grid, 1, 1)[:3]
    rule = jax.ffi.ffi_lowering(XLA_TARGET, operand_output_aliases=dict(aliases))
    return rule(
        ctx,
        *args,
        name=name,
        ir=ttir,
        num_stages=np.int32(num_stages),
        num_warps=np.int32(num_warps),
        grid_x=np.int32(grid[0]),
        grid_y=np.int32(grid[1]),
        grid_z=np.int32(grid[2]),
        debug=False,
    )


def gpu_compute_capability() -> int:
    """The first GPU's compute capability as an integer (90 for Hopper); 90 without a GPU."""
    try:
        return int(jax.devices("gpu")[0].compute_capability.replace(".", ""))
    except RuntimeError:  # no GPU: lowering only, for Hopper
        return 90


def _xla_lowering(
    triton_type,
    ctx,
    *array_args,
    fn,
    scalar_args,
    grid,
    num_warps,
    num_stages,
    num_ctas,
    compute_capability,
    input_output_aliases,
    zeroed_outputs,
    name=None,
    custom_call_target_name=None,
    out_shapes=None,
    enable_fp_fusion=None,
    debug=None,
    serialized_metadata=None,
    **metaparams,
) -> Sequence[mlir.ir.Value]:
    """jax-triton's launch primitive as XLA's own Triton custom call (mode ``xla``).

    Takes the primitive's parameters as jax-triton's rule does; supports what this package's
    kernels use: array arguments only, a static grid, no outputs zeroed by the launcher."""
    del name, custom_call_target_name, out_shapes, enable_fp_fusion, debug, serialized_metadata
    num_warps = 4 if num_warps is None else num_warps  # jax-triton's defaults
    num_stages = 3 if num_stages is None else num_stages
    if scalar_args or zeroed_outputs or num_ctas != 1 or callable(grid):
        raise NotImplementedError(
            "Triton launch mode 'xla' takes array arguments, a static grid, one CTA and no "
            "zeroed outputs"
        )
    avals = (*ctx.avals_in, *ctx.avals_out)
    kernel_name, ttir = kernel_ttir(
        fn,
        [triton_type(a) for a in avals],
        metaparams,
        num_warps,
        num_stages,
        compute_capability or gpu_compute_capability(),
    )
    return xla_triton_lowering(
        ctx,
        *array_args,
        name=kernel_name,
        ttir=ttir,
        grid=(grid,) if isinstance(grid, int) else tuple(grid),
        num_warps=num_warps,
        num_stages=num_stages,
        aliases=dict(input_output_aliases),
    )


@functools.cache
def install_launch_lowering(mode: str = "ffi") -> str:
    """Register the lowering of jax-triton's launches for ``mode``; returns the mode in force.

    ``"ffi"`` (the default) emits ``triton_kernel_call_ffi`` when jaxlib has it, else falls back
    to ``"legacy"``, jax-triton's own rule; ``"xla"`` emits XLA's own Triton custom call
    (experimental). Called by the attention wrapper before it traces a launch (lowering rules
    are looked up when a program is lowered, after tracing); repeated calls with the same mode
    are free.
    """
    if mode not in MODES:
        raise ValueError(f"Triton launch mode must be one of {MODES}, not {mode!r}")
    from jax._src.lib import version as jaxlib_version
    from jax_triton import triton_lib  # GPU-only dependency (the ``cuda`` extra)

    legacy = functools.partial(triton_lib.triton_kernel_call_lowering, triton_lib.get_cuda_backend)
    if mode == "ffi" and tuple(jaxlib_version) < FIRST_JAXLIB_WITH_FFI:
        mode = "legacy"
    rule = {
        "legacy": legacy,
        "ffi": functools.partial(_ffi_lowering, legacy),
        "xla": functools.partial(_xla_lowering, triton_lib.get_triton_type),
    }[mode]
    mlir.register_lowering(triton_lib.triton_kernel_call_p, rule, platform="cuda")
    return mode
