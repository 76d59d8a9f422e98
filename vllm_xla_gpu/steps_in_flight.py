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
error). :class:`SpacedStructuredOutputScheduler`, vLLM's async scheduler, spaces the decodes of
every step that samples for such a request by the steps in flight less one (the mechanism
vLLM's own schedulers use for pipeline parallelism and diffusion models). While
structured-output requests run, every request then decodes at vLLM's two-step cadence, the
structured ones included, and the steps between carry prefills or nothing; once none runs, the
third step is back.

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
    module's scheduler in ``scheduler`` (the spacing above needs it).

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
    scheduler.scheduler_cls = SCHEDULER
    if announce:
        logger.info(
            "vLLM's engine keeps %d steps in flight (VLLM_XLA_GPU_STEPS_IN_FLIGHT); while "
            "structured-output requests run, the steps they decode in are %d apart",
            steps,
            steps - 1,
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
    """vLLM's async scheduler, with the decodes of every step that samples for a structured-output
    request spaced so that the engine has collected that step whenever it computes the request's
    next grammar bitmask: after such a step, each request that sampled in it waits
    ``max_concurrent_batches - 1`` scheduling steps (none with vLLM's two steps in flight).

    Spacing the structured-output request alone would be enough for its grammar, but it would
    then decode every other step while the requests beside it decode every step. Spacing the
    whole step keeps them together: while structured-output requests run, every request decodes
    at vLLM's two-step cadence, and the steps between carry prefills only (or nothing)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The worker installed the depth before the engine core built its scheduler.
        self.structured_output_spacing = self.vllm_config.max_concurrent_batches - 1

    def _update_after_schedule(self, scheduler_output: SchedulerOutput) -> None:
        super()._update_after_schedule(scheduler_output)
        # vLLM's own flag (set just now): a request of this step samples under a grammar. A step
        # without one costs nothing more here.
        if not scheduler_output.has_structured_output_requests:
            return
        # The engine collects the step ``spacing`` steps back (the oldest in flight) before it
        # computes the bitmask of a step that needs it.
        eligible = self.current_step + self.structured_output_spacing
        for req_id in scheduler_output.num_scheduled_tokens:
            request = self.requests[req_id]
            # A prefill chunk that does not end its prompt samples nothing in this step.
            if not request.is_prefill_chunk:
                request.next_decode_eligible_step = max(request.next_decode_eligible_step, eligible)
