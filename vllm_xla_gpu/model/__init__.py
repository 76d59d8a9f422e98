"""vLLM's PyTorch models run as JAX functions through torchax."""
