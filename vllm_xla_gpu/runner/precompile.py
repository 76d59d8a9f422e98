"""Start-up compilation of the step programs: lowered one at a time, compiled in parallel.

:class:`PrecompileMixin` is the runner's start-up part (a mixin, like
``runner/request_states.py``): it compiles every bucket's program before serving and runs each
once, then arms the compile guard (DESIGN.md §4).

Each program costs
two things: *lowering* (tracing vLLM's model through torchax into a jaxpr, then StableHLO) and
XLA's *compilation* of the lowered module. Lowering must stay on one thread: it runs vLLM's model
code under process-wide state (vLLM's forward context and current config, torchax's
environment). Compilation is XLA's own work in C++, which releases the GIL, so the lowered
modules compile side by side in a thread pool.

Programs are lowered against the shapes of the arrays they will take (``ShapeDtypeStruct`` with
the device's sharding, so the KV caches need not exist yet), and a jitted function called later
with arrays of those shapes reuses what ``.lower(...).compile()`` built (jit caches the lowering
and the lowering keeps its executable), so the warm-up runs that follow compile nothing.
:class:`WarmUpCall` pairs a jitted function with the arguments of its warm-up run, so that the
lowering and the run cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import jax
import numpy as np
from jax.experimental.serialize_executable import deserialize_and_load, serialize
from tqdm import tqdm
from vllm.logger import init_logger

from vllm_xla_gpu.runner.compile_guard import CompileCounter
from vllm_xla_gpu.runner.step_inputs import dummy_step_inputs, pack_step_inputs
from vllm_xla_gpu.runner.transfer import pack
from vllm_xla_gpu.sample.metadata import SamplingInputs, SamplingMetadata, TokenHistory

logger = init_logger("vllm." + __name__)  # under "vllm": vLLM configures that logger


@dataclasses.dataclass
class WarmUpCall:
    """One program to compile ahead: a jitted function and the arguments it will run with.

    Attributes:
        fn: the ``jax.jit``-wrapped function.
        args: its positional arguments (static ones included, as in the call).
    """

    fn: Any
    args: tuple

    def run(self) -> Any:
        """Call the function with the recorded arguments (compiled ahead: a cache hit)."""
        return self.fn(*self.args)


def lower_ahead(calls: Sequence[WarmUpCall]) -> list:
    """Lower ``calls`` one by one, on this thread (tracing runs vLLM's model code)."""
    return [call.fn.lower(*call.args) for call in calls]


def compile_lowered(lowered: Sequence, threads: int, on_compiled: Callable[[], None]) -> None:
    """Compile lowered programs on ``threads`` threads (1: in order), calling ``on_compiled``
    after each (progress bars); a compilation error is raised here."""
    if threads <= 1:
        for program in lowered:
            program.compile()
            on_compiled()
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xla-compile") as pool:
        for future in as_completed([pool.submit(program.compile) for program in lowered]):
            future.result()  # re-raises a compilation error here
            on_compiled()


def loaded_copies(compiled: Any, n: int, device: jax.Device) -> list:
    """``compiled`` and ``n - 1`` more loaded copies of it on ``device`` (each a
    ``jax.stages.Compiled``).

    XLA runs a GPU program as a CUDA graph that belongs to its loaded executable. vLLM's engine
    keeps two or three steps in flight, so step N+1 is launched while step N still runs, and
    with one executable per bucket the launch updates and relaunches the very graph that is
    running.
    A copy is the same binary loaded again (serialized and deserialized, as JAX's persistent
    cache does: nothing compiles), with a graph of its own; the runner takes the copies in
    turn, so a launch's graph last ran ``n`` steps back, idle once ``n`` is at least the steps
    in flight. Where the executable cannot be serialized the one copy is used alone.

    Measured on an H100 (docs/performance.md, 2026-11-28): back to back, a 512-kernel program's
    call took 1.01 ms of host time with one copy and 0.38 ms with two, but in serving Llama-3.2-1B
    at batch 1 the jitted call fell only from 1.21 to 1.12 ms and the step time not at all, so
    the runner loads one copy unless ``VLLM_XLA_GPU_MODEL_STEP_COPIES`` asks for more."""
    copies = [compiled]
    for _ in range(n - 1):
        try:
            payload, in_tree, out_tree = serialize(compiled)
        except (ValueError, NotImplementedError) as e:
            logger.warning("model step not copied (%s): one executable per bucket", e)
            break
        copies.append(deserialize_and_load(payload, in_tree, out_tree, device.client, [device]))
    return copies


class PrecompileMixin:
    """Start-up compilation of ``XlaGpuModelRunner`` (see the module docstring)."""

    def precompile(self) -> float:
        """Compile ``model_step`` for every token bucket, ``sample_step`` for every request
        bucket and ``prompt_logprobs_step`` for every token bucket, with a progress bar; then
        allocate the KV caches (and the logits buffer), run each program once and arm the
        compile guard. Returns the seconds spent.

        Every program compiles before the KV caches exist: XLA's GPU autotuner runs candidate
        kernels on buffers of its own, one set per compilation in flight, and a cache that
        fills the device leaves it no room (the real SmolLM2 at 16 sequences ran out of memory
        that way on the H100). Programs are lowered one at a time, against the caches' and the
        model step's output shapes, and compiled on ``compile_threads`` threads."""
        start = time.perf_counter()
        self.warm_up_recompiles = 0
        # Where start-up compilation goes (seconds): tracing and lowering on one thread, XLA
        # (or JAX's persistent cache) on several, and one run of each program.
        split = dict(lower=0.0, compile=0.0, warm_up_runs=0.0)
        if not self.config.precompile:
            self.allocate_kv_caches()
        else:
            total = 2 * len(self.token_buckets) + len(self.request_buckets)
            with tqdm(total=total, desc="Compiling XLA buckets", unit="program") as bar:
                model_calls = [self._model_step_call(n) for n in self.token_buckets]
                lowered = lower_ahead(model_calls)
                outputs = [self._committed_shapes(program.out_info)[1] for program in lowered]
                lowered += lower_ahead(self._sampler_calls(outputs))
                lowered_at = time.perf_counter()
                compile_lowered(lowered, self.compile_threads(), bar.update)
                # XLA:CPU runs no CUDA graphs (and its executables do not round-trip). The
                # model steps are the first ``len(model_calls)`` lowered programs; ``compile``
                # hands back the executable ``compile_lowered`` made (a lowering keeps it).
                copies = self.config.model_step_copies if self.device.platform == "gpu" else 1
                self._model_step_programs = {
                    call.args[-1]: loaded_copies(program.compile(), copies, self.device)
                    for call, program in zip(model_calls, lowered, strict=False)
                }
                del lowered
                split["lower"] = lowered_at - start
                split["compile"] = time.perf_counter() - lowered_at
            self.allocate_kv_caches()
            outputs = self._run_warm_ups(model_calls, split)
            self._run_warm_ups(self._sampler_calls(outputs), split)
            del outputs
            if self.warm_up_recompiles:
                logger.warning(
                    "%d programs compiled again at their warm-up run", self.warm_up_recompiles
                )
        self.compile_guard.mark_warmed_up()
        self.compile_seconds = time.perf_counter() - start
        self.compile_split_seconds = split
        logger.info(
            "Compiled %d token buckets %s and %d request buckets %s in %.1f s "
            "(lowering %.1f s, XLA or its cache %.1f s, warm-up runs %.1f s)",
            len(self.token_buckets),
            self.token_buckets,
            len(self.request_buckets),
            self.request_buckets,
            self.compile_seconds,
            split["lower"],
            split["compile"],
            split["warm_up_runs"],
        )
        return self.compile_seconds

    def compile_threads(self) -> int:
        """Compilations in flight at start-up: ``VLLM_XLA_GPU_COMPILE_THREADS``, else up to 4.

        On an H100 (Llama-3.1-8B, 26 programs, fresh caches, 2026-11-27) 4 threads took the
        compile share of a cold start from 108.6 s to 63.5 s and of a warm start from 31.7 s to
        20.7 s, with batch-1 decode unchanged (6.42 / 6.47 ms per token): XLA's kernel
        autotuning side by side on one device did not pick slower kernels there."""
        if self.config.compile_threads:
            return self.config.compile_threads
        return min(4, os.cpu_count() or 1)

    def _run_warm_ups(self, calls: list[WarmUpCall], split: dict[str, float]) -> list:
        """Run each compiled-ahead call once, in order; count compilations they still needed
        (and add the seconds to ``split["warm_up_runs"]``).

        The model steps donate the KV caches and the logits buffer, so each takes those the
        previous returned; their results are the ``ModelStepOutput`` parts. Each loaded copy
        of a model step runs once (its first run records its CUDA graph)."""
        start = time.perf_counter()
        before = CompileCounter.compiles
        outputs = []
        for call in calls:
            if call.fn is self._model_step:
                for _ in self._model_step_programs[call.args[-1]]:
                    out = self._call_model_step(*call.args[3:])
            else:
                out = call.run()
            outputs.append(jax.block_until_ready(out))
        self.warm_up_recompiles += CompileCounter.compiles - before
        split["warm_up_runs"] += time.perf_counter() - start
        return outputs

    def _model_step_call(self, num_tokens: int) -> WarmUpCall:
        # Lowered against the caches' shapes; its warm-up run takes the allocated caches.
        inputs = dummy_step_inputs(num_tokens, self.max_num_reqs, self.max_blocks_per_req)
        args = (self.param_leaves, self.kv_caches, self.logits_buffer, self._no_prev_sampled)
        args += tuple(pack_step_inputs(inputs))
        return WarmUpCall(self._model_step, args)

    def _committed_shapes(self, out_info: Any) -> Any:
        """Output shapes as the arrays the runs will hand over: committed to the device (jit
        keys its cache on that, and a lowering's ``out_info`` does not say so)."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.sharding), out_info
        )

    def _sampler_calls(self, model_outputs: list) -> list[WarmUpCall]:
        """The programs that take a model step's outputs (``ModelStepOutput``): the sampler per
        request bucket, on the logits, and prompt logprobs per token bucket, on ``hidden_all``.
        ``model_outputs`` holds each token bucket's outputs, or their shapes to lower."""
        logits = model_outputs[-1].logits
        calls = [self._sample_step_call(logits, n) for n in self.request_buckets]
        calls += [self._prompt_logprobs_call(out.hidden_all) for out in model_outputs]
        return calls

    def _sample_step_call(self, logits, num_reqs: int) -> WarmUpCall:
        md = idle_metadata(self.sampling_inputs, num_reqs)
        return WarmUpCall(self._sample_step, (logits, *pack(md)))

    def _prompt_logprobs_call(self, hidden_all) -> WarmUpCall:
        # numpy targets, as in serving: one program for both
        targets = np.zeros(hidden_all.shape[0], np.int32)
        return WarmUpCall(self._prompt_logprobs_step, (self.logits_params, hidden_all, targets))


def idle_metadata(inputs: SamplingInputs, num_reqs_padded: int) -> SamplingMetadata:
    """Sampling metadata of a step without requests (warm-up and memory analysis)."""
    empty = np.zeros(0, np.int32)
    history = TokenHistory(np.zeros((0, inputs.max_model_len), np.int32), empty, empty)
    return inputs.to_metadata(empty, history, num_reqs_padded)
