"""How many steps vLLM's engine keeps in flight under async scheduling.

vLLM's engine core runs async scheduling through a queue of ``VllmConfig.max_concurrent_batches``
steps (``EngineCore.step_with_batch_queue``): 2 with one pipeline stage. With 2, the engine
schedules step N+2 only after step N's tokens reached the host, so the chain of host work from
those tokens to step N+2's launch (vLLM's output handling and scheduler, the runner, XLA's
launch: C) and the device's step (D) alternate, and a step takes about (C + D) / 2 whenever C is
the longer (docs/performance.md, "The batch-1 chain, measured"). With 3, step N+3 waits for N's
tokens instead, and a step takes the longest of D, the launch (on the runner's launch thread)
and the engine's own Python per step, as long as C < 2 D.

Measured on H200s (docs/performance.md, ninth session): Llama-3.2-1B at batch 1 took 1.56 ms a
token against 1.76 (medians of six and five runs, on three machines; lower in every call), its
128/128 throughput moved within the spread between runs, and Qwen3-0.6B, whose launch (2.0 ms)
is longer than its device step, gained nothing. On one H100 (thirteenth session), Llama-3.2-1B
took 1.36-1.45 ms a token against 1.64-1.79 (four engine starts each, two calls), about its
device step, and 128/128 and 1024/128 throughput were no lower.

vLLM's scheduler already tracks several in-flight steps per request (its output placeholders,
which pipeline parallelism uses), and the runner reads every unknown input token from the
previous step's sampled ids on the device. Two things change with a third step. A request that
stops (EOS, a stop string) can be computed for one more step, whose token vLLM drops. And a
structured-output request must not be in two consecutive steps: vLLM computes a step's grammar
bitmask once it has collected the oldest step in flight, so the tokens of the step just before
would be missing (the grammar then rejects a sampled token and vLLM ends the request with an
error). :class:`SpacedStructuredOutputScheduler`, vLLM's async scheduler, schedules nothing in
the step after one that samples for such a request (the steps in flight less two), so the
step the engine collects first is that one. While structured-output requests run, the engine
then works as at vLLM's two steps in flight, every request decoding in every real step, with
an empty step between real ones; once none runs, the third step is back. Spacing the
structured-output requests' own decodes instead (``next_decode_eligible_step``, the field
vLLM's schedulers use for pipeline parallelism) left the steps between to the other requests:
the structured ones, or any group of requests that began in such a step, then decoded every
other step (``benchmarks/structured_mix.py``, docs/performance.md).

``VLLM_XLA_GPU_STEPS_IN_FLIGHT`` sets the depth: 3 by default, 2 for vLLM's own. Anything above
2 replaces the ``max_concurrent_batches`` property of vLLM's config class in each process that
loads the platform, for single-stage async scheduling only, and the platform picks that
scheduler. A scheduler class the user names keeps vLLM's two (or, with the variable set above
2, fails at start-up).
"""

from __future__ import annotations

import logging

from vllm.config import SchedulerConfig, VllmConfig
from vllm.logger import init_logger
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput

from vllm_xla_gpu.config import configured_steps_in_flight, steps_in_flight_requested

logger = init_logger("vllm." + __name__)  # under "vllm": vLLM configures that logger

SCHEDULER = "vllm_xla_gpu.steps_in_flight.SpacedStructuredOutputScheduler"

_vllm_max_concurrent_batches = VllmConfig.max_concurrent_batches


def choose_depth(scheduler: SchedulerConfig, announce: bool = False) -> int:
    """The steps in flight for an engine with ``scheduler``'s settings; above 2, names this
    module's scheduler in ``scheduler`` (its empty steps keep structured outputs correct).

    A scheduler class the user named cannot be combined with a depth above 2: with the
    default depth the engine then keeps vLLM's two, and with one the user set it fails here,
    at start-up, naming why.
    """
    steps = configured_steps_in_flight()
    if steps <= 2 or not scheduler.async_scheduling:
        return steps
    if scheduler.scheduler_cls not in (None, SCHEDULER):
        if steps_in_flight_requested():
            raise NotImplementedError(
                "VLLM_XLA_GPU_STEPS_IN_FLIGHT above 2 needs the XLA backend's scheduler "
                f"({SCHEDULER}), not {scheduler.scheduler_cls}."
            )
        if announce:
            logger.info("scheduler class %s: vLLM's two steps in flight", scheduler.scheduler_cls)
        return 2
    # A config that names this scheduler already was chosen (and announced) in the front end.
    announce = announce and scheduler.scheduler_cls != SCHEDULER
    scheduler.scheduler_cls = SCHEDULER
    if announce:
        logger.info(
            "vLLM's engine keeps %d steps in flight (VLLM_XLA_GPU_STEPS_IN_FLIGHT); %d empty "
            "step(s) follow each step that samples for a structured-output request",
            steps,
            steps - 2,
        )
    return steps


class _OwnSchedulerIsNotCustom(logging.Filter):
    """Drops vLLM's warning that a custom scheduler class is in use when the class is this
    module's: the user named none, and the interface it warns about is the one this package's
    pinned vLLM version is tested with."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            str(record.msg).startswith("Using custom scheduler class")
            and SCHEDULER in str(record.args)
        )


def install(steps: int) -> None:
    """Have async scheduling with one pipeline stage keep ``steps`` steps in flight."""
    if steps <= 2:
        VllmConfig.max_concurrent_batches = _vllm_max_concurrent_batches
        return
    scheduler_logger = logging.getLogger("vllm.config.scheduler")
    if not any(isinstance(f, _OwnSchedulerIsNotCustom) for f in scheduler_logger.filters):
        scheduler_logger.addFilter(_OwnSchedulerIsNotCustom())

    def max_concurrent_batches(self: VllmConfig) -> int:
        single_stage = self.parallel_config.pipeline_parallel_size == 1
        if self.scheduler_config.async_scheduling and single_stage:
            return steps
        return _vllm_max_concurrent_batches.fget(self)

    VllmConfig.max_concurrent_batches = property(max_concurrent_batches)


class SpacedStructuredOutputScheduler(AsyncScheduler):
    """vLLM's async scheduler that schedules nothing in the ``max_concurrent_batches - 2`` steps
    after a step that samples for a structured-output request (none with vLLM's two steps in
    flight), so the engine has collected that step whenever it computes the next grammar
    bitmask.

    vLLM defers a step's sampling until it has popped the oldest step in flight, then computes
    the bitmask. The empty steps make that oldest step the last one that sampled for a
    structured-output request, whatever the requests in it. Holding every request, not only
    the structured ones, keeps them together: while structured-output requests run, the engine
    works as with vLLM's two steps in flight (every request decodes in every real step, and
    prefills join those steps). Spacing the structured requests alone would leave the steps
    between to the others, and they would then decode every other step (see the module
    docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The worker installed the depth before the engine core built its scheduler.
        self.structured_output_spacing = self.vllm_config.max_concurrent_batches - 1
        # The first scheduler step that may schedule work again after a step that sampled for
        # a structured-output request; and how many steps were held empty (for benchmarks).
        self._next_step_with_work = 0
        self.num_held_steps = 0

    def schedule(self, *args, **kwargs) -> SchedulerOutput:
        # vLLM's schedule() advances current_step first, so the step it makes is this one.
        if self.current_step + 1 >= self._next_step_with_work:
            return super().schedule(*args, **kwargs)
        # No token budget: vLLM's own way to schedule nothing (its pause), with the rest of a
        # step's bookkeeping (finished requests, KV events) done as usual.
        self.num_held_steps += 1
        budget, self.max_num_scheduled_tokens = self.max_num_scheduled_tokens, 0
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.max_num_scheduled_tokens = budget

    def _update_after_schedule(self, scheduler_output: SchedulerOutput) -> None:
        super()._update_after_schedule(scheduler_output)
        # vLLM's own flag (set just now): a request of this step samples under a grammar.
        if scheduler_output.has_structured_output_requests:
            # The engine collects this step first once the steps after it are held empty.
            self._next_step_with_work = self.current_step + self.structured_output_spacing
