"""Tiny random-weight checkpoints of real architectures, written by the tests themselves.

Each is a transformers config small enough for XLA:CPU (2 layers, hidden 64, GQA) saved with
``save_pretrained``; vLLM loads the directory like any checkpoint, and Hugging Face transformers
on the same directory is the reference.
"""

from __future__ import annotations

import pathlib

import torch
import transformers

COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, rope_theta=10000.0),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, rope_theta=10000.0),
    "qwen3": lambda: transformers.Qwen3Config(
        **{**COMMON, "tie_word_embeddings": True}, head_dim=16, rope_theta=10000.0
    ),
}


def write_tiny_checkpoint(arch: str, path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Save a random-weight ``arch`` model (float32) to ``path`` and return it."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init with std 0.02 gives near-uniform logits; widen it so greedy choices are
    # decisive (ties would make token-exact comparison meaningless).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.1)
    model.save_pretrained(path)
    return path


def hf_greedy(path: pathlib.Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy continuation of each prompt by Hugging Face transformers in float32."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = model.generate(
                ids,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            outputs.append(out[0, len(prompt) :].tolist())
    return outputs
