"""A Triton kernel launched through XLA's own Triton custom call, beside the FFI launches.

``ops/triton_launch.py`` registers one lowering for all of jax-triton's launches in a process
(``VLLM_XLA_GPU_TRITON_LAUNCH``). To time the FFI launch and XLA's own Triton custom call
(mode ``xla``: a plain kernel node in XLA's graph, not a captured child graph) in one process,
``dispatch_cost.py --launches`` launches the second through this separate primitive, lowered by
mode ``xla``'s own rule (``triton_launch._xla_lowering``). GPU only; not used by serving.
"""

from __future__ import annotations

import functools

import jax
from jax.extend.core import Primitive
from jax.interpreters import mlir
from jax_triton import triton_lib  # GPU-only dependency (the ``cuda`` extra)

from vllm_xla_gpu.ops import triton_launch

xla_triton_p = Primitive("xla_triton_call")
xla_triton_p.multiple_results = True
xla_triton_p.def_abstract_eval(lambda *_, out_shapes, **__: out_shapes)
mlir.register_lowering(
    xla_triton_p,
    functools.partial(triton_launch._xla_lowering, triton_lib.get_triton_type),
    platform="cuda",
)


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
    ``input_output_aliases`` maps an input's index to the output's (0), as in jax-triton. The
    parameters are those jax-triton's launch primitive carries, so mode ``xla``'s rule reads
    them unchanged."""
    [result] = xla_triton_p.bind(
        *args,
        out_shapes=(jax.core.ShapedArray(out_shape.shape, out_shape.dtype),),
        fn=fn,
        scalar_args=(),
        grid=tuple(grid),
        num_warps=num_warps,
        num_stages=num_stages,
        num_ctas=1,
        compute_capability=None,
        input_output_aliases=tuple((input_output_aliases or {}).items()),
        zeroed_outputs=(),
        **constants,
    )
    return result
