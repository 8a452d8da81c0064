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
    bf16 on a GPU that supports it and on a CPU with AMX (Intel Xeon 4th generation and later:
    bf16 products measured 5.9x the fp32 rate on the 2-core development machine); fp32
    elsewhere, notably on AVX2-only CPUs, where bf16 is emulated and about 5x slower (CPUs with
    AVX-512 bf16 but no AMX are untested here: they get fp32, choose bf16 yourself to try)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    from tokenrl.machine import cpu_features

    return torch.bfloat16 if cpu_features()["amx_bf16"] else torch.float32


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """A dtype name (fp32, bf16, fp16, or auto: :func:`auto_dtype` of ``device``) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return auto_dtype(device if device is not None else resolve_device("auto"))
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]
