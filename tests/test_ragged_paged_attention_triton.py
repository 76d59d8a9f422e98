"""The Triton ragged paged attention kernel against dense attention and the reference op.

Two halves, one per machine:

* **XLA:CPU (CI)**: the kernel runs in Triton's interpreter on torch CPU tensors (``conftest.py``
  sets ``TRITON_INTERPRET=1`` there, before Triton is imported), on the same paged steps as the
  reference's tests (``test_ragged_paged_attention.make_step``: pages in random order, NaN in
  every unused row, padding tokens and requests), with the block sizes the host picks and with
  small blocks that split requests into many q tiles and KV chunks.
* **GPU**: the jitted JAX wrapper (``jax-triton`` launch + cache write) at realistic sizes:
  decode with ragged contexts up to 32k, prefill, mixed; GQA ratios 1/4/8; head_dim 64/128/256;
  page sizes 16/32/64; float32 and bfloat16. The cache after the write must be exact.

Tolerances: float32 dots run as IEEE float32 (``input_precision="ieee"``), so the gap to the
float64 dense result is float32 rounding over up to 32k terms (2e-5). In bfloat16 the kernel,
like every flash-attention kernel, rounds the softmax weights to bfloat16 before the ``P @ V``
matmul and the output to bfloat16: 2e-2 absolute and relative on O(1) values. Triton 3.9's
interpreter multiplies bfloat16 matrices wrongly (it reads their bits as another type), so on
the CPU the 16-bit path is checked in float16 (1e-2) and bfloat16 on the GPU only.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_ragged_paged_attention import CASES, HEADS, Step, expected_output, make_step

from vllm_xla_gpu.ops.ragged_paged_attention import reference, triton_gpu

ATOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2, jnp.float16: 1e-2}
RTOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2, jnp.float16: 1e-2}
ON_GPU = jax.default_backend() == "gpu"
TORCH_DTYPE = {jnp.float32: torch.float32, jnp.float16: torch.float16}


@pytest.fixture
def interpreted():
    """``triton_gpu``, whose kernel runs in Triton's interpreter in this session (CPU only).

    ``conftest.py`` turns the interpreter on when JAX runs on the CPU; a GPU runs the
    compiled kernel instead (tests at the end of this file).
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter is off: the compiled kernel is tested on the GPU")
    return triton_gpu


def small_config(module, group: int, read_inputs: bool = True):
    """16-row tiles and 16-position KV chunks: many tiles per request, many chunks per tile
    (with ``read_inputs``, many of a prefill tile's chunks come from the ``k``/``v`` inputs)."""
    return module.KernelConfig(
        block_q=max(1, 16 // group),
        block_m=max(16, 1 << (group - 1).bit_length()),
        block_n=16,
        num_warps=4,
        num_stages=1,
        read_inputs=read_inputs,
    )


def packed_qkv(step: Step, dtype) -> torch.Tensor:
    """``step``'s q, k and v side by side as ``triton_gpu.pack_qkv`` (run here by XLA:CPU)
    hands them to both kernels, as a torch tensor for the interpreter."""
    q, k, v = (jnp.asarray(x, dtype) for x in (step.q, step.k, step.v))
    qkv = np.asarray(triton_gpu.pack_qkv(q, k, v, q.dtype))
    return torch.tensor(qkv.astype(np.float32)).to(TORCH_DTYPE[dtype])


def run_interpreted(module, step: Step, dtype, config: str, **options) -> np.ndarray:
    """The kernel in Triton's interpreter on ``step`` (cache already written, as in the wrapper)."""
    torch_dtype = TORCH_DTYPE[dtype]
    num_tokens, num_q_heads, head_dim = step.q.shape
    num_kv_heads = step.kv_cache.shape[3]
    num_reqs = step.md.block_tables.shape[0]
    group = num_q_heads // num_kv_heads
    cfg = (
        module.kernel_config(num_tokens, num_reqs, group, head_dim)
        if config == "auto"
        else small_config(module, group, read_inputs=config != "small-cache")
    )
    q = jnp.asarray(step.q, dtype)
    kv = jnp.asarray(step.expected_kv_cache, dtype)
    constants = module.kernel_constants(q, kv, step.md, cfg, **options)
    # Not zeroed, as XLA hands the kernel its output: every row must be written, padding too.
    out = torch.full(step.q.shape, float("nan"), dtype=torch_dtype)
    module.ragged_paged_attention_kernel[(num_tokens // cfg.block_q + num_reqs, num_kv_heads)](
        packed_qkv(step, dtype),
        torch.tensor(step.expected_kv_cache).to(torch_dtype),
        *(torch.tensor(x) for x in (step.md.block_tables, step.md.seq_lens)),
        torch.tensor(step.md.query_start_loc),
        out,
        **constants,
    )
    return out.float().numpy()


def check_interpreted(module, step: Step, dtype, config: str, **options) -> None:
    """Kernel output close to dense attention; padding tokens' output zero."""
    options = {"sliding_window": None, "soft_cap": None, **options}
    options["sm_scale"] = step.q.shape[-1] ** -0.5
    out = run_interpreted(module, step, dtype, config, **options)
    expected = expected_output(step, **options)
    np.testing.assert_allclose(out, expected, atol=ATOL[dtype], rtol=RTOL[dtype])
    np.testing.assert_array_equal(out[step.num_tokens :], 0.0)


@pytest.mark.parametrize("config", ["auto", "small", "small-cache"])
@pytest.mark.parametrize("heads", HEADS.values(), ids=HEADS.keys())
@pytest.mark.parametrize("case", CASES.keys())
def test_interpreted_matches_dense(interpreted, case: str, heads, config: str) -> None:
    check_interpreted(interpreted, make_step(case, *heads), jnp.float32, config)


@pytest.mark.parametrize("config", ["auto", "small"])
def test_interpreted_gqa8_float16(interpreted, config: str) -> None:
    step = make_step("mixed", 16, 2, dtype=jnp.float16, head_dim=64, seed=2)
    check_interpreted(interpreted, step, jnp.float16, config)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_interpreted_decode_heavy_auto(interpreted, head_dim: int) -> None:
    """A decode step with no more tokens than request rows: the host picks 16-row tiles (and
    at head_dim 64, 128-position chunks); contexts span several chunks and a partial last one."""
    step = make_step(([300, 131, 7, 255], [1, 1, 1, 1], 4), 8, 2, head_dim=head_dim, seed=5)
    cfg = interpreted.kernel_config(4, step.md.block_tables.shape[0], 4, head_dim)
    assert cfg.block_m == 16 and cfg.block_n == (128 if head_dim == 64 else 64)
    check_interpreted(interpreted, step, jnp.float32, "auto")


@pytest.mark.parametrize("case", ["mixed", "chunked_prefill"])
def test_interpreted_sliding_window(interpreted, case: str) -> None:
    step = make_step(case, 4, 2, block_size=4, seed=3)
    check_interpreted(interpreted, step, jnp.float32, "small", sliding_window=5)


@pytest.mark.parametrize("case", ["prefill_only", "chunked_prefill"])
def test_interpreted_soft_cap(interpreted, case: str) -> None:
    step = make_step(case, 4, 2, head_dim=64, seed=4)
    check_interpreted(interpreted, step, jnp.float32, "small", soft_cap=0.5)


def test_interpreted_head_dim_not_power_of_two(interpreted) -> None:
    """head_dim 80 is padded to 128 lanes inside the kernel; the pad must not leak."""
    check_interpreted(
        interpreted, make_step("mixed", 4, 2, head_dim=80, seed=6), jnp.float32, "auto"
    )


@pytest.mark.parametrize("read_inputs", [True, False])
def test_interpreted_prefill_chunks_read_from_inputs(interpreted, read_inputs: bool) -> None:
    """With ``read_inputs`` a prefill tile reads its unmasked, wholly-new chunks from the
    ``k``/``v`` inputs, not the cache: inputs that disagree with the cache change the output
    then (the path is taken), and not without it (the cache is read)."""
    import dataclasses

    step = make_step(([0, 0, 20], [40, 70, 30], 160), 4, 2, seed=10)  # many 16-row chunks
    wrong = dataclasses.replace(step, k=step.k * 2.0, v=step.v - 1.0)
    config = "small" if read_inputs else "small-cache"
    options = dict(sm_scale=step.q.shape[-1] ** -0.5, sliding_window=None, soft_cap=None)
    out = run_interpreted(interpreted, wrong, jnp.float32, config, **options)
    matches = np.allclose(out, expected_output(step, **options), atol=1e-4, rtol=1e-4)
    assert matches != read_inputs


@pytest.mark.parametrize("case", CASES.keys())
def test_interpreted_kv_write_is_exact(interpreted, case: str) -> None:
    """The write kernel fills exactly the scheduled tokens' slots, skipping padding (slot -1)."""
    step = make_step(case, 8, 2, head_dim=48, seed=9)  # a row of 96: padded to 128 lanes
    num_tokens, num_kv_heads, head_dim = step.k.shape
    _, num_blocks, block_size, _, _ = step.kv_cache.shape
    cache = torch.tensor(step.kv_cache)
    qkv = packed_qkv(step, jnp.float32)
    interpreted.write_kv_kernel[(num_tokens,)](
        qkv,
        torch.tensor(step.md.slot_mapping),
        cache,
        cache,  # in and out are one buffer, as under input_output_aliases
        ROW=num_kv_heads * head_dim,
        ROW_PAD=128,
        NUM_SLOTS=num_blocks * block_size,
        QKV_ROW=qkv.shape[1],
    )
    np.testing.assert_array_equal(cache.numpy(), step.expected_kv_cache)  # NaN == NaN here


# ---------------------------------------------------------------------------------------------
# On the GPU: the jitted wrapper, at realistic sizes.

# (num_computed, num_scheduled, padded tokens)
GPU_STEPS = {
    "decode_32k": ([32767, 5000, 17, 1023, 8191, 2, 16383], [1] * 7, 16),
    # no more tokens than request rows (14 + 2 padding): the decode-heavy tiles serving uses
    "decode_heavy": (
        [32767, 5000, 17, 1023, 8191, 2, 16383, 300, 4096, 0, 2047, 100, 64, 129],
        [1] * 14,
        16,
    ),
    "prefill": ([0, 0, 0], [2048, 300, 37], 2560),
    "mixed": ([0, 3000, 0, 700, 64], [500, 1, 130, 1, 1], 640),
    "chunked": ([4096, 1000, 33], [512, 256, 1], 1024),
}
# (step, num_q_heads, num_kv_heads, head_dim, block_size)
GPU_CASES = [
    ("decode_32k", 32, 8, 128, 16),
    ("decode_heavy", 32, 8, 128, 16),  # 16 x 64 tiles
    ("decode_heavy", 32, 8, 64, 16),  # head_dim 64: 16 x 128 tiles
    ("prefill", 32, 8, 128, 16),
    ("mixed", 32, 8, 128, 16),
    ("mixed", 8, 8, 128, 16),  # GQA ratio 1
    ("mixed", 32, 4, 128, 16),  # GQA ratio 8
    ("chunked", 16, 4, 64, 16),  # head_dim 64
    ("chunked", 8, 2, 256, 16),  # head_dim 256
    ("chunked", 32, 8, 128, 32),  # page size 32
    ("chunked", 32, 8, 128, 64),  # page size 64
]


# Every case in bfloat16 (what serving runs); the decode, prefill and mixed steps in float32 too.
GPU_PARAMS = [(c, jnp.bfloat16) for c in GPU_CASES] + [
    (c, jnp.float32) for c in GPU_CASES if c[0] in ("decode_32k", "prefill", "mixed")
][:3]


@pytest.mark.skipif(not ON_GPU, reason="the Triton kernel compiles for NVIDIA GPUs only")
@pytest.mark.parametrize(
    ("case", "dtype"),
    GPU_PARAMS,
    ids=[f"{'-'.join(map(str, c))}-{jnp.dtype(d).name}" for c, d in GPU_PARAMS],
)
def test_gpu_kernel_matches_dense(case, dtype) -> None:
    name, num_q_heads, num_kv_heads, head_dim, block_size = case
    step = make_step(
        GPU_STEPS[name],
        num_q_heads,
        num_kv_heads,
        dtype=dtype,
        head_dim=head_dim,
        block_size=block_size,
        seed=7,
    )
    if name == "decode_heavy":  # the case must keep covering the decode tiles
        cfg = triton_gpu.kernel_config(
            step.q.shape[0], step.md.block_tables.shape[0], num_q_heads // num_kv_heads, head_dim
        )
        assert cfg.block_m == 16 and cfg.block_n == (128 if head_dim == 64 else 64)
    sm_scale = head_dim**-0.5
    fn = jax.jit(lambda *a: triton_gpu.ragged_paged_attention(*a, sm_scale=sm_scale))
    out, kv_cache = fn(
        *(jnp.asarray(x, dtype) for x in (step.q, step.k, step.v, step.kv_cache)),
        jax.tree.map(jnp.asarray, step.md),
    )
    np.testing.assert_array_equal(np.asarray(kv_cache, np.float32), step.expected_kv_cache)
    out = np.asarray(out, np.float32)
    expected = expected_output(step, sm_scale=sm_scale)
    np.testing.assert_allclose(out, expected, atol=ATOL[dtype], rtol=RTOL[dtype])
    np.testing.assert_array_equal(out[step.num_tokens :], 0.0)


@pytest.mark.skipif(not ON_GPU, reason="the Triton kernel compiles for NVIDIA GPUs only")
@pytest.mark.parametrize("options", [{"sliding_window": 100}, {"soft_cap": 30.0}])
def test_gpu_kernel_options_match_reference(options) -> None:
    step = make_step(GPU_STEPS["mixed"], 32, 8, head_dim=128, block_size=16, seed=8)
    args = (*(jnp.asarray(x) for x in (step.q, step.k, step.v, step.kv_cache)), step.md)
    sm_scale = 128**-0.5
    out, _ = jax.jit(
        lambda *a: triton_gpu.ragged_paged_attention(*a, sm_scale=sm_scale, **options)
    )(*args)
    ref, _ = jax.jit(lambda *a: reference.ragged_paged_attention(*a, sm_scale=sm_scale, **options))(
        *args
    )
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5)
