"""One host-to-device copy per step input: small arrays travel packed in a single buffer.

A step's inputs are pytrees of many small numpy arrays (token ids, positions, slot mapping,
sequence lengths, per-request sampling parameters...). ``jax.device_put`` moves each leaf as
its own transfer, and every transfer costs host time on the step's critical path (a profile of
decode on XLA:CPU put ``device_put`` at about half of the runner's host time, 23 leaves a step).
Here the 0- and 1-D leaves are laid end to end as 32-bit words in one ``uint32`` buffer on the
host, moved in one transfer, and sliced apart again *inside* the jitted step, where the slices
and bit casts fuse into their consumers and cost nothing. The runner hands the packed numpy
buffers straight to the jitted function: jit's C++ dispatch moves numpy arguments to the
program's device itself, cheaper than a Python ``jax.device_put`` first (0.2 ms a step less on
XLA:CPU at batch 1). Every buffer is freshly built per step and never written afterwards, as a
transfer that may still be in flight requires. Leaves of more than
``max_packed_ndim`` dimensions travel as they are: the sampler's token histories and bitmasks
(large, and sometimes device constants) keep the default of 1, while a model step packs its
block table too (``step_inputs.pack_step_inputs``), so each of its steps makes one transfer.

The layout (:class:`Packing`) depends only on the leaves' shapes and dtypes, which depend only
on the step's buckets, so it is a static argument of the jitted step: one compiled program per
bucket, as before.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Packing:
    """Where each leaf of a pytree went: packed words (small leaves) or the list of big ones.

    Attributes:
        treedef: the pytree's structure.
        packed: for every leaf in order, its ``(shape, dtype name)`` if packed, else ``None``.
    """

    treedef: Any
    packed: tuple[tuple[tuple[int, ...], str] | None, ...]


def pack(tree: Any, max_packed_ndim: int = 1) -> tuple[np.ndarray, list[Any], Packing]:
    """Split ``tree`` into one ``uint32`` buffer of its small leaves and a list of its big ones.

    Small leaves (at most ``max_packed_ndim`` dimensions) must be host (numpy) arrays of a
    32-bit type or bool.

    Returns:
        ``(words, big_leaves, packing)``; :func:`unpack` inverts it.
    """
    leaves, treedef = jax.tree.flatten(tree)
    small, big, layout = [], [], []
    for leaf in leaves:
        if np.ndim(leaf) > max_packed_ndim:
            big.append(leaf)
            layout.append(None)
            continue
        if isinstance(leaf, jax.Array):
            raise TypeError("small step inputs must be host arrays, got a device array")
        arr = np.asarray(leaf)
        name = _packable_dtype_name(arr.dtype)
        layout.append((arr.shape, name))
        small.append(arr.reshape(-1))
    # This runs twice a step on the host's critical path: one preallocated buffer, each leaf
    # copied once (a bool becomes 0/1 on the way).
    buffer = np.empty(sum(a.size for a in small), np.uint32)
    offset = 0
    for arr in small:
        buffer[offset : offset + arr.size] = arr if arr.dtype == np.bool_ else arr.view(np.uint32)
        offset += arr.size
    return buffer, big, Packing(treedef, tuple(layout))


@functools.cache
def _packable_dtype_name(dtype: np.dtype) -> str:
    """``dtype``'s name if it packs into 32-bit words (numpy's ``dtype.name`` is slow)."""
    if dtype != np.bool_ and dtype.itemsize != 4:
        raise TypeError(f"cannot pack {dtype} (32-bit types and bool only)")
    return dtype.name


def unpack(words: jax.Array, big: list[jax.Array], packing: Packing, staged: bool = False) -> Any:
    """Rebuild the pytree from :func:`pack`'s buffer (on the device) and big leaves (traced);
    with ``staged``, from copies of them made by :func:`stage`."""
    if staged:
        words, big = stage(words), [stage(b) for b in big]
    leaves, offset, big_iter = [], 0, iter(big)
    for entry in packing.packed:
        if entry is None:
            leaves.append(next(big_iter))
            continue
        shape, dtype = entry
        size = int(np.prod(shape, dtype=np.int64))
        chunk = words[offset : offset + size]
        offset += size
        if dtype == "bool":
            value = chunk != 0
        else:
            value = jax.lax.bitcast_convert_type(chunk, jnp.dtype(dtype))
        leaves.append(value.reshape(shape))
    return packing.treedef.unflatten(leaves)


def stage(x: jax.Array) -> jax.Array:
    """``x``, copied inside the program: the rest of the program reads the copy.

    A compiled step runs as a recorded CUDA graph, and XLA rewrites, before a launch, the graph
    nodes whose buffers moved since the last run. The packed inputs arrive in a fresh buffer
    every step, read by kernels in every layer (positions, slot mapping, block table). Copied
    first, they are read by one kernel, and the rest read the copy in the program's scratch
    memory, which stays put. On the H100 at batch 1, XLA then re-recorded 2 graph commands a
    run instead of 52, and the update's host time fell from 0.23-0.49 to 0.03-0.06 ms a step
    (docs/performance.md, fifth stop).

    The copy inverts the bits twice, with an optimization barrier between the two inversions:
    no simplification can fold it away, and no fusion can hand the consumers the argument again
    (XLA's GPU compiler drops barriers after fusion; XLA:CPU drops them before, so there the
    copy fuses into its consumers, which costs nothing)."""
    if x.dtype == jnp.bool_:
        return ~jax.lax.optimization_barrier(~x)
    bits = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
    flipped = jax.lax.optimization_barrier(~jax.lax.bitcast_convert_type(x, bits))
    return jax.lax.bitcast_convert_type(~flipped, x.dtype)
