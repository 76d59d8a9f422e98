"""References for the sampling-parity tests: vLLM's logits-processor formulas in numpy, Hugging
Face logits of the tiny models, and a tiny byte-level BPE tokenizer so that options that need
text (bad words, stop strings, structured output) run on the tiny checkpoints.

The numpy functions follow vLLM 0.32's torch code line by line in meaning (not in code):
``vllm/v1/sample/sampler.py`` (order), ``model_executor/layers/utils.py`` ``apply_penalties``,
``_custom_ops.apply_repetition_penalties_torch``, ``v1/sample/ops/bad_words.py`` and
``v1/sample/logits_processor/builtin.py`` (min-tokens, logit bias).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2: the tiny configs' bos 1 and eos 2


def write_tokenizer(path: pathlib.Path, vocab_size: int) -> None:
    """Train a byte-level BPE tokenizer of at most ``vocab_size`` tokens and save it to ``path``
    (the model's checkpoint directory), with eos ``</s>`` = 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(letters, rng.integers(2, 8))) for _ in range(400)]
    words += "the quick brown fox jumps over a lazy dog red green blue true false".split()
    corpus = [" ".join(rng.choice(words, 12)) for _ in range(600)]
    corpus += [json.dumps({"color": str(rng.choice(words)), "ok": bool(b)}) for b in range(50)]
    tokenizer.train_from_iterator(corpus, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(path)


class HfModel:
    """Hugging Face transformers on the same checkpoint, float32: logits of any token sequence."""

    def __init__(self, path: pathlib.Path) -> None:
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32
        ).eval()

    def logits(self, token_ids: list[int]) -> np.ndarray:  # f32[len(token_ids), vocab]
        with torch.no_grad():
            return self.model(torch.tensor([token_ids])).logits[0].numpy()

    def log_softmax(self, token_ids: list[int]) -> np.ndarray:  # f32[len, vocab]
        with torch.no_grad():
            logits = self.model(torch.tensor([token_ids])).logits[0]
            return torch.log_softmax(logits, dim=-1).numpy()


def apply_penalties(
    logits: np.ndarray,  # f32[vocab]
    prompt: list[int],
    output: list[int],
    presence: float,
    frequency: float,
    repetition: float,
) -> np.ndarray:
    """vLLM's penalties on one row: repetition on prompt-or-output tokens (divide positive
    logits, multiply the others), then frequency times the output count, presence once."""
    vocab = logits.shape[-1]
    counts = np.bincount(np.asarray(output, np.int64), minlength=vocab)[:vocab]
    in_prompt = np.bincount(np.asarray(prompt, np.int64), minlength=vocab)[:vocab] > 0
    seen = in_prompt | (counts > 0)
    penalty = np.where(seen, np.float32(repetition), np.float32(1.0))
    out = np.where(logits > 0, logits / penalty, logits * penalty).astype(np.float32)
    out = out - np.float32(frequency) * counts
    return (out - np.float32(presence) * (counts > 0)).astype(np.float32)


def process_logits(
    logits: np.ndarray,  # f32[vocab] raw logits at the position to sample
    prompt: list[int],
    output: list[int],
    *,
    allowed_token_ids: list[int] | None = None,
    bad_words_token_ids: list[list[int]] = (),
    min_tokens: int = 0,
    stop_token_ids: list[int] = (),
    logit_bias: dict[int, float] | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    repetition_penalty: float = 1.0,
) -> np.ndarray:
    """vLLM's ``apply_logits_processors`` for one request, in vLLM's order."""
    x = logits.astype(np.float32).copy()
    if allowed_token_ids is not None:
        keep = np.zeros(x.shape, bool)
        keep[allowed_token_ids] = True
        x[~keep] = -np.inf
    for word in bad_words_token_ids:
        prefix = list(word[:-1])
        if len(prefix) <= len(output) and (not prefix or list(output[-len(prefix) :]) == prefix):
            x[word[-1]] = -np.inf
    if len(output) < min_tokens:
        x[list(stop_token_ids)] = -np.inf
    for token, bias in (logit_bias or {}).items():
        x[token] += np.float32(bias)
    return apply_penalties(
        x, prompt, output, presence_penalty, frequency_penalty, repetition_penalty
    )


def greedy_with_processors(hf: HfModel, prompt: list[int], max_tokens: int, **options) -> list[int]:
    """Greedy decoding where each step's Hugging Face logits go through
    :func:`process_logits` first."""
    output: list[int] = []
    for _ in range(max_tokens):
        logits = hf.logits(prompt + output)[-1]
        output.append(int(np.argmax(process_logits(logits, prompt, output, **options))))
    return output
