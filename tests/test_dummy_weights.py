"""``load_format="dummy"``: weights drawn on the device against vLLM's own dummy loader.

An engine on this backend starts with dummy weights (the size above which tensors are drawn on
the device is lowered so that the tiny model's matrices are); inside its worker, vLLM's
``DummyModelLoader`` then builds the same model the usual way (all filled on the host) as the
reference. Every tensor must have the reference's name and shape. Tensors drawn on the device
must hold varied values inside vLLM's range ``[-1e-3, 1e-3]``; every other tensor must equal the
reference exactly: vLLM's seeded fill of the norms, the KV scales that processing resets to 1,
the rotary cache. The engine must then generate without compiling anything after its warm-up,
and tied embeddings (Qwen3) must stay one array. The sampler's programs must be handed
the LM head alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine import compiles_since_warmup, make_llm
from vllm import SamplingParams
from vllm.config import set_current_vllm_config
from vllm.inputs import TokensPrompt
from vllm.model_executor.model_loader import get_model

from vllm_xla_gpu.model import dummy_weights
from vllm_xla_gpu.model.torchax_model import extract_params

MIN_NUMEL = 4096  # the tiny models' matrices (64 x 64 and larger); not their norms (64)


def _ours_and_vllms(worker) -> tuple[dict, dict, list[str], bool]:
    """Both parameter sets as float32 numpy, names whose dtypes differ, and whether ours keeps
    tied embeddings one array."""
    runner = worker.model_runner
    # A second model registers its attention layers under the same names: set the engine's
    # aside while the reference is built.
    layers = runner.vllm_config.compilation_config.static_forward_context
    engine_layers = dict(layers)
    layers.clear()
    try:
        with set_current_vllm_config(runner.vllm_config):
            reference = extract_params(get_model(vllm_config=runner.vllm_config), runner.device)
    finally:
        layers.clear()
        layers.update(engine_layers)
    ours = runner.params
    dtype_mismatches = [k for k in reference if k in ours and ours[k].dtype != reference[k].dtype]
    tied = ours.get("model.lm_head.weight") is ours.get("model.model.embed_tokens.weight")
    # The sampler is handed only what compute_logits reads: the LM head (the embedding if tied).
    logits = runner.logits_params
    assert (
        list(logits) == ["model.lm_head.weight"]
        and logits[list(logits)[0]] is ours[list(logits)[0]]
    )
    as_numpy = lambda params: {k: np.asarray(v, np.float32) for k, v in params.items()}  # noqa: E731
    return as_numpy(ours), as_numpy(reference), dtype_mismatches, tied


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_dummy_weights_match_vllms_loader(tiny_checkpoint, arch, monkeypatch):
    monkeypatch.setattr(dummy_weights, "DEVICE_FILL_MIN_NUMEL", MIN_NUMEL)
    with make_llm(tiny_checkpoint(arch), load_format="dummy", dtype="bfloat16") as llm:
        ours, reference, dtype_mismatches, tied = llm.collective_rpc(_ours_and_vllms)[0]
        prompts = [TokensPrompt(prompt_token_ids=[5, 6, 7, 8])]
        out = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        compiles = compiles_since_warmup(llm)

    assert dtype_mismatches == []
    assert sorted(ours) == sorted(reference)
    drawn = 0
    for name, ref in reference.items():
        assert ours[name].shape == ref.shape, name
        if ref.size >= MIN_NUMEL and not name.endswith("cos_sin_cache"):  # drawn on the device
            drawn += 1
            assert np.abs(ours[name]).max() <= 1e-3 and ours[name].std() > 0, name
        else:
            np.testing.assert_array_equal(ours[name], ref, err_msg=name)
    assert drawn >= 8  # embeddings and the attention and MLP matrices of both layers
    assert tied == (arch == "qwen3")
    assert len(out[0].outputs[0].token_ids) == 6
    assert compiles == 0
