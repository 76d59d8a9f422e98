"""The ragged-paged-attention registry: which implementation each config name means per chip.

The runner resolves ``VLLM_XLA_GPU_ATTENTION`` (``auto`` by default) through the registry, and
the torch operator dispatches by the resolved name, so these rules decide what every attention
layer runs: the Triton kernel on NVIDIA GPUs, the portable reference elsewhere, and a clear error
for a name that does not exist or cannot run on the device.
"""

from __future__ import annotations

import pytest

from vllm_xla_gpu.ops.ragged_paged_attention import reference, registry


def test_auto_prefers_the_kernel_on_gpus_and_the_reference_elsewhere() -> None:
    assert registry.resolve("auto", "gpu") == "triton"
    assert registry.resolve("auto", "cpu") == "reference"
    assert registry.resolve("auto", "some_new_chip") == "reference"


def test_explicit_names() -> None:
    assert registry.resolve("reference", "gpu") == "reference"
    assert registry.get_ragged_paged_attention("reference", "cpu") is (
        reference.ragged_paged_attention
    )


@pytest.mark.parametrize(("name", "platform"), [("triton", "cpu"), ("flash", "gpu")])
def test_unavailable_names_are_refused(name: str, platform: str) -> None:
    with pytest.raises(ValueError, match=f"{name!r} is not available on {platform!r}"):
        registry.resolve(name, platform)


def test_a_port_registers_its_kernel_in_one_call(monkeypatch) -> None:
    """What docs/porting.md promises: one register() line makes a kernel the chip's default."""
    monkeypatch.setattr(registry, "_IMPLEMENTATIONS", dict(registry._IMPLEMENTATIONS))
    monkeypatch.setattr(registry, "_AUTO_ORDER", dict(registry._AUTO_ORDER))
    registry.register("my_kernel", reference.__name__, ("my_chip",))
    assert registry.resolve("auto", "my_chip") == "my_kernel"
    assert registry.get_ragged_paged_attention("auto", "my_chip") is (
        reference.ragged_paged_attention
    )
    assert "my_kernel" not in registry.available("gpu")
