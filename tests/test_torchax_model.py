"""``params_read_by``: the parameters a function reads, found by tracing it.

The reference is the function itself: every entry it uses must be kept, every other dropped,
and the function on the subset must give the same result as on the whole set.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vllm_xla_gpu.model.torchax_model import params_read_by


def test_params_read_by_keeps_exactly_what_is_read():
    params = {name: jnp.full((4, 4), float(i)) for i, name in enumerate("abcdef")}
    params["tied"] = params["c"]  # one array under two names, read under one of them

    def fn(p, x):
        return x @ p["a"] + jnp.sum(p["tied"]) * p["d"][0, 0]

    x = jnp.ones((2, 4))
    subset = params_read_by(fn, params, x)
    assert sorted(subset) == ["a", "d", "tied"]
    assert all(subset[k] is params[k] for k in subset)
    np.testing.assert_array_equal(fn(subset, x), fn(params, x))
