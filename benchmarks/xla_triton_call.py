"""A Triton kernel launched through XLA's own Triton custom call, beside the FFI launches.

``ops/triton_launch.py`` registers one lowering for all of jax-triton's launches in a process
(``VLLM_XLA_GPU_TRITON_LAUNCH``). To time the FFI launch and XLA's own Triton custom call
(mode ``xla``: a plain kernel node in XLA's graph, not a captured child graph) in one process,
``dispatch_cost.py --launches`` launches the second through this separate primitive, with the
same IR and custom call as mode ``xla`` (``triton_launch.kernel_ttir`` and
``triton_launch.xla_triton_lowering``). GPU only; not used by serving.
"""

from __future__ import annotations

import jax
from jax.extend.core import Primitive
from jax.interpreters import mlir

from vllm_xla_gpu.ops import triton_launch

_TRITON_TYPES = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32", "int32": "*i32"}


def _lowering(ctx, *args, out_shapes, fn, grid, num_warps, num_stages, aliases, constants):
    del out_shapes
    avals = (*ctx.avals_in, *ctx.avals_out)
    name, ttir = triton_launch.kernel_ttir(
        fn,
        [_TRITON_TYPES[a.dtype.name] for a in avals],
        dict(constants),
        num_warps,
        num_stages,
        triton_launch.gpu_compute_capability(),
    )
    return triton_launch.xla_triton_lowering(
        ctx,
        *args,
        name=name,
        ttir=ttir,
        grid=grid,
        num_warps=num_warps,
        num_stages=num_stages,
        aliases=dict(aliases),
    )


xla_triton_p = Primitive("xla_triton_call")
xla_triton_p.multiple_results = True
xla_triton_p.def_abstract_eval(lambda *_, out_shapes, **__: out_shapes)
mlir.register_lowering(xla_triton_p, _lowering, platform="cuda")


def xla_triton_call(
    fn,
    *args,
    out_shape,
    grid,
    num_warps: int = 4,
    num_stages: int = 2,
    input_output_aliases: dict | None = None,
    **constants,
):
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
