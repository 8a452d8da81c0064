"""MKL's Intel code path on AMD CPUs: a process-start switch, chosen by the user, recorded.

torch's x86 CPU wheels multiply fp32 matrices with Intel's MKL, which asks
``mkl_serv_intel_cpu_true()`` whether the CPU is Intel's and gives other vendors' CPUs a slower
code path. A one-function library that answers yes, preloaded before torch loads
(``LD_PRELOAD``), gives AMD CPUs the Intel path, with the instruction sets the CPU reports.
Measured (``benchmarks/mkl_path.py``, ``tokenrl bench step``; docs/benchmarks.md): on a 2-core
AMD EPYC Zen 4, fp32 products at the trainer's shapes 1.05-3.0x faster, an fp32 RL step of the
0.5B 1.3-1.7x; bf16 products unchanged (oneDNN, not MKL, runs them); on Zen 3 (issue #23) fp32
products 1.4-2.2x. Results agree to float rounding only (another summation order): a run
differs from the same run on MKL's own path as between two CPUs (on the Zen 4 the quickstart's
accuracies moved by 8 to 17 points), so the path is opt-in.

With ``TOKENRL_MKL_INTEL_PATH=1`` the ``tokenrl`` command line, before torch is imported, builds
the library once with the system's C compiler (into ``$TOKENRL_CACHE/mkl/``, by default
``~/.cache/tokenrl/mkl/``) and restarts itself with it preloaded (:func:`restart_with_intel_path`);
without a C compiler nothing changes. Unset or ``0``, MKL chooses as usual. Runs record whether
it was in force (:func:`intel_path_status`, in ``machine_info``). Python programs that import
tokenrl preload it before Python starts::

    eval "$(TOKENRL_MKL_INTEL_PATH=1 python -m tokenrl.mklpath)"   # export LD_PRELOAD=...
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenrl import zoo  # torch-free, as is tokenrl.machine: this runs before torch loads
from tokenrl.machine import cpu_vendor

SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
"""MKL's vendor check, answered yes (it is exported by torch's libtorch_cpu.so, so a preloaded
definition takes its place)."""

SWITCH = "TOKENRL_MKL_INTEL_PATH"
"""Environment variable: ``1`` takes the Intel path on any Linux CPU (on an Intel CPU it changes
nothing); unset or ``0`` keeps MKL's own choice of code path."""

_RESTARTED = "TOKENRL_MKL_INTEL_PATH_RESTARTED"
"""Set on the restarted process, so a failed preload never restarts it a second time."""


def why_not() -> str | None:
    """Why this process should not take the Intel path (a short reason), or None where it should."""
    if os.environ.get(SWITCH, "").strip() != "1":
        vendor = cpu_vendor()
        if vendor == "AuthenticAMD":
            return f"not chosen ({SWITCH}=1 takes it: faster fp32, rounded differently)"
        return f"not chosen, and not an AMD CPU ({vendor or 'unknown vendor'})"
    if not sys.platform.startswith("linux"):
        return "not Linux"
    return None


def library_path(folder: Path | None = None) -> Path | None:
    """The preload library, built from :data:`SOURCE` on first use; None without a C compiler
    (or where it fails to build)."""
    folder = folder if folder is not None else zoo.cache_dir() / "mkl"
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    lib = folder / f"libtokenrl_mkl_intel_{digest}.so"
    if lib.is_file():
        return lib
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = Path(tmp) / "mkl_intel.c"
            src.write_text(SOURCE)
            built = Path(tmp) / lib.name
            subprocess.run(
                [compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(src)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            os.replace(built, lib)  # atomic: processes started together see all of it or none
    except (OSError, subprocess.SubprocessError):
        return None
    return lib


def is_active() -> bool:
    """Whether the preload library is mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            return "libtokenrl_mkl_intel_" in f.read()
    except OSError:
        return False


def intel_path_status() -> dict[str, object]:
    """What a run records: ``active`` (the Intel path in force) and, where not, why."""
    active = is_active()
    status: dict[str, object] = {"active": active}
    if not active:
        reason = why_not()
        if reason is None:
            reason = (
                "not restarted with it (a Python program: see python -m tokenrl.mklpath)"
                if not os.environ.get(_RESTARTED)
                else "no C compiler to build it, or the preload failed"
            )
        status["why_not"] = reason
    return status


def _preload_with(lib: Path) -> str:
    """``LD_PRELOAD`` with ``lib`` first, before whatever the environment preloads already."""
    return f"{lib} {os.environ.get('LD_PRELOAD', '')}".strip()


def restart_with_intel_path() -> None:
    """Start this process again with the preload library, where :func:`why_not` allows and the
    library builds; returns (changing nothing) otherwise. Call before torch is imported."""
    # why_not first: unless chosen, no command start reads /proc/self/maps
    if "torch" in sys.modules or os.environ.get(_RESTARTED) or why_not() or is_active():
        return
    lib = library_path()
    os.environ[_RESTARTED] = "1"  # also where it does not build: is_active tells the rest
    if lib is None:
        return
    os.environ["LD_PRELOAD"] = _preload_with(lib)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = list(getattr(sys, "orig_argv", []) or [sys.executable, *sys.argv])
    os.execv(sys.executable, [sys.executable, *argv[1:]])


def main() -> int:
    """``python -m tokenrl.mklpath``: print the shell line that preloads the library, if wanted."""
    reason = why_not()
    if reason is not None:
        print(f"# tokenrl.mklpath: nothing to preload: {reason}", file=sys.stderr)
        return 0
    lib = library_path()
    if lib is None:
        print("# tokenrl.mklpath: no C compiler (cc, gcc) to build the library", file=sys.stderr)
        return 1
    print(f"export LD_PRELOAD='{_preload_with(lib)}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
