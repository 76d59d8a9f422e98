"""The step's jitted calls, issued in order, from the runner's thread or from one launch thread.

A jitted call holds the calling thread for as long as XLA's runtime takes to start the program:
on the H100, about 1.1 ms for Llama-3.2-1B's model step at batch 1 (checking its buffers,
updating and launching its CUDA graph; docs/performance.md), and jax releases the GIL for that
time (``PjitFunction::Call`` around ``Execute``). vLLM's scheduler and the runner's bookkeeping
are Python, so without help the two run one after the other. By default the runner hands its
calls to one launch thread, in order, and returns to vLLM's engine at once: the next step's
Python runs while XLA starts this one (``VLLM_XLA_GPU_LAUNCH_THREAD=0`` runs each call when it
is made). Measured on the H100 (docs/performance.md, 2026-11-28): at batch 1 it changes nothing
(``benchmarks/launch_thread.py`` found it hid 0.044 ms of a 0.51 ms call, and the engine's
batch-1 step time was the same with and without it), while at 256 requests of 128/128, whose
steps hold about 5 ms of Python, it raised output tokens/s by 20% and 51% in an A B B A on one
machine.

A call's arguments may be earlier calls' pending results (:class:`Launched`); the launch thread
runs calls in the order they were submitted, so each is ready when a later call needs it.
Without the thread a call runs when it is submitted and its result is ready at once, so the
runner has one code path either way. An exception raised by a call is raised again wherever
its result is asked for (the next call that takes it, or vLLM's ``get_output``).
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable
from typing import Any

# The launch thread needs the GIL to start a call (jax reads the arguments under it). Python
# hands the GIL to a waiting thread only every switch interval (5 ms by default) while the
# runner's thread runs Python, which could hold a launch back for that long; the runner's
# process takes a shorter interval when it has a launch thread. The cost: every other thread
# (vLLM's engine-core output thread too) can then cut into vLLM's scheduler as often. On an
# H100 at 256 requests the engine's thread waited 1.2 ms of a 7.1 ms step with the thread and
# 0.4 ms without it (docs/performance.md, 2026-11-28, fifth session). The call itself waits
# for the GIL several times (jax lets it go around XLA's launch, each numpy transfer and each
# array freed): beside a busy Python thread the 1B's call took 1.6-2.2 ms against 0.7-1.0 alone
# (``benchmarks/step_call.py``). Yet 0.02 ms made batch 1 slower in serving (vLLM's Python was
# interrupted more) and 1 ms no faster (tenth session); ``VLLM_XLA_GPU_SWITCH_INTERVAL_MS``
# sets the interval for a comparison.
SWITCH_INTERVAL_S = 1e-4


class Launched:
    """A submitted call's result (or the ``index``-th element of it), maybe still pending."""

    def __init__(self, future: concurrent.futures.Future, index: int | None = None) -> None:
        self._future = future
        self._index = index

    def result(self) -> Any:
        """The value, once the call has returned (it may still be running on the device)."""
        value = self._future.result()
        return value if self._index is None else value[self._index]

    def part(self, index: int) -> Launched:
        """The ``index``-th element of the result, as its own pending value."""
        return Launched(self._future, index)


def ready(value: Any) -> Any:
    """``value`` itself, or its result if it is a :class:`Launched`."""
    return value.result() if isinstance(value, Launched) else value


class Launcher:
    """Runs submitted calls in order: at once (``threaded`` False) or on one launch thread,
    with the process's GIL switch interval set to ``switch_interval_s``.

    Attributes:
        threaded: whether calls run on the launch thread.
        num_launched: calls submitted so far (tests and benchmarks read it).
    """

    def __init__(self, threaded: bool, switch_interval_s: float = SWITCH_INTERVAL_S) -> None:
        self.threaded = threaded
        self.num_launched = 0
        self._pool = None
        if threaded:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="vllm-xla-launch"
            )
            sys.setswitchinterval(switch_interval_s)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Launched:
        """Call ``fn`` with ``args`` (each :class:`Launched` replaced by its result)."""
        self.num_launched += 1
        if self._pool is None:
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_result(fn(*(ready(a) for a in args)))  # raises here, as a plain call
            return Launched(future)
        return Launched(self._pool.submit(lambda: fn(*(ready(a) for a in args))))

    def shutdown(self) -> None:
        """Wait for the calls in flight and stop the launch thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
