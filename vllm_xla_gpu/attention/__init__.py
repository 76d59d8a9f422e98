"""vLLM attention backend that bridges vLLM's ``Attention`` layers to the JAX paged-attention op."""
