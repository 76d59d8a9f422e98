"""Start-up compilation of the step programs: lowered one at a time, compiled in parallel.

The runner compiles every bucket's program before serving (DESIGN.md §4). Each program costs
two things: *lowering* (tracing vLLM's model through torchax into a jaxpr, then StableHLO) and
XLA's *compilation* of the lowered module. Lowering must stay on one thread: it runs vLLM's model
code under process-wide state (vLLM's forward context and current config, torchax's
environment). Compilation is XLA's own work in C++, which releases the GIL, so the lowered
modules compile side by side in a thread pool.

A jitted function called later with the same arguments reuses what ``.lower(...).compile()``
built (jit caches the lowering and the lowering keeps its executable), so the warm-up runs
that follow compile nothing. :class:`WarmUpCall` pairs a jitted function with the exact
arguments of its warm-up run, so that the lowering and the run cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any


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


def compile_ahead(
    calls: Sequence[WarmUpCall], threads: int, on_compiled: Callable[[], None]
) -> None:
    """Lower ``calls`` one by one, then compile them on ``threads`` threads (1: in order).

    Args:
        calls: the programs, with their warm-up arguments.
        threads: compilations in flight at once.
        on_compiled: called after each compilation (progress bars).
    """
    lowered = [call.fn.lower(*call.args) for call in calls]
    if threads <= 1:
        for program in lowered:
            program.compile()
            on_compiled()
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xla-compile") as pool:
        for future in as_completed([pool.submit(program.compile) for program in lowered]):
            future.result()  # re-raises a compilation error here
            on_compiled()
