"""Host time of vLLM's engine-core loop, part by part, timed the same way on either backend.

At a few hundred requests a step of a small model is paced by the host, and most of that host
work is vLLM's own (scheduling, turning sampled tokens into request outputs), which both
backends run. This module times each part of the engine core's loop inside its process, so
that ``throughput.py`` can set one backend's parts beside the other's:

* ``schedule`` and ``update_from_output``: vLLM's scheduler (the same code on both backends,
  up to the vLLM release each runs);
* ``execute_model`` and ``sample_tokens``: the executor's calls into the backend's runner
  (input preparation and launches; with async scheduling they return before the device is done);
* ``output_wait``: waiting for a step's output (the runner's ``get_output``: the device's
  tokens, copied to the host and turned into vLLM's output);
* ``step``: the whole of the engine core's step function (the parts above and what lies
  between them, e.g. grammar bitmasks and the batch queue);
* ``loop``: from the end of one step to the start of the next within a busy period (the
  engine core's input and output queues);
* ``gc``: Python's garbage collections in the engine's process, in any thread (each one holds
  the GIL, so it stops every thread's Python).

Each part is timed on the wall clock and on the calling thread's CPU clock: a part whose wall
time exceeds its CPU time waited, for the GIL (another thread of the process running Python, as
the engine core's output thread or a backend's launch thread) or for the device.

:func:`install` wraps these methods on the live engine core's objects (not vLLM's classes,
except the executor's future type), through ``collective_rpc``; :func:`read` returns the
running totals; :func:`ms_per_step` turns two readings into milliseconds per model step. The
functions travel to the engine's process by value (as ``common.engine_stats``), so that process
needs neither this module nor this package. Each wrapped call costs two ``perf_counter`` calls.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any

# Each part: where its method lives, starting from the engine core object.
PARTS = {
    "schedule": ("scheduler", "schedule"),
    "update_from_output": ("scheduler", "update_from_output"),
    "execute_model": ("model_executor", "execute_model"),
    "sample_tokens": ("model_executor", "sample_tokens"),
}
# Gaps between steps longer than this are idle time, not loop overhead.
MAX_LOOP_GAP_S = 0.05
TOTALS_ATTR = "_bench_engine_loop_totals"


def _engine_core() -> Any:
    """The engine core object whose loop is running this call (found on the call stack: a
    ``collective_rpc`` runs inside the engine core's own thread)."""
    frame = sys._getframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        owner = getattr(owner, "engine_core", owner)  # in-process client: its engine core
        if hasattr(owner, "scheduler") and hasattr(owner, "step_fn"):
            return owner
        frame = frame.f_back
    return None


def _add(entry: list, wall: float, cpu: float) -> None:
    """One more call of a part: ``entry`` is its [wall seconds, calls, thread CPU seconds]."""
    entry[0] += wall
    entry[1] += 1
    entry[2] += cpu


def _timed(totals: dict, name: str, fn: Any) -> Any:
    """``fn``, adding its wall seconds, calls and thread CPU seconds to ``totals[name]``."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(totals[name], time.perf_counter() - start, time.thread_time() - cpu)

    return timed


def _gc_callback(totals: dict) -> Any:
    """A ``gc.callbacks`` entry adding each collection's seconds to ``totals["gc"]``."""
    started = [0.0]

    def callback(phase: str, _info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            elapsed = time.perf_counter() - started[0]
            _add(totals["gc"], elapsed, elapsed)

    return callback


def _timed_step(totals: dict, fn: Any) -> Any:
    """The step function, timed, with the gap since the previous step counted as ``loop``."""
    last_end: list = [None, 0.0]  # wall and thread CPU clocks at the end of the last step

    def step(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        if last_end[0] is not None and start - last_end[0] < MAX_LOOP_GAP_S:
            _add(totals["loop"], start - last_end[0], cpu - last_end[1])
        try:
            return fn(*args, **kwargs)
        finally:
            last_end[:] = time.perf_counter(), time.thread_time()
            _add(totals["step"], last_end[0] - start, last_end[1] - cpu)

    return step


def _install_in_engine(_worker: Any) -> bool:
    """Runs in the engine's process: wraps each part once; False if no engine core was found."""
    engine = _engine_core()
    if engine is None:
        return False
    if hasattr(engine, TOTALS_ATTR):
        return True
    # part -> [wall seconds, calls, thread CPU seconds]
    totals = {name: [0.0, 0, 0.0] for name in (*PARTS, "output_wait", "step", "loop", "gc")}
    for name, (owner_attr, method) in PARTS.items():
        owner = getattr(engine, owner_attr)
        setattr(owner, method, _timed(totals, name, getattr(owner, method)))
    engine.step_fn = _timed_step(totals, engine.step_fn)
    # A step's output is a future whose result() waits for the runner's output; its type is
    # made per step, so the class is wrapped (once per process).
    from vllm.v1.executor import uniproc_executor

    future_type = getattr(uniproc_executor, "AsyncOutputFuture", None)
    if future_type is not None and not hasattr(future_type, TOTALS_ATTR):
        future_type.result = _timed(totals, "output_wait", future_type.result)
        setattr(future_type, TOTALS_ATTR, totals)
    gc.callbacks.append(_gc_callback(totals))
    setattr(engine, TOTALS_ATTR, totals)
    return True


def _read_in_engine(_worker: Any) -> dict | None:
    engine = _engine_core()
    totals = getattr(engine, TOTALS_ATTR, None)
    return None if totals is None else {k: list(v) for k, v in totals.items()}


def _rpc(llm: Any, fn: Any) -> Any:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        return llm.collective_rpc(fn)[0]
    except Exception as e:  # the timings stand without these fields
        print(f"warning: engine loop timers unavailable ({type(e).__name__}: {e})")
        return None


def install(llm: Any) -> bool:
    """Wrap the engine core's parts (see the module docstring); True if they are timed."""
    return bool(_rpc(llm, _install_in_engine))


def read(llm: Any) -> dict | None:
    """Running totals: part -> [wall seconds, calls, thread CPU seconds]; None when not
    installed."""
    return _rpc(llm, _read_in_engine)


def ms_per_step(before: dict | None, after: dict | None) -> dict | None:
    """Mean wall milliseconds per model step of each part between two :func:`read` results (a
    model step: a ``sample_tokens`` call), ``steps`` (how many) and ``cpu``: the same parts'
    thread CPU milliseconds per step."""
    if not before or not after:
        return None
    steps = after["sample_tokens"][1] - before["sample_tokens"][1]
    if steps <= 0:
        return None
    result: dict = {"steps": float(steps)}
    cpu = {}
    for name in after:
        result[name] = (after[name][0] - before[name][0]) / steps * 1e3
        cpu[name] = (after[name][2] - before[name][2]) / steps * 1e3
    result["cpu"] = cpu
    return result
