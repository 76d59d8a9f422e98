"""On-device sampling with vLLM V1's semantics: per-request parameters and a jitted sampler."""
