"""A LoRA adapter folded into the weights it adapts, for sampling (``rollout.merge_lora``).

A peft LoRA ``Linear`` computes W x + s B (A x), s = alpha / r, with three products, a scale and
an add. Folded, it is one product by

    W' = W + s * B @ A

rounded to W's dtype. :func:`merged_weight` computes W' as peft's ``get_delta_weight`` does
((B @ A) * s, rounded, added to W); :func:`lora_merged` swaps W' in for W inside a ``with``, and
:func:`tokenrl.packing.packed_linears` packs each W' in turn for oneDNN. For inference only: no
gradients flow to A and B.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


def plain_lora_linear(layer: nn.Module, adapters) -> bool:
    """Whether peft LoRA ``Linear`` ``layer`` adapts a plain ``nn.Linear`` with ``adapters``
    that are neither DoRA nor another LoRA variant nor carry a bias: W x + s B (A x) and nothing
    else."""
    variants = getattr(layer, "lora_variant", {})  # peft's DoRA and other variants
    return isinstance(layer.get_base_layer(), nn.Linear) and not any(
        layer.use_dora.get(a, False) or layer.lora_bias.get(a, False) or a in variants
        for a in adapters
    )


def foldable_lora_layers(model: nn.Module) -> list[nn.Module]:
    """``model``'s peft LoRA layers when every one is a plain LoRA ``Linear`` that
    :func:`merged_weight` folds; [] for a model without an adapter or with a layer it does not
    fold (DoRA or another LoRA variant, LoRA biases, non-linear layers)."""
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return []
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    foldable = all(
        isinstance(m, LoraLinear) and plain_lora_linear(m, m.active_adapters) for m in layers
    )
    return layers if foldable else []


class Scratch:
    """Reusable buffers for :func:`merged_weight`, one per (dtype, device, slot), grown as
    needed: merging a model layer by layer writes its fp32 products into the same memory
    instead of a fresh [out, in] tensor per layer."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def take(self, like: torch.Tensor, dtype: torch.dtype, slot: str) -> torch.Tensor:
        key, n = (dtype, like.device, slot), math.prod(like.shape)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self._buffers[key] = torch.empty(n, dtype=dtype, device=like.device)
        return buf[:n].view(like.shape)


def _delta(layer: nn.Module, adapter: str, dtype: torch.dtype, scratch: Scratch | None):
    """s * B @ A of ``adapter`` (of a layer :func:`plain_lora_linear` accepts) rounded to
    ``dtype``: peft's ``get_delta_weight``, into ``scratch``'s buffers where it is the plain
    product (fp32 A and B, no fan-in/fan-out transpose)."""
    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    plain = A.dtype == B.dtype == torch.float32 and not layer.fan_in_fan_out
    if scratch is None or not plain:
        return layer.get_delta_weight(adapter).to(dtype)
    w = layer.get_base_layer().weight
    delta = torch.mm(B, A, out=scratch.take(w, torch.float32, "delta"))
    delta.mul_(layer.scaling[adapter])  # peft's (B @ A) * s, in place: the same rounding
    return delta if dtype == torch.float32 else scratch.take(w, dtype, "rounded").copy_(delta)


@torch.no_grad()
def merged_weight(
    layer: nn.Module, scratch: Scratch | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """W + (alpha / r) * B @ A of a foldable LoRA layer (every active adapter's delta, rounded
    to W's dtype, added in turn), in ``out`` or a new tensor; W itself is unchanged. The same
    values with or without ``scratch`` (tests/test_lorafold.py)."""
    w = layer.get_base_layer().weight.data
    merged = torch.empty_like(w) if out is None else out
    first = True
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            delta = _delta(layer, adapter, w.dtype, scratch)
            torch.add(w if first else merged, delta, out=merged)
            first = False
    return merged.copy_(w) if first else merged


@contextlib.contextmanager
def lora_merged(model: nn.Module) -> Iterator[bool]:
    """Inside the ``with``, ``model`` runs its LoRA-adapted linear layers as single matrices
    W' (:func:`merged_weight`), held in new tensors swapped in for W, with the adapter layers
    switched off, so a forward pass does one matmul per layer instead of three plus a scale and
    an add (sampling on a CPU: about a quarter faster on the quickstart's tiny model). On
    leaving, each layer gets its original W back (the same tensor, so bitwise unchanged; nothing
    is subtracted) and the adapters are on again. Costs one extra copy of the adapted weights
    while inside. Yields True when it merged; False (and changes nothing) for a model without a
    LoRA adapter or with layers it does not fold (:func:`foldable_lora_layers`).
    """
    layers = foldable_lora_layers(model)
    if not layers:
        yield False
        return
    originals: list[tuple[nn.Linear, torch.Tensor]] = []
    scratch = Scratch()
    try:
        for m in layers:
            base = m.get_base_layer()
            merged = merged_weight(m, scratch)
            originals.append((base, base.weight.data))
            base.weight.data = merged
        with model.disable_adapter():
            yield True
    finally:
        for base, weight in originals:
            base.weight.data = weight
