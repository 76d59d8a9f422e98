"""Per-request sampling parameters: host staging (numpy) and the device pytree the sampler reads.

vLLM hands the runner one ``SamplingParams`` per request. The runner keeps them here, one row
per persistent-batch row (``max_num_reqs`` rows), from the moment a request gets a row:

* :class:`SamplingInputs` owns the numpy arrays, filled by row with ``set_request`` when a
  request is added and reset by ``clear``.
* :meth:`SamplingInputs.to_metadata` gathers the rows of one step, in output order, and pads them
  to the step's request bucket with greedy rows; the result is a :class:`SamplingMetadata` that goes
  to the device in one ``jax.device_put`` and into the jitted sampler (``sample/sampler.py``).

Every field is array data: which options a request uses never changes the compiled program.

Randomness: each request has a 32-bit seed (its own ``SamplingParams.seed`` modulo ``2**32``, or,
for an unseeded request, a random seed the runner draws when the request is added). The sampler
derives the key of a draw from that seed and ``step`` (how many tokens the request has produced),
so a request's draw depends only on its seed and position, not on which other requests share the
batch or on its row.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import numpy as np

if TYPE_CHECKING:
    from vllm.sampling_params import SamplingParams

# Temperatures below this are greedy: vLLM's ``_SAMPLING_EPS`` (vllm/v1/sample/sampler.py).
SAMPLING_EPS = 1e-5

# Field values of a row without a request: greedy, no filters. Padding rows get them too.
_GREEDY_ROW = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seeds": 0}


@dataclasses.dataclass
class SamplingMetadata:
    """Sampling parameters of one step's requests, one row per request of the request bucket.

    Built on the host as numpy arrays (:meth:`SamplingInputs.to_metadata`) and moved with one
    ``jax.device_put``; inside ``jax.jit`` the fields are traced arrays.

    Attributes:
        temperature: softmax temperature; below :data:`SAMPLING_EPS` (0 in practice) the row is
            greedy: the argmax of the raw logits, ignoring every other field.
        top_k: keep the ``top_k`` largest logits; off when ``<= 0`` or ``>= vocab_size``.
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``;
            off when ``>= 1``.
        min_p: drop tokens less likely than ``min_p`` times the most likely token; off when 0.
        seeds: the request's 32-bit sampling seed.
        step: tokens the request has produced so far; folded into the seed's key.
    """

    temperature: jax.Array  # f32[num_reqs]
    top_k: jax.Array  # i32[num_reqs]
    top_p: jax.Array  # f32[num_reqs]
    min_p: jax.Array  # f32[num_reqs]
    seeds: jax.Array  # u32[num_reqs]
    step: jax.Array  # i32[num_reqs]


jax.tree_util.register_dataclass(
    SamplingMetadata,
    data_fields=["temperature", "top_k", "top_p", "min_p", "seeds", "step"],
    meta_fields=[],
)


class SamplingInputs:
    """Host staging of every batch row's sampling parameters (numpy, ``max_num_reqs`` rows).

    Rows without a request hold greedy defaults.

    Args:
        max_num_reqs: number of rows (vLLM's ``max_num_seqs``).
    """

    def __init__(self, max_num_reqs: int) -> None:
        self.max_num_reqs = max_num_reqs
        self.temperature = np.full(max_num_reqs, _GREEDY_ROW["temperature"], np.float32)
        self.top_k = np.full(max_num_reqs, _GREEDY_ROW["top_k"], np.int32)
        self.top_p = np.full(max_num_reqs, _GREEDY_ROW["top_p"], np.float32)
        self.min_p = np.full(max_num_reqs, _GREEDY_ROW["min_p"], np.float32)
        self.seeds = np.full(max_num_reqs, _GREEDY_ROW["seeds"], np.uint32)

    def set_request(self, row: int, params: SamplingParams, seed: int) -> None:
        """Store a request's parameters in ``row``.

        Args:
            row: the request's batch row.
            params: the request's sampling parameters.
            seed: ``params.seed`` when set, else a random seed the runner drew for the request;
                any Python int (taken modulo ``2**32``).
        """
        greedy = params.temperature < SAMPLING_EPS
        self.temperature[row] = 0.0 if greedy else params.temperature
        # vLLM's top_k is 0 or -1 when off; store 0 for both.
        self.top_k[row] = max(params.top_k, 0)
        self.top_p[row] = params.top_p
        self.min_p[row] = params.min_p
        self.seeds[row] = seed % 2**32

    def clear(self, row: int) -> None:
        """Reset ``row`` to the greedy defaults (the request left the batch)."""
        for name, value in _GREEDY_ROW.items():
            getattr(self, name)[row] = value

    def to_metadata(
        self,
        rows: np.ndarray,  # i32[num_reqs] batch rows of the step's requests, in output order
        steps: np.ndarray,  # i32[num_reqs] tokens each of those requests has produced so far
        num_reqs_padded: int,
    ) -> SamplingMetadata:
        """Gather one step's rows and pad them with greedy rows to the request bucket.

        Args:
            rows: batch rows of the requests to sample, in the order of the logits.
            steps: output tokens produced so far by each of those requests.
            num_reqs_padded: the request bucket (``>= len(rows)``).

        Returns:
            Numpy-backed metadata with ``num_reqs_padded`` rows.
        """
        num_reqs = len(rows)
        if num_reqs != len(steps):
            raise ValueError(f"{len(rows)=} must equal {len(steps)=}")
        if num_reqs > num_reqs_padded:
            raise ValueError(f"{num_reqs=} rows do not fit in {num_reqs_padded=}")

        def gather(values: np.ndarray, pad_value: float | int) -> np.ndarray:
            out = np.full(num_reqs_padded, pad_value, values.dtype)
            out[:num_reqs] = values[rows]
            return out

        padded_steps = np.zeros(num_reqs_padded, np.int32)
        padded_steps[:num_reqs] = steps
        return SamplingMetadata(
            **{name: gather(getattr(self, name), value) for name, value in _GREEDY_ROW.items()},
            step=padded_steps,
        )
