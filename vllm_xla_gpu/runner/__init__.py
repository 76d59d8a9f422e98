"""The model runner: persistent batch, shape buckets, compiled step and sampler."""
