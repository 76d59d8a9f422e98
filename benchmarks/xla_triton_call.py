"""A Triton kernel handed to XLA's own Triton custom call, for launch-cost experiments.

The package launches its Triton kernels through jaxlib's typed-FFI handler
(``ops/triton_launch.py``). XLA records such a call into the step's CUDA graph by stream
capture, as a child-graph node (``CustomCallCmd::RecordXlaFfiCall`` in XLA's
``command_buffer_cmd.cc``). XLA also accepts a kernel as Triton IR in the custom call
``__gpu$xla.gpu.triton`` (what Pallas' Triton backend emitted up to jaxlib 0.10.2): XLA then
compiles the kernel itself and launches it as an ordinary kernel thunk, a plain kernel node in
the graph. :func:`xla_triton_call` emits that call for a ``@triton.jit`` function, so
``dispatch_cost.py --launches`` can time both node kinds side by side.

The IR is the kernel's TTIR as the ``triton`` package prints it, with every pointer argument
assumed 16-byte aligned (as jax-triton assumes). Whether XLA's Triton parses this package's
TTIR is one of the things the experiment finds out. GPU only; not used by serving.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import mlir

XLA_TRITON_TARGET = "__gpu$xla.gpu.triton"
_TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "int32": "i32"}


def kernel_ttir(fn, pointer_types: list[str], constants: dict, num_warps: int, num_stages: int,
                compute_capability: int) -> tuple[str, str]:  # fmt: skip
    """``(name, TTIR text)`` of ``fn`` with its non-constant arguments the pointers
    ``pointer_types`` (e.g. ``"*bf16"``), in order, and ``constants`` as its constexprs."""
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
    compiled = triton.compile(
        ASTSource(fn, signature, constants, attrs),
        target=GPUTarget("cuda", compute_capability, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    return compiled.metadata.name, compiled.asm["ttir"]


def _pointer_type(aval) -> str:
    return "*" + _TRITON_TYPES[aval.dtype.name]


def _compute_capability() -> int:
    try:
        return int(jax.devices("gpu")[0].compute_capability.replace(".", ""))
    except RuntimeError:
        return 90  # no GPU here: lowering only, for Hopper


def _lowering(ctx, *args, fn, grid, num_warps, num_stages, aliases, constants):
    pointer_types = [_pointer_type(a) for a in (*ctx.avals_in, *ctx.avals_out)]
    name, ttir = kernel_ttir(
        fn, pointer_types, dict(constants), num_warps, num_stages, _compute_capability()
    )
    grid = (*grid, 1, 1)[:3]
    # The attributes Pallas' Triton backend wrote for this target (jaxlib <= 0.10.2), through
    # jax's public FFI lowering (API version 4: they go in ``mhlo.backend_config``).
    rule = jax.ffi.ffi_lowering(XLA_TRITON_TARGET, operand_output_aliases=dict(aliases))
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


xla_triton_p = Primitive("xla_triton_call")
xla_triton_p.multiple_results = True
xla_triton_p.def_abstract_eval(lambda *_, out_shapes, **__: out_shapes)
mlir.register_lowering(
    xla_triton_p,
    lambda ctx, *args, out_shapes, **params: _lowering(ctx, *args, **params),
    platform="cuda",
)


def xla_triton_call(fn, *args, out_shape, grid, num_warps=4, num_stages=2,
                    input_output_aliases=None, **constants):  # fmt: skip
    """Launch ``fn`` on ``args`` through XLA's Triton custom call; one output, ``out_shape``.

    ``fn`` takes the arrays in order, then the output, then ``constants`` (its constexprs);
    ``input_output_aliases`` maps an input's index to the output's (0), as in jax-triton."""
    out = jax.core.ShapedArray(out_shape.shape, out_shape.dtype)
    [result] = xla_triton_p.bind(
        *args,
        out_shapes=(out,),
        fn=fn,
        grid=tuple(grid),
        num_warps=num_warps,
        num_stages=num_stages,
        aliases=tuple((input_output_aliases or {}).items()),
        constants=tuple(sorted(constants.items())),
    )
    return result
