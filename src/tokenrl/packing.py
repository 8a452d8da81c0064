"""bf16 linear weights pre-packed for oneDNN while a CPU decodes (``rollout.prepack_weights``).

A decode step multiplies a few rows (the trainer's 4 x 8 = 32) by every weight of the model.
``F.linear`` hands oneDNN each bf16 weight in its plain layout on every call; packing it once
per generation (``torch.ops.mkldnn._reorder_linear_weight``, what ``torch.compile``'s freezing
does on CPUs) and calling the packed product (``_linear_pointwise``) gives bitwise the same
outputs, faster: on a 2-core AMD EPYC Zen 4 the 0.5B's products at 32 rows ran 1.23-1.42x
faster, the 151,936-row LM head 1.42x (docs/benchmarks.md). Packing the 0.5B takes about 0.3 s
and holds a second copy of its bf16 weights until the generation ends; the weights themselves
are untouched (the update, and an adapter merged for sampling, change them between
generations, so every generation packs afresh).

With the adapter folded in for sampling (``rollout.merge_lora``), each LoRA-adapted layer is
merged and packed in one pass (:func:`packed_linears`), so no merged unpacked copy is kept.

Only ``nn.Linear`` modules with bf16 weights on the CPU are packed (a LoRA adapter's fp32 A and
B are not); a call with gradients enabled, or with an input of another dtype, runs ``F.linear``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import nn

from tokenrl.lorafold import Scratch, foldable_lora_layers, lora_merged, merged_weight

ROWS_HINT = 32
"""Rows the packed layout is tuned for (a decode step's rows at the trainer's 4 x 8); any row
count gives the same outputs."""


def why_not_packed(model: nn.Module) -> str | None:
    """Why ``model``'s weights are not packed here (a short reason), or None where they are."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or not hasattr(ops, "_reorder_linear_weight"):
        return "this torch has no oneDNN linear ops"
    weight = next((p for p in model.parameters() if p.dtype == torch.bfloat16), None)
    if weight is None or weight.device.type != "cpu":
        return "no bf16 weights on the CPU"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "the CPU has no oneDNN bf16 kernels"
    return None


def _packable(weight: torch.Tensor) -> bool:
    return weight.dtype == torch.bfloat16 and weight.device.type == "cpu"


def _packed(packed: torch.Tensor, bias: torch.Tensor | None, fallback: Callable):
    """A forward by the packed op, or by ``fallback`` for a call it does not take (gradients,
    another dtype, extra arguments)."""

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or x.dtype != torch.bfloat16 or torch.is_grad_enabled():
            return fallback(x, *args, **kwargs)  # no backward for the packed op
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)


@contextlib.contextmanager
def packed_linears(
    model: nn.Module, enabled: bool = True, *, merge_lora: bool = False
) -> Iterator[bool]:
    """Within the block, ``model``'s bf16 ``nn.Linear`` modules run on packed copies of their
    weights (yields whether any were packed); afterwards they are as before.

    ``merge_lora``: sample with each LoRA adapter folded into the weight it adapts, as
    :func:`tokenrl.lorafold.lora_merged` does, with the same merged weights
    (:func:`tokenrl.lorafold.merged_weight`) and so the same tokens. Where the weights are packed,
    each adapted layer is merged and packed in turn and runs on its packed merged weight, so no
    merged copy of the model is held; a call the packed op does not take (gradients, another
    dtype) runs the adapter as it is. Elsewhere, or for an adapter that does not fold,
    ``lora_merged`` does the merging.
    """
    packs = enabled and why_not_packed(model) is None
    lora = foldable_lora_layers(model) if merge_lora and packs else []
    if not all(_packable(layer.get_base_layer().weight) for layer in lora):
        lora = []  # an adapted weight that is not packed: lora_merged folds them all
    patched = []
    with lora_merged(model) if merge_lora and not lora else contextlib.nullcontext():
        try:
            if packs:
                scratch = Scratch()  # each merged weight is packed at once: one buffer for all
                for layer in lora:
                    w = layer.get_base_layer().weight
                    merged = merged_weight(layer, scratch, scratch.take(w, w.dtype, "merged"))
                    fallback = functools.partial(type(layer).forward, layer)  # the adapter as it is
                    layer.forward = _packed(_pack(merged), layer.get_base_layer().bias, fallback)
                    patched.append(layer)
                merged_bases = {id(layer.get_base_layer()) for layer in lora}
                for module in model.modules():
                    w = module.weight if type(module) is nn.Linear else None
                    if w is not None and _packable(w) and id(module) not in merged_bases:
                        fallback = functools.partial(nn.Linear.forward, module)
                        module.forward = _packed(_pack(w), module.bias, fallback)
                        patched.append(module)  # the instance's own forward
            yield bool(patched)
        finally:
            for module in patched:
                del module.forward  # back to the class's forward
