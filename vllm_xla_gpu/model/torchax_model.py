"""vLLM's own PyTorch model, run as a pure JAX function through torchax.

vLLM's loader builds the model on the host (real safetensors or ``load_format="dummy"``).
:func:`extract_params` turns its parameters and buffers into JAX arrays on the device, and
:class:`TorchaxModel` calls the *unchanged* torch module with those arrays through
``torch.func.functional_call`` inside torchax's environment, so that ``jax.jit`` traces vLLM's
model code into one XLA program.

Two details make this work for every model (each learned from an error):

* Shared modules: all layers share one ``RotaryEmbedding`` (vLLM caches it) and tied models share
  the embedding with ``lm_head``. Parameters are therefore collected once per *module object*
  (``named_modules(remove_duplicate=True)``) and one torch tensor maps to one JAX array. Calling
  with ``tie_weights=False`` keeps torch from re-tying behind our back.
* Methods besides ``forward``: ``compute_logits`` must see the same swapped parameters, so the
  model is wrapped in :class:`_MethodCall`, whose ``forward`` dispatches to a named method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import torch
from torch import nn
from torch.func import functional_call
from torchax.interop import jax_view, torch_view
from torchax.ops.mappings import t2j

Params = dict[str, jax.Array]


class _MethodCall(nn.Module):
    """``forward(method, *args)`` calls ``model.<method>(*args)`` (so functional_call sees it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.model, method)(*args)


def extract_params(
    model: nn.Module,
    device: jax.Device | None = None,
    replace: dict[int, jax.Array] | None = None,
) -> Params:
    """Every parameter and buffer of ``model`` as a JAX array on ``device``.

    Args:
        model: vLLM's torch model, loaded on the host.
        device: target device (default: JAX's default device).
        replace: arrays to use instead of copying some tensors, by ``id(tensor)``
            (``model/dummy_weights.py``: weights drawn on the device).

    Returns:
        ``"model.<module path>.<name>" -> jax.Array``; a tensor shared by several modules (tied
        embeddings) maps to one array under each owner's name.
    """
    by_tensor: dict[int, jax.Array] = dict(replace or {})
    params: Params = {}
    for module_name, module in _MethodCall(model).named_modules(remove_duplicate=True):
        owned = {**module._parameters, **module._buffers}
        for attr, tensor in owned.items():
            if tensor is None:
                continue
            key = id(tensor)
            if key not in by_tensor:
                by_tensor[key] = jax.device_put(t2j(tensor.detach()), device)
            params[f"{module_name}.{attr}" if module_name else attr] = by_tensor[key]
    return params


def params_read_by(fn: Callable[..., Any], params: Params, *args: Any) -> Params:
    """The entries of ``params`` that ``fn(params, *args)`` reads.

    ``fn`` is traced once on abstract values (nothing runs on a device). The sampler needs only
    the LM head of a model's hundreds of arrays, and a jitted call pays host time for every
    array it is handed, used or not (XLA drops unused ones from the program, but JAX still
    checks each at every call).
    """
    leaves, treedef = jax.tree.flatten(params)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (params, args))
    jaxpr = jax.make_jaxpr(fn)(shapes[0], *shapes[1]).jaxpr
    read = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
    keys = jax.tree.unflatten(treedef, range(len(leaves)))
    return {name: params[name] for name, i in keys.items() if id(jaxpr.invars[i]) in read}


class TorchaxModel:
    """Calls methods of a vLLM torch model with JAX parameters, inside a JAX trace.

    Args:
        model: vLLM's torch model (its own tensors stay on the host, unused by the calls).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._wrapper = _MethodCall(model)

    def call(self, params: Params, method: str, *args: jax.Array) -> Any:
        """``model.<method>(*args)`` with ``params`` swapped in; JAX in, JAX out.

        Must run inside ``torchax.default_env()`` (the runner enters it for the whole step).
        """
        torch_params = torch_view(params)
        torch_args = torch_view(args)
        with torch.no_grad():
            out = functional_call(
                self._wrapper,
                torch_params,
                (method, *torch_args),
                tie_weights=False,
                strict=False,
            )
        return jax_view(out)
