"""``AttentionMetadata``: the per-step arrays that tell paged attention where everything lives.

The runner builds one per step on the host (``runner/step_inputs.py``), padded to the step's
token bucket and to a number of request rows (``max_num_reqs`` below; the runner gives a token
bucket ``min(bucket, max_num_seqs)`` rows), and every attention layer of the step reads the
same one.
It is a pytree whose fields are all data, so it can be a ``jax.jit`` argument: its shapes (and
so the compiled program) depend only on the buckets, never on the requests' contents.

Example: requests A (3 tokens computed, 2 scheduled) and B (decode: 7 computed, 1 scheduled),
``block_size = 4``, token bucket 4, ``max_num_reqs = 3``::

    query_start_loc = [0, 2, 3, 3]     # A owns tokens 0:2, B token 2, token 3 is padding
    seq_lens        = [5, 8, 0]        # A at positions 3, 4; B at position 7
    slot_mapping    = [A[0]*4 + 3, A[1]*4 + 0, B[1]*4 + 3, -1]   # X[i]: page block_tables[X, i]
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass
class AttentionMetadata:
    """Where the step's tokens go in the paged KV cache, and which KV each of them sees.

    Attributes:
        slot_mapping: flat KV-cache slot (``page * block_size + offset``) of each scheduled
            token, where its new K/V is written; ``-1`` (vLLM's ``PAD_SLOT_ID``) for padding
            tokens, whose K/V is not written.
        block_tables: page ids of each request, in position order (position ``j`` lives in page
            ``block_tables[r, j // block_size]``). Entries past a request's last page, and rows
            of padding requests, may hold any valid page id (vLLM puts 0).
        seq_lens: KV length of each request after this step
            (``num_computed_tokens + num_scheduled_tokens``); 0 for padding requests.
        query_start_loc: cumulative scheduled-token offsets: request ``r`` owns tokens
            ``query_start_loc[r]:query_start_loc[r + 1]``. Padding requests have zero length
            (the value repeats); tokens at or after ``query_start_loc[-1]`` are padding.
    """

    slot_mapping: jax.Array  # i32[num_tokens]
    block_tables: jax.Array  # i32[max_num_reqs, max_blocks_per_req]
    seq_lens: jax.Array  # i32[max_num_reqs]
    query_start_loc: jax.Array  # i32[max_num_reqs + 1]


jax.tree_util.register_dataclass(
    AttentionMetadata,
    data_fields=["slot_mapping", "block_tables", "seq_lens", "query_start_loc"],
    meta_fields=[],
)
