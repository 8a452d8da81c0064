"""Devices and dtypes: names as configs spell them -> torch objects, and ``auto`` choices from
the machine's features (re-exported by :mod:`tokenrl.models`)."""

from __future__ import annotations

import torch

from tokenrl.errors import ModelError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bf16": the name configs use (what a run with ``auto`` records)."""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


def auto_dtype(device: torch.device) -> torch.dtype:
    """The weights dtype that runs fastest here, from the device's features (``--dtype auto``):
    bf16 on a GPU that supports it and on a CPU with native bf16 products, AMX or AVX-512 bf16
    (bf16 products 5.9x the fp32 rate on a 2-core AMX Xeon; one RL step of the 0.5B 1.6-2.2x
    faster than fp32 on a 2-core AMD EPYC Zen 4, docs/benchmarks.md); fp32 elsewhere, notably
    on AVX2-only CPUs, where bf16 is emulated and about 5x slower."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    from tokenrl.machine import cpu_features

    feats = cpu_features()
    return torch.bfloat16 if feats.get("amx_bf16") or feats.get("avx512_bf16") else torch.float32


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """A dtype name (fp32, bf16, fp16, or auto: :func:`auto_dtype` of ``device``) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return auto_dtype(device if device is not None else resolve_device("auto"))
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]
