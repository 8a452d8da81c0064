"""The machine a number was measured on, and the one place that sets the OpenMP thread policy.

Numbers differ between CPU models (float kernels round differently; bf16 is fast with AMX or
AVX-512 bf16 and slow without), so every report records :func:`machine_info`.

Thread policy: with 2 torch threads and anything else busy on the cores, OpenMP threads that
spin while idle make small models 50-80x slower, so tokenrl's commands wait passively
(``OMP_WAIT_POLICY=PASSIVE``) unless the user chose otherwise. A process that has the cores to
itself may spin briefly (``GOMP_SPINCOUNT``): the quickstart's warm-up does
(:func:`apply_thread_policy` with ``spin=True``). libgomp reads both once, when torch loads it,
so the policy is applied by the command line before torch is imported, never at import time.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
ALONE_SPINCOUNT = "10000"
"""GOMP_SPINCOUNT of a process that has the cores to itself: on an idle 2-core machine the
quickstart's warm-up steps ran 1.45-1.69x faster than with threads that sleep at once, but
1.8-2.1x slower beside a busy core (``benchmarks/wait_policy.py``), where GOMP_SPINCOUNT=0 helps."""


def apply_thread_policy(*, spin: bool = False) -> dict[str, str | None]:
    """Set the OpenMP wait policy for this process, unless the user set it; returns the policy.

    Acts only before torch is imported (libgomp reads the variables when it loads); afterwards it
    changes nothing and reports what is in force.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if spin:
            os.environ.setdefault("GOMP_SPINCOUNT", ALONE_SPINCOUNT)
    return thread_policy()


def thread_policy() -> dict[str, str | None]:
    """The OpenMP variables in force, and torch's thread count once torch is loaded."""
    policy: dict[str, Any] = {k: os.environ.get(k) for k in OPENMP_VARIABLES}
    if "torch" in sys.modules:
        policy["torch_threads"] = sys.modules["torch"].get_num_threads()
    return policy


def _cpuinfo(key: str) -> str | None:
    """The first ``key`` line's value in /proc/cpuinfo, or None (no such line or file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows (e.g. x86_64)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """The CPU's vendor (AuthenticAMD, GenuineIntel; /proc/cpuinfo), or "" where unknown."""
    return _cpuinfo("vendor_id") or ""


def cpu_features() -> dict[str, bool]:
    """The vector features that decide fp32 / bf16 speed on a CPU (from /proc/cpuinfo)."""
    flags = set((_cpuinfo("flags") or "").split())
    return {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model and features, cores, RAM, OS, thread policy; the GPU when ``device`` is CUDA."""
    from tokenrl.mklpath import intel_path_status

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "mkl_intel_path": intel_path_status(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "device": device,
        "threads": thread_policy(),
    }
    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def versions() -> dict[str, str | None]:
    """Versions of python and of the libraries the numbers depend on (None = not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "tokenrl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
