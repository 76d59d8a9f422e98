"""What lets XLA run a whole GPU step as CUDA graphs: the Triton launch and the XLA flags.

The retargeting of jax-triton's launch to jaxlib's command-buffer-compatible FFI handler:

``ops/triton_launch.py`` rewrites the legacy ``triton_kernel_call`` custom call that jax-triton
0.3.1 emits into ``triton_kernel_call_ffi``. The reference is the op that Pallas' Triton backend
and jax-triton's main branch emit for the same serialized call (``jax.ffi.ffi_lowering`` with API
version 4 and the bytes as the ``opaque`` attribute): the rewritten op must print the same. The
GPU half checks that the attention wrapper's program calls the FFI handler and no legacy launch
(its numerics are the Triton kernel tests, which run through this path by default). Last, the
worker's default XLA flags (conditionals inside CUDA graphs) must leave the user's own alone.
"""

from __future__ import annotations

import re
import zlib

import jax
import jax.numpy as jnp
import pytest
from jax.extend.core import Primitive
from jax.interpreters import mlir

from vllm_xla_gpu.ops import triton_launch

# A kernel call's serialized form is zlib-compressed protobuf: arbitrary bytes, NUL included.
OPAQUE = zlib.compress(b"\x00kernel-call\xff" * 8)


def _primitive(name: str, lowering) -> Primitive:
    prim = Primitive(name)
    prim.def_abstract_eval(lambda x: x)
    prim.def_impl(lambda x: x)
    mlir.register_lowering(prim, lowering)  # lowering only: no platform runs these ops
    return prim


def _legacy_launch(ctx, x):
    """What jax-triton 0.3.1's lowering ends with (``triton_lib.triton_kernel_call_lowering``)."""
    rule = jax.ffi.ffi_lowering(triton_launch.LEGACY_TARGET, api_version=2, backend_config=OPAQUE)
    return rule(ctx, x)


def _ffi_launch(ctx, x):
    """What Pallas' Triton backend and jax-triton's main branch emit for the same call."""
    return jax.ffi.ffi_lowering(triton_launch.FFI_TARGET, api_version=4)(ctx, x, opaque=OPAQUE)


def _custom_call_line(prim: Primitive) -> str:
    text = jax.jit(prim.bind).lower(jnp.zeros((4,), jnp.float32)).as_text()
    [line] = [ln for ln in text.splitlines() if "custom_call" in ln]
    return re.sub(r"^\s*%\S+ = ", "", line)


def test_retargeted_launch_is_the_ffi_launch():
    retargeted = _primitive(
        "legacy_then_retargeted",
        lambda ctx, x: triton_launch._ffi_lowering(_legacy_launch, ctx, x),
    )
    reference = _primitive("ffi_reference", _ffi_launch)
    got = _custom_call_line(retargeted)
    assert f"@{triton_launch.FFI_TARGET}(" in got and "opaque" in got
    assert got == _custom_call_line(reference)


def test_other_custom_calls_are_left_alone():
    def other(ctx, x):
        return jax.ffi.ffi_lowering("some_other_target", api_version=2, backend_config=OPAQUE)(
            ctx, x
        )

    untouched = _primitive(
        "other_target", lambda ctx, x: triton_launch._ffi_lowering(other, ctx, x)
    )
    assert _custom_call_line(untouched) == _custom_call_line(_primitive("other_plain", other))


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="must be one of"):
        triton_launch.install_launch_lowering("graph")


# Run without Triton's interpreter (conftest.py turns it on for the CPU session, and interpreted
# kernels cannot be compiled): the KV write kernel through mode ``xla``'s rule, lowered for CUDA.
_XLA_MODE_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir
from vllm_xla_gpu.ops import triton_launch
from vllm_xla_gpu.ops.ragged_paged_attention import triton_gpu

num_tokens, shape = 6, (2, 8, 16, 2, 64)  # [2, blocks, block, kv heads, dim]
prim = Primitive("kv_write_xla_mode")
prim.def_abstract_eval(lambda *a, **p: a[2])
types = {"bfloat16": "*bf16", "int32": "*i32"}
rule = lambda ctx, *args, **params: triton_launch._xla_lowering(
    lambda aval: types[aval.dtype.name], ctx, *args, **params)
mlir.register_lowering(prim, rule, platform="cuda")
qkv = jax.ShapeDtypeStruct((num_tokens, 512), jnp.bfloat16)  # 4 q heads | 2 k | 2 v, 64 each
args = (qkv, jax.ShapeDtypeStruct((num_tokens,), jnp.int32),
        jax.ShapeDtypeStruct(shape, jnp.bfloat16))
write = lambda qkv, slots, cache: prim.bind(
    qkv, slots, cache, fn=triton_gpu.write_kv_kernel, scalar_args=(), grid=(num_tokens,),
    num_warps=4, num_stages=2, num_ctas=1, compute_capability=90,
    input_output_aliases=((2, 0),), zeroed_outputs=(), ROW=128, ROW_PAD=128, NUM_SLOTS=128,
    QKV_ROW=512)
text = jax.jit(write).trace(*args).lower(lowering_platforms=("cuda",)).as_text()

# The attention kernel at a decode-heavy and a prefill step: its TTIR signature.
from vllm_xla_gpu.ops.attention_metadata import AttentionMetadata
S = jax.ShapeDtypeStruct
cache, rows = S((2, 32, 16, 2, 64), jnp.bfloat16), S((8,), jnp.int32)
md = AttentionMetadata(S((64,), jnp.int32), S((8, 4), jnp.int32), rows, S((9,), jnp.int32))
signatures = []
for tokens in (8, 64):
    q = S((tokens, 8, 64), jnp.bfloat16)
    cfg = triton_gpu.kernel_config(tokens, 8, 4, 64)
    constants = triton_gpu.kernel_constants(q, cache, md, cfg, 0.125, None, None)
    pointers = ["*bf16"] * 2 + ["*i32"] * 3 + ["*bf16"]  # qkv cache | tables lens qsl | out
    name, ttir = triton_launch.kernel_ttir(
        triton_gpu.ragged_paged_attention_kernel, pointers, constants, cfg.num_warps,
        cfg.num_stages, 90)
    signatures.append([name, ttir])
json.dump({"text": text, "attention": signatures}, sys.stdout)
"""


def test_xla_mode_hands_xla_the_kernels_own_signature():
    """Mode ``xla`` emits XLA's Triton custom call as XLA's emitter reads it
    (``EmitTritonCustomCall``): the IR's kernel named in ``name``, taking the call's operands then
    its results as pointers of their element types, the launch grid, and the cache aliased."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", _XLA_MODE_SCRIPT], env=env, capture_output=True, timeout=300
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    [line] = [ln for ln in json.loads(run.stdout)["text"].splitlines() if "custom_call" in ln]
    assert f"@{triton_launch.XLA_TARGET}(" in line
    assert 'name = "write_kv_kernel"' in line
    assert "grid_x = 6 : i32, grid_y = 1 : i32, grid_z = 1 : i32" in line
    assert "num_warps = 4 : i32" in line and "num_stages = 2 : i32" in line
    assert "operand_index = 2" in line  # the cache: updated in place
    ir = re.search(r'ir = "(.*?)", name', line).group(1)
    [signature] = re.findall(r"tt\.func public @write_kv_kernel\((.*?)\) attributes", ir)
    pointers = re.findall(r"!tt\.ptr<(\w+)>", signature)
    # q|k|v, slot_mapping, the cache in, the cache out: the kernel's four pointers, no constexpr.
    assert pointers == ["bf16", "i32", "bf16", "bf16"]
    for name, ttir in json.loads(run.stdout)["attention"]:  # decode-heavy, then prefill tiles
        [signature] = re.findall(rf"tt\.func public @{name}\((.*?)\) attributes", ttir)
        pointers = re.findall(r"!tt\.ptr<(\w+)>", signature)
        assert name == "ragged_paged_attention_kernel"
        assert pointers == ["bf16"] * 2 + ["i32"] * 3 + ["bf16"]


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="lowers the Triton kernel for CUDA")
def test_attention_program_launches_through_ffi():
    from test_ragged_paged_attention import make_step

    from vllm_xla_gpu.ops.ragged_paged_attention import triton_gpu

    step = make_step("mixed", 8, 2, dtype=jnp.bfloat16, head_dim=64)
    fn = jax.jit(lambda *a: triton_gpu.ragged_paged_attention(*a, sm_scale=0.125))
    text = fn.lower(step.q, step.k, step.v, step.kv_cache, step.md).as_text()
    assert text.count(f"@{triton_launch.FFI_TARGET}(") == 2  # cache write + attention
    assert f"@{triton_launch.LEGACY_TARGET}(" not in text


_CMD = "--xla_gpu_enable_command_buffer=+CONDITIONAL"
_CUB = "--xla_gpu_enable_cub_radix_sort=false"


@pytest.mark.parametrize(
    ("user_flags", "expected"),
    [
        ("", f"{_CMD} {_CUB}"),
        ("--xla_dump_to=/tmp/d", f"--xla_dump_to=/tmp/d {_CMD} {_CUB}"),
        # the user's choices stay
        ("--xla_gpu_enable_command_buffer=", f"--xla_gpu_enable_command_buffer= {_CUB}"),
        ("--xla_gpu_enable_cub_radix_sort=true", f"--xla_gpu_enable_cub_radix_sort=true {_CMD}"),
    ],
)
def test_default_xla_flags_keep_the_users(monkeypatch, user_flags, expected):
    """The worker records conditionals into CUDA graphs and turns CUB sorts off, unless
    ``XLA_FLAGS`` sets those flags itself."""
    from vllm_xla_gpu import worker

    monkeypatch.setenv("XLA_FLAGS", user_flags)
    worker._add_default_xla_flags()
    assert worker.os.environ["XLA_FLAGS"] == expected
