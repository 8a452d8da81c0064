"""The update's LoRA layers with the adapter's product added inside one matrix product
(``optim.fused_lora``).

peft computes a LoRA-adapted linear layer in training as

    y = W x + s * B (A x),   s = alpha / r

in five steps: the base product, the adapter's two products, a product by s and an add, the
last three each writing a fresh [tokens, out] tensor (in fp32 for a bf16 model whose adapter is
fp32). Within :func:`fused_lora` those three are one ``addmm``: ``addmm(W x, A x, B^T, alpha=s)``, which on
a CPU gave bitwise the same outputs and gradients as peft's steps (tests/test_fusedlora.py).
Alone, a layer of the 0.5B's update (420 tokens, bf16 base with an fp32 adapter, forward and
backward) went from 24.4 to 23.2 ms (gate/up projections) and 6.2 to 5.6 ms (q/o) on a 2-core
AMD EPYC Zen 4 (benchmarks/update_kernels.py); in the SVAMP step, GRPO's and S-GRPO's peak
resident memory fell by 0.9-1.0 GB with this and ``optim.score_attention``, 0.1 GB of it with
the latter alone (docs/benchmarks.md).

Applies to peft ``Linear`` LoRA layers with one active plain adapter (no DoRA or other variant,
no adapter bias), outside autocast (where peft's steps round in bf16 one by one); any other
layer, and any call with the adapter disabled or merged, runs peft's own forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _fusable(layer: nn.Module) -> str | None:
    """The active adapter's name if ``layer`` is a plain peft LoRA ``Linear``, else None."""
    from peft.tuners.lora import Linear as LoraLinear

    if type(layer) is not LoraLinear or len(layer.active_adapters) != 1:
        return None
    if not hasattr(layer, "_cast_input_dtype"):  # a peft older than this code knows
        return None
    (name,) = layer.active_adapters
    plain = (
        name in layer.lora_A
        and name not in getattr(layer, "lora_variant", {})
        and not layer.use_dora.get(name, False)
        and not layer.lora_bias.get(name, False)
        and layer.lora_B[name].bias is None
        and isinstance(layer.get_base_layer(), nn.Linear)
    )
    return name if plain else None


def _fused_forward(layer: nn.Module, name: str):
    base, A, B = layer.get_base_layer(), layer.lora_A[name], layer.lora_B[name]
    dropout, scale = layer.lora_dropout[name], layer.scaling[name]
    peft_forward = type(layer).forward

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (
            args
            or kwargs
            or layer.disable_adapters
            or layer.merged
            or list(layer.active_adapters) != [name]
            or torch.is_autocast_enabled(x.device.type)
        ):
            return peft_forward(layer, x, *args, **kwargs)
        result = base(x)  # [..., out]
        h = F.linear(dropout(layer._cast_input_dtype(x, A.weight.dtype)), A.weight)  # [..., r]
        fused = torch.addmm(
            result.to(h.dtype).flatten(0, -2), h.flatten(0, -2), B.weight.t(), alpha=scale
        )  # W x + s * B (A x), as peft's result + lora_B(h) * scaling
        return fused.view(result.shape).to(result.dtype)

    return forward


@contextlib.contextmanager
def fused_lora(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, ``model``'s plain LoRA ``Linear`` layers add their adapter inside one
    ``addmm`` (yields how many layers); afterwards they run peft's forward again."""
    patched: list[nn.Module] = []
    try:
        for layer in model.modules() if enabled else ():
            name = _fusable(layer)
            if name is not None and "forward" not in vars(layer):
                layer.forward = _fused_forward(layer, name)  # the instance's own
                patched.append(layer)
        yield len(patched)
    finally:
        for layer in patched:
            del layer.forward  # back to peft's Linear.forward
