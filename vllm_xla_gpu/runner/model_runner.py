"""``XlaGpuModelRunner``: turns vLLM's ``SchedulerOutput`` into compiled XLA steps.

Per step (DESIGN.md §4)::

    SchedulerOutput -> _update_states (persistent numpy batch)
                    -> prepare_step_inputs (pad to a token bucket) -> one packed transfer
                    -> model_step(params, kv_caches[donated], logits[donated], inputs)
                         # vLLM's model via torchax, its logits and their argmax
                    -> sample_step(logits, sampling_metadata)   # the sampler, unless every
                         # request is plain greedy: then the model step's argmax is the token
                    -> tokens (and logprobs) to host -> ModelRunnerOutput

Under vLLM's async scheduling the last arrow waits: ``sample_tokens`` returns an
``AsyncModelRunnerOutput``, and the next step reads the tokens it needs from the previous step's
sampled ids on the device (``runner/async_output.py``). The model and sample steps are started
through a ``Launcher`` (``runner/launch.py``): in order from one launch thread while the runner
returns to vLLM (the default), or at once with ``VLLM_XLA_GPU_LAUNCH_THREAD=0``.

Three jitted programs, each compiled once per bucket at start-up by :meth:`precompile`:
``model_step`` per *token* bucket (per-request metadata has ``min(bucket, max_num_seqs)`` rows, so
it does not depend on the request count), ``sample_step`` per *request* bucket (every sampling
option, structured output and logprobs are data of fixed shapes: ``sample/metadata.py``), and
``prompt_logprobs_step`` per token bucket, run only in steps where a request wants prompt logprobs.
The model step ends with the LM head: it writes each request's logits into a ``[max_num_seqs,
vocab]`` buffer (donated through every step, so only the rows computed are written) and takes their
argmax. A step whose every request is plain greedy (vLLM's all-greedy shortcut, chosen on the host)
takes that argmax as its tokens and launches no sampler: one program per step. On an H200 that
raised 128/128 at 1024 prompts by 10-37% over a separate argmax program, with batch 1 unchanged
beyond the spread (docs/performance.md, 2026-11-28). The runner owns the model parameters, the
per-layer KV caches, the logits buffer, the persistent batch and the compile guard that proves
serving compiles nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torchax
from torchax.ops.mappings import t2j_dtype
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.config.vllm import get_layers_from_vllm_config
from vllm.forward_context import set_forward_context
from vllm.logger import init_logger
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.model_executor.model_loader import get_model
from vllm.utils.math_utils import cdiv
from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheConfig, KVCacheSpec
from vllm.v1.outputs import (
    EMPTY_MODEL_RUNNER_OUTPUT,
    AsyncModelRunnerOutput,
    LogprobsTensors,
    ModelRunnerOutput,
)

from vllm_xla_gpu.attention.backend import XlaGpuAttentionMetadata
from vllm_xla_gpu.config import XlaGpuConfig
from vllm_xla_gpu.model.custom_ops import register_custom_ops
from vllm_xla_gpu.model.dummy_weights import (
    dummy_params,
    load_dummy_model,
    uses_device_dummy_weights,
)
from vllm_xla_gpu.model.torchax_model import TorchaxModel, extract_params, params_read_by
from vllm_xla_gpu.ops.ragged_paged_attention.registry import resolve as resolve_attention_impl
from vllm_xla_gpu.ops.torch_op import register_torch_op
from vllm_xla_gpu.runner.async_output import (
    AsyncXlaModelRunnerOutput,
    Placeholders,
    PrevSampled,
    start_copies_to_host,
)
from vllm_xla_gpu.runner.buckets import pad_to_bucket, power_of_two_buckets, token_buckets
from vllm_xla_gpu.runner.compile_guard import CompileGuard
from vllm_xla_gpu.runner.input_batch import InputBatch, RequestState
from vllm_xla_gpu.runner.launch import Launched, Launcher, ready
from vllm_xla_gpu.runner.precompile import PrecompileMixin, idle_metadata
from vllm_xla_gpu.runner.request_states import RequestStatesMixin
from vllm_xla_gpu.runner.step_inputs import (
    StepInputs,
    dummy_step_inputs,
    pack_step_inputs,
    prepare_step_inputs,
)
from vllm_xla_gpu.runner.transfer import Packing, pack, unpack
from vllm_xla_gpu.sample.logprobs import TopLogprobs
from vllm_xla_gpu.sample.metadata import SamplingInputs, SamplingMetadata, TokenHistory
from vllm_xla_gpu.sample.prompt_logprobs import PromptLogprobsState, prompt_top_logprobs
from vllm_xla_gpu.sample.sampler import SamplerOutput, sample
from vllm_xla_gpu.sample.token_masks import ordered_grammar_bitmask

logger = init_logger("vllm." + __name__)  # under "vllm": vLLM configures that logger

MIN_REQUEST_BUCKET = 8


class ModelStepOutput(NamedTuple):
    """What a model step hands to sampling (its updated KV caches stay with the runner).

    Attributes:
        logits: [max_num_seqs, vocab] in the model's dtype; rows ``:min(num_tokens,
            max_num_seqs)`` hold this step's logits at each request's last token.
        greedy_ids: i32[max_num_seqs] the argmax of each of those rows (zeros beyond them).
        hidden_all: [num_tokens_padded, hidden_size] every token's hidden state (read only for
            prompt logprobs).
    """

    logits: jax.Array
    greedy_ids: jax.Array
    hidden_all: jax.Array


@dataclasses.dataclass
class _PendingStep:
    """What ``execute_model`` leaves for ``sample_tokens``."""

    req_ids: list[str]
    rows: np.ndarray  # i32[num_reqs]
    num_scheduled: np.ndarray  # i32[num_reqs]
    # The model step's outputs but the caches, maybe still being launched (runner/launch.py).
    model_out: Launched  # of ModelStepOutput


class XlaGpuModelRunner(PrecompileMixin, RequestStatesMixin):
    """Persistent batch, shape buckets, compiled step and sampler for one JAX device.

    Args:
        vllm_config: vLLM's configuration.
        config: this backend's configuration.
        device: the JAX device every array lives on.
    """

    def __init__(self, vllm_config: VllmConfig, config: XlaGpuConfig, device: jax.Device) -> None:
        self.vllm_config = vllm_config
        self.config = config
        self.device = device
        # Where every array lives; jit keys its cache on arrays' shardings, so the shapes that
        # programs are lowered against carry it too.
        self.sharding = jax.sharding.SingleDeviceSharding(device)
        self.max_num_reqs = config.max_num_seqs
        self.token_buckets = token_buckets(
            config.min_token_bucket, config.max_num_batched_tokens, config.bucket_padding_gap
        )
        self.request_buckets = power_of_two_buckets(MIN_REQUEST_BUCKET, self.max_num_reqs)
        self.attention_impl = resolve_attention_impl(config.attention_impl, device.platform)
        register_torch_op()
        register_custom_ops()  # before the model is built: vLLM picks the class then
        # Which way vLLM's scheduler hands back preempted requests (vllm_xla_gpu/__init__.py).
        protocol = "V2" if vllm_config.use_v2_model_runner else "V1"
        logger.info("vLLM scheduler protocol: %s (VLLM_USE_V2_MODEL_RUNNER)", protocol)
        self.requests: dict[str, RequestState] = {}
        self.compile_guard = CompileGuard()
        # Inputs arrive packed (runner/transfer.py); their layout is the static last argument.
        self._model_step = jax.jit(self._model_step_fn, donate_argnums=(1, 2), static_argnums=(6,))
        # Each token bucket's model step, loaded ``model_step_copies`` times, keyed by its
        # static input layout; launches take the copies in turn (runner/precompile.py).
        self._model_step_programs: dict[Packing, list] = {}
        self._num_model_step_calls = 0
        self._sample_step = jax.jit(self._sample_step_fn, static_argnums=(3,))
        self._prompt_logprobs_step = jax.jit(self._prompt_logprobs_fn)
        # Every serving call of the jitted steps goes through here, in order (runner/launch.py).
        self.launcher = Launcher(config.launch_thread, config.switch_interval_s)
        self.prompt_logprobs = PromptLogprobsState()
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self._pending: _PendingStep | None = None
        self._seed_rng = np.random.default_rng(vllm_config.model_config.seed)
        # Async scheduling (runner/async_output.py): the last step's sampled ids on the device,
        # the outputs vLLM has not collected yet, and the requests whose sampling reads the
        # token history (penalties, bad words), which must be resolved before they sample.
        self.async_scheduling = bool(vllm_config.scheduler_config.async_scheduling)
        self._prev_sampled: PrevSampled | None = None
        self._unresolved: list[AsyncXlaModelRunnerOutput] = []
        self._history_req_ids: set[str] = set()
        # Steps whose input tokens came from the device, and host waits for an output vLLM had
        # not collected yet (before penalties, or a fallback): tests and benchmarks read them.
        self.num_steps_with_device_tokens = 0
        self.num_greedy_steps = 0  # steps whose tokens are the model step's argmax
        self.num_early_resolves = 0
        self.num_resumed_as_new = 0  # preempted requests sent back by vLLM's V2 protocol
        # Seconds the host spent waiting for sampled tokens, over how many outputs: near the
        # device's step time means the host keeps up; near zero means the host is the limit.
        self.token_wait_seconds = 0.0
        self.num_resolved_outputs = 0
        # Most outputs vLLM had yet to collect at once (its batch queue's depth, when full).
        self.max_steps_in_flight = 0
        # Host seconds from a step's tokens reaching the host to the launch of the next step
        # scheduled after them (``launch_chain_seconds``), over how many such steps. Under
        # async scheduling vLLM schedules step N+2 only once step N's tokens are in, while N+1
        # runs: when this chain C is longer than the device's step D, a step takes about
        # (C + D) / 2 (docs/performance.md, "Why batch 1 sits near 1.6 ms"). Kept in four
        # links: vLLM's engine (collecting the output, updating and scheduling), the runner's
        # input preparation, the handoff to the launch thread (until it starts the call), and
        # the jitted call up to its return.
        self.num_launch_chains = 0
        self.launch_chain_split_seconds = {
            "engine": 0.0,
            "runner": 0.0,
            "handoff": 0.0,
            "call": 0.0,
        }
        self._tokens_arrived_at: float | None = None

    # ---- start-up -------------------------------------------------------------------------

    def load_model(self) -> None:
        """Build vLLM's torch model on the host, then move its weights to the device (dummy
        weights are drawn there: ``model/dummy_weights.py``)."""
        start = time.perf_counter()
        with set_current_vllm_config(self.vllm_config):
            if uses_device_dummy_weights(self.vllm_config):
                torch_model, deferred = load_dummy_model(self.vllm_config)
                seed = self.vllm_config.model_config.seed or 0
                self.params = dummy_params(torch_model, deferred, self.device, seed)
            else:
                torch_model = get_model(vllm_config=self.vllm_config).eval()
                self.params = extract_params(torch_model, self.device)
        # vLLM's engine expects ``model_runner.model`` to be the torch module.
        self.model = torch_model
        self.jax_model = TorchaxModel(torch_model)
        jax.block_until_ready(self.params)
        # The model step takes the weights as a flat tuple: a dict of them is flattened, its
        # keys sorted, at every call (about 0.1 us an array on the host, docs/performance.md).
        leaves, self.params_treedef = jax.tree.flatten(self.params)
        self.param_leaves = tuple(leaves)
        # Prompt logprobs compute logits only: hand them the LM head's arrays, not the whole
        # model (host time per call grows with the arrays handed over).
        model_config = self.vllm_config.model_config
        hidden = jax.ShapeDtypeStruct(
            (self.max_num_reqs, model_config.get_hidden_size()), t2j_dtype(model_config.dtype)
        )
        self.logits_params = params_read_by(self._compute_logits, self.params, hidden)
        # The model step writes each request's logits into this buffer: only its shape until
        # ``allocate_kv_caches`` (the KV budget and every program are sized against it first).
        logits = jax.eval_shape(self._logits, self.logits_params, hidden)
        self.logits_buffer = jax.ShapeDtypeStruct(
            logits.shape, logits.dtype, sharding=self.sharding
        )
        self.load_seconds = time.perf_counter() - start
        logger.info("Model loaded onto %s in %.1f s", self.device, self.load_seconds)

    def get_kv_cache_spec(self) -> dict[str, KVCacheSpec]:
        """KV-cache spec of every attention layer, as vLLM's GPU runner reports it."""
        layers = get_layers_from_vllm_config(self.vllm_config, AttentionLayerBase)
        specs = {name: layer.get_kv_cache_spec(self.vllm_config) for name, layer in layers.items()}
        return {name: spec for name, spec in specs.items() if spec is not None}

    def initialize_kv_cache(self, kv_cache_config: KVCacheConfig) -> None:
        """Allocate one ``[2, num_blocks, block_size, Hkv, D]`` array per attention layer."""
        if len(kv_cache_config.kv_cache_groups) != 1:
            raise NotImplementedError(
                "The XLA backend supports one KV-cache group (uniform attention) for now; this "
                f"model needs {len(kv_cache_config.kv_cache_groups)} (e.g. mixed sliding window)."
            )
        group = kv_cache_config.kv_cache_groups[0]
        spec: AttentionSpec = group.kv_cache_spec
        self.block_size = spec.block_size
        num_blocks = kv_cache_config.num_blocks
        # Only their shapes until ``precompile`` has compiled every program against them
        # (``allocate_kv_caches``).
        shape, dtype = _kv_cache_shape(spec, num_blocks), t2j_dtype(spec.dtype)
        self.kv_caches = {
            name: jax.ShapeDtypeStruct(shape, dtype, sharding=self.sharding)
            for name in group.layer_names
        }
        self.kv_cache_block_bytes = spec.page_size_bytes
        self.max_blocks_per_req = cdiv(self.config.max_model_len, self.block_size)
        self.batch = InputBatch(
            self.max_num_reqs, self.config.max_model_len, self.max_blocks_per_req
        )
        self.sampling_inputs = self._new_sampling_inputs()
        # The model step's previous-sampled input when no token comes from the device.
        self._no_prev_sampled = jax.device_put(np.zeros(self.max_num_reqs, np.int32), self.device)
        logger.info(
            "KV cache: %d layers x %s (%.2f GiB)",
            len(self.kv_caches),
            _kv_cache_shape(spec, num_blocks),
            len(self.kv_caches) * num_blocks * spec.page_size_bytes / 2**30,
        )

    def allocate_kv_caches(self) -> None:
        """Replace the caches' and the logits buffer's shapes (``initialize_kv_cache``) with
        zeroed arrays."""
        zeros = _zeros_fn(next(iter(self.kv_caches.values())))  # every layer's has one shape
        self.kv_caches = {name: zeros() for name in self.kv_caches}
        self.logits_buffer = _zeros_fn(self.logits_buffer)()

    def step_scratch_bytes(self) -> int:
        """Device memory the largest steps need besides weights and KV cache.

        XLA's memory analysis of the largest token bucket's ``model_step`` and
        ``prompt_logprobs_step`` and the largest request bucket's ``sample_step``, compiled
        against a one-page KV cache (the cache size does not change their scratch), plus the
        logits buffer. Used to size the KV cache on a GPU. XLA's GPU autotuner needs memory as
        well, but only while programs compile, which ``precompile`` does before it allocates
        the cache.
        """
        start = time.perf_counter()
        specs = self.get_kv_cache_spec()
        spec = next(iter(specs.values()))
        sharding = self.sharding
        kv = {
            name: jax.ShapeDtypeStruct(_kv_cache_shape(s, 1), t2j_dtype(s.dtype), sharding=sharding)
            for name, s in specs.items()
        }
        max_blocks = cdiv(self.config.max_model_len, spec.block_size)
        inputs = dummy_step_inputs(self.token_buckets[-1], self.max_num_reqs, max_blocks)
        prev = jax.ShapeDtypeStruct((self.max_num_reqs,), jnp.int32, sharding=sharding)
        logits = self.logits_buffer  # its shape, before allocate_kv_caches
        packed = pack_step_inputs(inputs)
        model_step = self._model_step.lower(self.param_leaves, kv, logits, prev, *packed)
        md = idle_metadata(self._new_sampling_inputs(), self.request_buckets[-1])
        sample_step = self._sample_step.lower(logits, *pack(md))
        hidden_all = model_step.out_info[1].hidden_all
        targets = jax.ShapeDtypeStruct((hidden_all.shape[0],), jnp.int32, sharding=sharding)
        prompt_step = self._prompt_logprobs_step.lower(self.logits_params, hidden_all, targets)
        programs = (model_step, sample_step, prompt_step)
        logits_bytes = logits.size * logits.dtype.itemsize
        scratch = sum(_scratch(lowered) for lowered in programs) + logits_bytes
        self.scratch_seconds = time.perf_counter() - start  # start-up split (benchmarks)
        return scratch

    # ---- per step -------------------------------------------------------------------------

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        """Run the model on the scheduled tokens; keep its logits for sampling."""
        entered_at = time.perf_counter()
        self._update_states(scheduler_output)
        if scheduler_output.total_num_scheduled_tokens == 0:
            return EMPTY_MODEL_RUNNER_OUTPUT
        req_ids = list(scheduler_output.num_scheduled_tokens)
        rows = np.array([self.batch.req_id_to_row[r] for r in req_ids], np.int32)
        num_scheduled = np.array(
            [scheduler_output.num_scheduled_tokens[r] for r in req_ids], np.int32
        )
        num_tokens = pad_to_bucket(int(num_scheduled.sum()), self.token_buckets)
        inputs = prepare_step_inputs(self.batch, rows, num_scheduled, num_tokens, self.block_size)
        prev_sampled = self._link_prev_sampled(inputs, req_ids, rows, num_scheduled)
        arrived, self._tokens_arrived_at = self._tokens_arrived_at, None
        words, big, packing = pack_step_inputs(inputs)
        chain = None if arrived is None else (arrived, entered_at, time.perf_counter())
        model_out = self.launcher.submit(
            self._launch_model_step, chain, prev_sampled, words, big, packing
        )
        self._pending = _PendingStep(req_ids, rows, num_scheduled, model_out)
        return None

    def sample_tokens(
        self, grammar_output: GrammarOutput | None
    ) -> ModelRunnerOutput | AsyncModelRunnerOutput:
        """Sample one token per request that finished its prompt (under the grammar bitmask
        of structured-output requests); build vLLM's output with the logprobs asked for.

        Under async scheduling the output is returned before its tokens reach the host."""
        step, self._pending = self._pending, None
        num_reqs = len(step.req_ids)
        if not self._history_req_ids.isdisjoint(step.req_ids):
            # Penalties and bad words read the real tokens: wait for the previous step's
            # (vLLM's GPU runner syncs at the same point, update_async_output_token_ids).
            self._resolve_outputs()
        history = TokenHistory(
            self.batch.token_ids, self.batch.num_prompt_tokens, self.batch.num_tokens
        )
        bitmask = ordered_grammar_bitmask(grammar_output, step.req_ids, self.vocab_size)
        num_reqs_padded = pad_to_bucket(num_reqs, self.request_buckets)
        num_logprobs = self.sampling_inputs.num_logprobs[step.rows]
        want_logprobs = bool(num_reqs and num_logprobs.max() >= 0)
        if bitmask is None and self.sampling_inputs.plain_greedy(step.rows):
            # The model step's argmax is what the sampler would pick: no program to launch.
            self.num_greedy_steps += 1
            sampled_out = self.launcher.submit(_greedy_output, step.model_out)
        else:
            md = self.sampling_inputs.to_metadata(step.rows, history, num_reqs_padded, bitmask)
            sampled_out = self.launcher.submit(
                self._launch_sampler, want_logprobs, step.model_out, *pack(md)
            )
        prompt_logprobs = self._prompt_logprobs(step)
        sampled, placeholders = self._add_placeholders(step)
        # The requests that sampled, each with its row in the step's sampled ids.
        prev_rows = dict(zip(placeholders.req_ids, placeholders.step_rows, strict=True))
        self._prev_sampled = PrevSampled(sampled_out.part(1), prev_rows)
        output = AsyncXlaModelRunnerOutput(
            step.req_ids,
            sampled,
            sampled_out.part(0),
            num_logprobs,
            prompt_logprobs,
            placeholders,
            self._fill_placeholders,
        )
        if not self.async_scheduling:
            return output.get_output()
        self._unresolved.append(output)
        self.max_steps_in_flight = max(self.max_steps_in_flight, len(self._unresolved))
        return output

    def _prompt_logprobs(self, step: _PendingStep) -> dict[str, LogprobsTensors | None]:
        """Prompt logprobs of this step's prefill chunks; the buffers of finished prompts."""
        if not self.prompt_logprobs.requests:
            return {}
        query_start = np.cumsum(step.num_scheduled) - step.num_scheduled
        prompt_lens = [len(self.requests[r].prompt_token_ids) for r in step.req_ids]
        computed = self.batch.num_computed_tokens[step.rows]
        chunks = self.prompt_logprobs.plan(
            step.req_ids, query_start, step.num_scheduled, computed, prompt_lens
        )
        if not chunks:
            return {}
        prompts = [self.requests[c.req_id].prompt_token_ids for c in chunks]
        hidden_all = ready(step.model_out).hidden_all  # waits for the launch, if threaded
        targets = self.prompt_logprobs.targets(chunks, prompts, hidden_all.shape[0])
        # numpy straight to jit, whose dispatch moves it (runner/transfer.py)
        top = self._prompt_logprobs_step(self.logits_params, hidden_all, targets)
        return self.prompt_logprobs.record(chunks, top, [len(p) for p in prompts])

    def _add_placeholders(self, step: _PendingStep) -> tuple[np.ndarray, Placeholders]:
        """Append a placeholder (-1) for each sampled token; the real id replaces it when the
        output resolves. Requests still prefilling their prompt sample nothing.

        Returns:
            bool[num_reqs] which requests sampled, and their placeholders."""
        computed = self.batch.num_computed_tokens[step.rows] + step.num_scheduled
        sampled = computed >= self.batch.num_tokens[step.rows]
        indices = np.flatnonzero(sampled)
        step_rows = indices.tolist()
        req_ids = [step.req_ids[i] for i in step_rows]
        output_indices = []
        requests = self.requests
        for req_id in req_ids:
            output_token_ids = requests[req_id].output_token_ids
            output_indices.append(len(output_token_ids))
            output_token_ids.append(-1)
        self.batch.append_tokens(step.rows[indices], -1)
        return sampled, Placeholders(req_ids, output_indices, step_rows)

    def _fill_placeholders(
        self, output: AsyncXlaModelRunnerOutput, placeholders: Placeholders, tokens: np.ndarray
    ) -> None:
        """Write a resolved step's token ids over its placeholders (requests that finished
        meanwhile are gone; a row given back gets the ids from ``output_token_ids``)."""
        self.token_wait_seconds += output.wait_seconds
        self.num_resolved_outputs += 1
        self._tokens_arrived_at = time.perf_counter()
        requests, req_id_to_row = self.requests, self.batch.req_id_to_row
        rows, positions = [], []  # the batch's token history, written once below
        values = tokens[placeholders.step_rows].tolist()
        kept = []
        for req_id, index, token in zip(
            placeholders.req_ids, placeholders.output_indices, values, strict=True
        ):
            state = requests.get(req_id)
            if state is None:
                continue
            state.output_token_ids[index] = token
            row = req_id_to_row.get(req_id)
            if row is not None:
                rows.append(row)
                positions.append(len(state.prompt_token_ids) + index)
                kept.append(token)
        if rows:
            rows_np, positions_np = np.array(rows), np.array(positions)
            fits = positions_np < self.batch.token_ids.shape[1]
            self.batch.token_ids[rows_np[fits], positions_np[fits]] = np.array(kept)[fits]
        if output in self._unresolved:
            self._unresolved.remove(output)

    def _resolve_outputs(self) -> None:
        """Wait for every uncollected output and fill its placeholders."""
        for output in list(self._unresolved):
            self.num_early_resolves += 1
            output.resolve()

    def _link_prev_sampled(
        self, inputs: StepInputs, req_ids: list[str], rows: np.ndarray, num_scheduled: np.ndarray
    ) -> jax.Array:
        """Point each input token the host does not know yet (a placeholder) at its row of the
        previous step's sampled ids, which stay on the device; return those ids.

        A request in step N too reads its token from step N's ids. One that sat out step N
        while an earlier step's token is still unknown (with vLLM's two steps in flight the
        engine collected step N-1's output first, so this needs a third:
        ``steps_in_flight.py``) is resolved first (a sync)."""
        num_tokens = int(num_scheduled.sum())
        input_ids = inputs.input_ids[:num_tokens]
        unknown = input_ids < 0
        if not unknown.any():
            return self._no_prev_sampled
        prev = self._prev_sampled
        index_of_req = np.array(
            [-1 if prev is None else prev.req_id_to_index.get(r, -1) for r in req_ids], np.int32
        )
        index = np.repeat(index_of_req, num_scheduled)
        if (index[unknown] < 0).any():
            self._resolve_outputs()
            row_of_token = np.repeat(rows, num_scheduled)
            input_ids[:] = self.batch.token_ids[row_of_token, inputs.positions[:num_tokens]]
            if (input_ids < 0).any():
                raise RuntimeError("an input token's id is neither on the host nor on the device")
            return self._no_prev_sampled
        inputs.prev_token_index[:num_tokens] = np.where(unknown, index, -1)
        input_ids[unknown] = 0
        self.num_steps_with_device_tokens += 1
        return prev.token_ids

    # ---- launches (on the launch thread when there is one: runner/launch.py) -------------

    def _launch_model_step(
        self,
        chain: tuple[float, float, float] | None,
        prev_sampled: jax.Array,
        words: np.ndarray,
        big: list,
        packing: Packing,
    ) -> ModelStepOutput:
        """The model step on the current KV caches and logits buffer, which it replaces
        (donated). Only launches touch them while serving, in order. ``chain``: when the
        tokens this step was scheduled after reached the host, when ``execute_model`` was
        entered and when the launch was submitted (``perf_counter``), if tokens arrived since
        the last launch; the launch chain counts from the first."""
        called = time.perf_counter()
        out = self._call_model_step(prev_sampled, words, big, packing)
        if chain is not None:  # jit returns once XLA has launched the program
            self._count_launch_chain(*chain, called, time.perf_counter())
        return out

    def _call_model_step(
        self, prev_sampled: jax.Array, words: np.ndarray, big: list, packing: Packing
    ) -> ModelStepOutput:
        """One model step through the next loaded copy of its bucket's program (the jitted
        function itself without precompilation), on the current KV caches and logits buffer,
        which it donates and replaces."""
        args = (self.param_leaves, self.kv_caches, self.logits_buffer, prev_sampled, words, big)
        copies = self._model_step_programs.get(packing)
        if copies:
            self.kv_caches, out = copies[self._num_model_step_calls % len(copies)](*args)
        else:
            self.kv_caches, out = self._model_step(*args, packing)
        self._num_model_step_calls += 1
        self.logits_buffer = out.logits
        return out

    def _count_launch_chain(
        self, arrived: float, entered: float, submitted: float, called: float, launched: float
    ) -> None:
        split = self.launch_chain_split_seconds
        split["engine"] += entered - arrived
        split["runner"] += submitted - entered
        split["handoff"] += called - submitted
        split["call"] += launched - called
        self.num_launch_chains += 1

    @property
    def launch_chain_seconds(self) -> float:
        """The launch chains' total host seconds: the sum of their links."""
        return sum(self.launch_chain_split_seconds.values())

    def _launch_sampler(
        self,
        logprobs: bool,
        model_out: ModelStepOutput,
        words: np.ndarray,
        big: list,
        packing: Packing,
    ) -> tuple[SamplerOutput, jax.Array]:
        """The sampler on the model step's logits, then the start of the copies of its outputs
        to the host."""
        out, padded_ids = self._sample_step(model_out.logits, words, big, packing)
        start_copies_to_host(out, logprobs)
        return out, padded_ids

    # ---- jitted programs -----------------------------------------------------------------

    def _model_step_fn(
        self,
        param_leaves: tuple[jax.Array, ...],  # the weights, flattened (``params_treedef``)
        kv_caches: dict[str, jax.Array],
        logits_buffer: jax.Array,  # [max_num_seqs, vocab], donated
        prev_sampled_token_ids: jax.Array,  # i32[max_num_seqs] (async scheduling)
        words: jax.Array,
        big: list[jax.Array],
        packing: Packing,
    ) -> tuple[dict[str, jax.Array], ModelStepOutput]:
        """vLLM's model over the padded tokens (``StepInputs`` packed by ``transfer.pack``),
        then its logits at each request's last token and their argmax; returns the updated KV
        caches and a :class:`ModelStepOutput`."""
        params = jax.tree.unflatten(self.params_treedef, param_leaves)
        inputs: StepInputs = unpack(words, big, packing, self.config.stage_inputs)
        # Async scheduling: tokens sampled by the previous step come from the device.
        from_prev = prev_sampled_token_ids[jnp.maximum(inputs.prev_token_index, 0)]
        input_ids = jnp.where(inputs.prev_token_index >= 0, from_prev, inputs.input_ids)
        ctx = XlaGpuAttentionMetadata(inputs.attn, dict(kv_caches), self.attention_impl)
        num_tokens = input_ids.shape[0]
        with (
            torchax.default_env(),
            set_current_vllm_config(self.vllm_config),
            set_forward_context(ctx, self.vllm_config, num_tokens=num_tokens, slot_mapping={}),
        ):
            hidden = self.jax_model.call(params, "forward", input_ids, inputs.positions)
        # A step has at most as many requests as tokens: the per-request rows of its inputs
        # (``step_inputs.num_req_rows``) are all that need the LM head.
        rows = inputs.logits_indices.shape[0]
        logits = self._logits(params, hidden[inputs.logits_indices])
        greedy_ids = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        out = ModelStepOutput(
            logits_buffer.at[:rows].set(logits),  # in place: the buffer is donated
            self._pad_to_max_reqs(greedy_ids),
            hidden,
        )
        return ctx.kv_caches, out

    def _sample_step_fn(
        self, logits: jax.Array, words: jax.Array, big: list, packing: Packing
    ) -> tuple[SamplerOutput, jax.Array]:
        """The sampler on the first ``num_reqs`` rows (the request bucket) of the model step's
        logits, in float32 (as vLLM's sampler takes them), with the ``SamplingMetadata`` packed
        by ``transfer.pack``. Also returns the sampled ids padded to ``max_num_seqs`` rows: the
        next model step's fixed-shape input under async scheduling."""
        md: SamplingMetadata = unpack(words, big, packing, self.config.stage_inputs)
        num_reqs = md.temperature.shape[0]
        out = sample(logits[:num_reqs].astype(jnp.float32), md)
        return out, self._pad_to_max_reqs(out.sampled_token_ids)

    def _pad_to_max_reqs(self, sampled: jax.Array) -> jax.Array:
        """Sampled ids padded to ``max_num_seqs`` rows: the next model step's fixed-shape
        input under async scheduling (the model step's argmax and the sampler return it)."""
        return jnp.zeros(self.max_num_reqs, jnp.int32).at[: sampled.shape[0]].set(sampled)

    def _prompt_logprobs_fn(
        self, params: dict, hidden_all: jax.Array, targets: jax.Array
    ) -> TopLogprobs:
        """Logprobs of each next prompt token (and the top tokens) at every token position."""
        return prompt_top_logprobs(
            lambda hidden: self._compute_logits(params, hidden), hidden_all, targets
        )

    def _logits(self, params: dict, hidden: jax.Array) -> jax.Array:
        """vLLM's ``compute_logits``, in the model's dtype."""
        with torchax.default_env(), set_current_vllm_config(self.vllm_config):
            return self.jax_model.call(params, "compute_logits", hidden)

    def _compute_logits(self, params: dict, hidden: jax.Array) -> jax.Array:
        return self._logits(params, hidden).astype(jnp.float32)

    # ---- persistent batch updates ----------------------------------------------------------

    def _new_sampling_inputs(self) -> SamplingInputs:
        return SamplingInputs(
            self.max_num_reqs, self.vocab_size, self.config.max_model_len, self.device
        )


def _greedy_output(model_out: ModelStepOutput) -> tuple[SamplerOutput, jax.Array]:
    """A plain-greedy step's sampler output: the model step's argmax (no logprobs), with the
    copy of its ids to the host started."""
    out = SamplerOutput(model_out.greedy_ids, None)
    start_copies_to_host(out, False)
    return out, model_out.greedy_ids


def _zeros_fn(aval: jax.ShapeDtypeStruct) -> Callable[[], jax.Array]:
    """A jitted function that returns zeros of ``aval``'s shape, dtype and sharding (committed
    to the device, like every step's outputs: jit keys its cache on that)."""
    return jax.jit(lambda: jnp.zeros(aval.shape, aval.dtype), out_shardings=aval.sharding)


def _kv_cache_shape(spec: AttentionSpec, num_blocks: int) -> tuple[int, ...]:
    return (2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_size)


def _scratch(lowered) -> int:
    """Temporary plus non-aliased output bytes of a lowered program (compiles it)."""
    analysis = lowered.compile().memory_analysis()
    return (
        analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
    )
