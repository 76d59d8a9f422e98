"""Counts XLA compilations, so tests and benchmarks can prove that serving compiles nothing.

JAX reports every backend compilation (a persistent-cache hit included) through
``jax.monitoring``. :class:`CompileCounter` listens for those events for the whole process; the
runner snapshots the count after warm-up and :meth:`CompileCounter.since_warmup` tells how many
programs serving had to compile since (the design's invariant: zero).
"""

from __future__ import annotations

import threading

import jax

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


class CompileCounter:
    """Process-wide counts of traces and backend compilations (install once)."""

    _lock = threading.Lock()
    _installed = False
    compiles = 0
    traces = 0

    @classmethod
    def install(cls) -> None:
        """Register the ``jax.monitoring`` listener (idempotent)."""
        with cls._lock:
            if cls._installed:
                return
            jax.monitoring.register_event_duration_secs_listener(cls._on_event)
            cls._installed = True

    @classmethod
    def _on_event(cls, event: str, duration: float, **kwargs) -> None:
        if event == _BACKEND_COMPILE_EVENT:
            cls.compiles += 1
        elif event == _TRACE_EVENT:
            cls.traces += 1


class CompileGuard:
    """Remembers the compile count at the end of warm-up.

    Attributes:
        compiles_at_warmup: backend compilations counted when warm-up finished.
    """

    def __init__(self) -> None:
        CompileCounter.install()
        self.compiles_at_warmup: int | None = None

    def mark_warmed_up(self) -> None:
        """Call once every bucket has been compiled."""
        self.compiles_at_warmup = CompileCounter.compiles

    def since_warmup(self) -> int:
        """Backend compilations since :meth:`mark_warmed_up` (0 while serving is healthy)."""
        if self.compiles_at_warmup is None:
            return 0
        return CompileCounter.compiles - self.compiles_at_warmup
