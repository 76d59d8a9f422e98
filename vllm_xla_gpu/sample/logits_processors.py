"""Logits processors that can change the argmax: masks, logit bias and penalties (jitted).

vLLM's ``Sampler.apply_logits_processors`` (``vllm/v1/sample/sampler.py``) runs, in order:
the ``allowed_token_ids`` mask, bad words, the min-tokens and logit-bias processors
(``logits_processor/builtin.py``), then the repetition, frequency and presence penalties
(``ops/penalties.py``). Here the three masks arrive as one packed token mask
(``sample/token_masks.py``) applied first: setting ``-inf`` commutes with adding a bias and with
every penalty (``-inf`` stays ``-inf``), so the result equals vLLM's order.

Each function takes the whole request bucket; a row whose options are off is left unchanged,
and work no row of the step needs is skipped with ``lax.cond``, so one compiled program serves
every mix of options. The module owns no state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vllm_xla_gpu.sample.metadata import SamplingMetadata


def apply_logits_processors(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    md: SamplingMetadata,
) -> jax.Array:  # f32[num_reqs, vocab_size]
    """The token mask, then the logit bias, then the penalties (vLLM's order)."""
    logits = apply_token_bitmask(logits, md.token_mask)
    logits = apply_logit_bias(logits, md.logit_bias_ids, md.logit_bias_values)
    penalized = (
        (md.presence_penalty != 0) | (md.frequency_penalty != 0) | (md.repetition_penalty != 1)
    )
    return jax.lax.cond(jnp.any(penalized), apply_penalties, lambda x, _: x, logits, md)


def apply_token_bitmask(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    bitmask: jax.Array,  # i32[num_reqs, ceil(vocab_size / 32)]
) -> jax.Array:  # f32[num_reqs, vocab_size]
    """Set the logits of tokens whose bit is clear to ``-inf`` (xgrammar's
    ``apply_token_bitmask_inplace``); skipped when every bit is set."""

    def apply(logits: jax.Array) -> jax.Array:
        vocab_size = logits.shape[-1]
        shifts = jnp.arange(32, dtype=jnp.int32)
        bits = jax.lax.shift_right_logical(bitmask[:, :, None], shifts[None, None, :]) & 1
        allowed = bits.reshape(bitmask.shape[0], -1)[:, :vocab_size] == 1
        return jnp.where(allowed, logits, -jnp.inf)

    return jax.lax.cond(jnp.all(bitmask == -1), lambda x: x, apply, logits)


def apply_logit_bias(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    token_ids: jax.Array,  # i32[num_reqs, slots] (vocab_size in unused slots)
    biases: jax.Array,  # f32[num_reqs, slots]
) -> jax.Array:  # f32[num_reqs, vocab_size]
    """Add each request's biases to its tokens' logits (``LogitBiasLogitsProcessor``)."""
    rows = jnp.arange(logits.shape[0])[:, None]
    return logits.at[rows, token_ids].add(biases, mode="drop")


def apply_penalties(
    logits: jax.Array,  # f32[num_reqs, vocab_size]
    md: SamplingMetadata,
) -> jax.Array:  # f32[num_reqs, vocab_size]
    """vLLM's ``apply_penalties``: repetition (tokens of the prompt or the output), then
    frequency (times the output count) and presence (once per output token id).

    The repetition penalty divides positive logits and multiplies the others, as vLLM's
    ``apply_repetition_penalties``.
    """
    num_reqs, vocab_size = logits.shape
    position = jnp.arange(md.token_ids.shape[1], dtype=jnp.int32)[None, :]
    prompt_end = md.num_prompt_tokens[:, None]
    in_prompt = position < prompt_end
    in_output = (position >= prompt_end) & (position < prompt_end + md.step[:, None])
    rows = jnp.arange(num_reqs)[:, None]
    # Tokens outside the range scatter to the extra column vocab_size, then dropped.
    prompt_ids = jnp.where(in_prompt, md.token_ids, vocab_size)
    output_ids = jnp.where(in_output, md.token_ids, vocab_size)
    prompt_mask = jnp.zeros((num_reqs, vocab_size + 1), bool).at[rows, prompt_ids].set(True)
    counts = jnp.zeros((num_reqs, vocab_size + 1), jnp.int32).at[rows, output_ids].add(1)
    prompt_mask, counts = prompt_mask[:, :vocab_size], counts[:, :vocab_size]
    output_mask = counts > 0

    repetition = jnp.where(prompt_mask | output_mask, md.repetition_penalty[:, None], 1.0)
    logits = logits * jnp.where(logits > 0, 1.0 / repetition, repetition)
    logits = logits - md.frequency_penalty[:, None] * counts
    return logits - md.presence_penalty[:, None] * output_mask
