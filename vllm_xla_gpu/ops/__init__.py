"""JAX ops of the backend: the paged-attention metadata and the ``ragged_paged_attention`` op."""
