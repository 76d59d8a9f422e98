"""``runner/launch.py``: the launch thread runs calls in order, as plain calls would.

The reference is the same calls made directly: results, the order in which they ran, and
where an exception surfaces must not depend on the thread. The process's GIL switch interval
is the one the launcher was given (``VLLM_XLA_GPU_SWITCH_INTERVAL_MS``).
"""

from __future__ import annotations

import sys

import pytest

from vllm_xla_gpu.runner.launch import Launched, Launcher, ready


@pytest.fixture
def restore_switch_interval():
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def _chain(launcher: Launcher, log: list[int]) -> list:
    """Ten calls, each taking the previous call's pending result, as the runner's steps do."""
    results: list = []
    value: object = 1
    for i in range(10):

        def step(x, i=i):
            log.append(i)
            return x * 3 + i

        value = launcher.submit(step, value)
        results.append(value)
    return results


@pytest.mark.parametrize("threaded", [False, True])
def test_calls_run_in_order_with_plain_call_results(threaded, restore_switch_interval):
    direct_log: list[int] = []
    expected = [ready(r) for r in _chain(Launcher(False), direct_log)]
    log: list[int] = []
    launcher = Launcher(threaded)
    got = [ready(r) for r in _chain(launcher, log)]
    launcher.shutdown()
    assert got == expected
    assert log == direct_log == list(range(10))
    assert launcher.num_launched == 10


def test_part_and_exceptions_surface_where_the_result_is_read(restore_switch_interval):
    launcher = Launcher(True)
    pair = launcher.submit(lambda: (4, 5))
    assert isinstance(pair, Launched) and pair.part(1).result() == 5

    def fails():
        raise ValueError("bad step")

    failed = launcher.submit(fails)
    after = launcher.submit(lambda x: x + 1, failed)  # takes the failed call's result
    with pytest.raises(ValueError, match="bad step"):
        failed.result()
    with pytest.raises(ValueError, match="bad step"):
        after.result()
    assert launcher.submit(lambda: 7).result() == 7  # the thread keeps serving
    launcher.shutdown()


def test_threaded_launcher_sets_the_switch_interval(restore_switch_interval):
    Launcher(True, 0.002).shutdown()
    assert sys.getswitchinterval() == pytest.approx(0.002)
    sys.setswitchinterval(0.005)
    Launcher(False, 0.0001).shutdown()  # no thread, nothing to hand the GIL to
    assert sys.getswitchinterval() == pytest.approx(0.005)
