"""The update's LoRA layers with the adapter's output scaled and added in place
(``optim.inplace_lora``).

peft computes a LoRA-adapted linear layer in training as

    y = W x + s * B (A x),   s = alpha / r

as ``result + lora_B(lora_A(x)) * scaling``: the product by s and the add each write a fresh
[tokens, out] tensor besides B's product (in fp32 for a bf16 model whose adapter is fp32).
Within :func:`inplace_lora` the same operations run in place on B's product,
``lora_B(lora_A(x)).mul_(scaling).add_(result)``: the same arithmetic in the same order (the add
commutes), so bitwise the same outputs and gradients for any scaling and on any device
(tests/test_inplacelora.py), with two fewer fresh tensors per layer. In the SVAMP step on a
2-core AMD EPYC Zen 4, GRPO's and S-GRPO's peak resident memory fell by about 1 GB
(docs/benchmarks.md); alone, a layer's time is about the same as peft's
(benchmarks/update_kernels.py).

One ``addmm(W x, A x, B^T, alpha=s)`` was tried first. It is slightly faster, but it rounds
s * (B A x) + W x in one step where peft rounds twice, so it is bitwise peft's only when s is a
power of two (docs/lab/stop-36.md).

Applies to peft ``Linear`` LoRA layers with one active plain adapter (no DoRA or other variant,
no adapter bias); any other layer, and any call with the adapter disabled or merged, runs peft's
own forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from tokenrl.lorafold import plain_lora_linear


def _plain(layer: nn.Module) -> str | None:
    """The active adapter's name if ``layer`` is a plain peft LoRA ``Linear``, else None."""
    from peft.tuners.lora import Linear as LoraLinear

    if type(layer) is not LoraLinear or len(layer.active_adapters) != 1:
        return None
    if not hasattr(layer, "_cast_input_dtype"):  # a peft older than this code knows
        return None
    (name,) = layer.active_adapters
    plain = (
        name in layer.lora_A
        and plain_lora_linear(layer, [name])
        and layer.lora_B[name].bias is None
    )
    return name if plain else None


def _inplace_forward(layer: nn.Module, name: str):
    base, A, B = layer.get_base_layer(), layer.lora_A[name], layer.lora_B[name]
    dropout = layer.lora_dropout[name]
    peft_forward = type(layer).forward

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (
            args
            or kwargs
            or layer.disable_adapters
            or layer.merged
            or list(layer.active_adapters) != [name]
        ):
            return peft_forward(layer, x, *args, **kwargs)
        result = base(x)  # [..., out]
        h = A(dropout(layer._cast_input_dtype(x, A.weight.dtype)))  # [..., r]
        lora = B(h).mul_(
            layer.scaling[name]
        )  # a fresh tensor, not saved for backward: free to overwrite
        if torch.promote_types(lora.dtype, result.dtype) != lora.dtype:
            return (result + lora).to(result.dtype)  # a wider base output: peft's promotion
        return lora.add_(result).to(result.dtype)  # result + lora, as peft adds them

    return forward


@contextlib.contextmanager
def inplace_lora(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, ``model``'s plain LoRA ``Linear`` layers scale and add their adapter's
    output in place (yields how many layers); afterwards they run peft's forward again."""
    patched: list[nn.Module] = []
    try:
        for layer in model.modules() if enabled else ():
            name = _plain(layer)
            if name is not None and "forward" not in vars(layer):
                layer.forward = _inplace_forward(layer, name)  # the instance's own
                patched.append(layer)
        yield len(patched)
    finally:
        for layer in patched:
            del layer.forward  # back to peft's Linear.forward
