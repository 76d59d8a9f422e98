"""``ragged_paged_attention`` implementations, one file each, all with the reference's signature."""
