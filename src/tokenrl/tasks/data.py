"""Reading task data files, with errors that name the file, the line and the field.

Where data lives (first match wins), see :func:`find_data_dir`:
``data_path`` argument > ``$TOKENRL_DATA`` > ``../shared/data`` from the current directory >
``../shared/data`` from the repository root (found from this file). Each task looks inside
for its own sub-folder (``svamp/``, ``gsm8k/``).
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenrl.answers import canonical_number

__all__ = ["DataError", "find_data_dir", "gold_answer", "read_json_array", "read_jsonl"]

DATA_ENV = "TOKENRL_DATA"
# Longest line read_jsonl accepts: a problem is a few KB; a longer line is a wrong or broken file.
MAX_LINE_BYTES = 1 << 20
# src/tokenrl/tasks/data.py -> parents[3] is the repository root
REPO_ROOT = Path(__file__).resolve().parents[3]


class DataError(ValueError):
    """A data file is missing or malformed. ``file``, ``line`` (1-based) and ``field`` say where,
    when known; the message names them and says how to fix the file."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | os.PathLike[str] | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.problem = problem
        where = [
            part
            for part in (self.file, line and f"line {line}", field and f"field {field!r}")
            if part
        ]
        super().__init__(f"{', '.join(where)}: {problem}" if where else problem)


def find_data_dir(data_path: str | os.PathLike[str] | None = None) -> Path | None:
    """The data folder, or ``None`` when no default location exists.

    An explicit ``data_path`` or ``$TOKENRL_DATA`` that is not a folder is an error (the user
    asked for it); the ``../shared/data`` defaults are only used when present.
    """
    for source, value in (("data_path", data_path), (f"${DATA_ENV}", os.environ.get(DATA_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataError(f"{source} points to {path}, which is not a folder", file=path)
            return path
    for candidate in (Path.cwd() / ".." / "shared" / "data", REPO_ROOT / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def data_dir_hint(sub: str) -> str:
    """How to tell tokenrl where the data is (for error messages)."""
    return (
        f"put the files in <DATA>/{sub}/ and pass data_path=<DATA> (CLI: --data-path) or set "
        f"{DATA_ENV}=<DATA>; by default ../shared/data is searched from the current folder and "
        f"from {REPO_ROOT}"
    )


def read_jsonl(
    path: str | os.PathLike[str], required: Sequence[str] = ()
) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each JSON object line of ``path``.

    Accepts a UTF-8 BOM and skips blank lines. Raises :class:`DataError` for a missing or empty
    file, bytes that are not UTF-8, a line longer than :data:`MAX_LINE_BYTES`, a line that is
    not a JSON object, or a missing field in ``required``.
    """
    raw = _read_bytes(path)
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    records = []
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if len(line_bytes) > MAX_LINE_BYTES:
            raise DataError(
                f"the line is {len(line_bytes):,} bytes, over the {MAX_LINE_BYTES:,}-byte limit "
                "for one record; a JSONL file holds one JSON object per line",
                file=path,
                line=lineno,
            )
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"byte {err.start + 1} of the line ({line_bytes[err.start]:#04x}) is not valid "
                "UTF-8; re-save the file with UTF-8 encoding",
                file=path,
                line=lineno,
            ) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"not valid JSON ({err.msg} at column {err.colno}); each line must hold one "
                'JSON object such as {"question": "...", "answer": "42"}',
                file=path,
                line=lineno,
            ) from None
        _check_record(record, required, path, lineno)
        records.append((lineno, record))
    if not records:
        raise DataError("the file is empty: it holds no JSON records", file=path)
    return records


def read_json_array(
    path: str | os.PathLike[str], required: Sequence[str] = ()
) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each object of a file holding one JSON array (like
    ``SVAMP.json``); the line number is where the record starts. Errors as :func:`read_jsonl`."""
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError("the file is not valid UTF-8", file=path, line=line) from None
    decoder = json.JSONDecoder()
    records: list[tuple[int, dict[str, Any]]] = []
    pos = _skip_space(text, 0)
    if pos == len(text):
        raise DataError("the file is empty: it holds no JSON array", file=path)
    if text[pos] != "[":
        raise DataError(
            "expected a JSON array of records ('[' first)", file=path, line=_line(text, pos)
        )
    pos = _skip_space(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err.msg})", file=path, line=err.lineno) from None
        _check_record(record, required, path, _line(text, pos))
        records.append((_line(text, pos), record))
        pos = _skip_space(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_space(text, pos + 1)
        elif pos >= len(text) or text[pos] != "]":
            raise DataError("expected ',' or ']' after a record", file=path, line=_line(text, pos))
    if pos >= len(text):
        raise DataError("the JSON array is not closed with ']'", file=path, line=_line(text, pos))
    if not records:
        raise DataError("the JSON array is empty", file=path)
    return records


def gold_answer(
    value: Any, *, file: str | os.PathLike[str] | None, line: int | None, field: str
) -> str:
    """A gold answer in canonical form (``51.0`` -> ``"51"``, ``"1,234"`` -> ``"1234"``), or a
    :class:`DataError` when it is not a single finite number."""
    text = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = repr(value) if math.isfinite(value) else None
    elif isinstance(value, str):
        text = value
    gold = None if text is None else canonical_number(text)
    if gold is None:
        raise DataError(
            f"gold answer {value!r} is not a number; tasks score numeric answers, so write the "
            'final number, e.g. "42", "2.5" or "1/3"',
            file=file,
            line=line,
            field=field,
        )
    return gold


def hub_dataset(repo: str, config: str | None = None) -> Any | None:
    """``datasets.load_dataset(repo, config)`` if the optional ``datasets`` package is installed,
    else ``None``."""
    if importlib.util.find_spec("datasets") is None:
        return None
    from datasets import load_dataset

    try:
        return load_dataset(repo, config)
    except Exception as err:  # network, auth, missing repo: all mean "no data", say why
        raise DataError(
            f"no local data, and loading {repo!r} from the Hugging Face Hub failed: {err}"
        ) from err


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as err:
        raise DataError(f"cannot read the file ({err.strerror})", file=path) from None


def _check_record(
    record: Any, required: Sequence[str], path: str | os.PathLike[str], line: int
) -> None:
    if not isinstance(record, dict):
        raise DataError(
            f"expected a JSON object, got a JSON {type(record).__name__}", file=path, line=line
        )
    for name in required:
        if name not in record:
            raise DataError(
                f"missing; the record has fields {sorted(record)}", file=path, line=line, field=name
            )


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1
