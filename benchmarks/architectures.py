"""Published architectures, written as random-weight checkpoints for speed measurements.

Weight values do not change speed, so a benchmark needs only the architecture numbers. Each entry
below copies the published ``config.json`` values of the named model (sources in the comments);
:func:`write_random_checkpoint` saves such a model with random bf16 weights, plus a tokenizer
directory when one is given, without touching a model hub.
"""

from __future__ import annotations

import json
import pathlib
import shutil

ARCHITECTURES: dict[str, dict] = {
    # HuggingFaceTB/SmolLM2-135M-Instruct config.json
    "smollm2-135m": dict(
        model_type="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # meta-llama/Llama-3.2-1B config.json
    "llama-3.2-1b": dict(
        model_type="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
        rope_scaling=dict(
            rope_type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
    # meta-llama/Llama-3.1-8B config.json
    "llama-3.1-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
    # Qwen/Qwen3-0.6B config.json
    "qwen3-0.6b": dict(
        model_type="qwen3",
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
    ),
}


def write_random_checkpoint(
    name: str, path: str | pathlib.Path, tokenizer_dir: str | pathlib.Path | None = None
) -> pathlib.Path:
    """Save architecture ``name`` with random bf16 weights to ``path`` (skipped if written).

    Args:
        name: a key of :data:`ARCHITECTURES`.
        path: output directory.
        tokenizer_dir: optional directory whose tokenizer files are copied beside the weights.
    """
    import torch
    import transformers

    path = pathlib.Path(path)
    # The marker written last, not config.json: write_config_only leaves a directory with a
    # config and no weights (--load-format dummy), which vLLM cannot load otherwise.
    if (path / "random_weights.json").exists():
        return path
    config = transformers.AutoConfig.for_model(**ARCHITECTURES[name])
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    if tokenizer_dir is not None:
        for f in pathlib.Path(tokenizer_dir).glob("tokenizer*"):
            shutil.copy(f, path / f.name)
    (path / "random_weights.json").write_text(json.dumps({"architecture": name}))
    return path


def write_config_only(name: str, path: str | pathlib.Path) -> pathlib.Path:
    """Save only the ``config.json`` of architecture ``name`` to ``path``: enough for vLLM's
    ``load_format="dummy"``, which fills the weights with random values itself (no multi-GB
    checkpoint to write and read for the largest architectures)."""
    import transformers

    path = pathlib.Path(path)
    if not (path / "config.json").exists():
        config = transformers.AutoConfig.for_model(**ARCHITECTURES[name])
        # What save_pretrained of the model would record; without it vLLM resolves the bare
        # backbone (e.g. LlamaModel, a pooling model) instead of the causal LM.
        model_class = transformers.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        config.architectures = [model_class.__name__]
        config.save_pretrained(path)
    return path


def _numbers(arch: str | dict) -> dict:
    """The config numbers of ``arch``: a key of :data:`ARCHITECTURES` or a ``config.json`` dict."""
    a = dict(ARCHITECTURES[arch]) if isinstance(arch, str) else dict(arch)
    a.setdefault("head_dim", a["hidden_size"] // a["num_attention_heads"])
    a.setdefault("num_key_value_heads", a["num_attention_heads"])
    return a


def weight_bytes(arch: str | dict, dtype_bytes: int = 2) -> int:
    """Bytes of weights read by one decode step (embedding row reads excluded).

    Args:
        arch: a key of :data:`ARCHITECTURES`, or a checkpoint's ``config.json`` as a dict.
        dtype_bytes: bytes per weight element (2 for bf16, 4 for float32).
    """
    a = _numbers(arch)
    h, i, n = a["hidden_size"], a["intermediate_size"], a["num_hidden_layers"]
    d = a["head_dim"]
    attn = h * d * (a["num_attention_heads"] * 2 + a["num_key_value_heads"] * 2)
    per_layer = attn + 3 * h * i + 2 * h
    # The LM head is read in full every step, tied to the embedding or not.
    lm_head = a["vocab_size"] * h
    return dtype_bytes * (n * per_layer + lm_head + h)


def kv_bytes_per_token(arch: str | dict, dtype_bytes: int = 2) -> int:
    """Bytes of K and V stored per token over all layers (same ``arch`` forms as above)."""
    a = _numbers(arch)
    return dtype_bytes * 2 * a["num_hidden_layers"] * a["num_key_value_heads"] * a["head_dim"]
