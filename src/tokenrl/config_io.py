"""Reading configs: attribute docstrings as help text, typed coercion of YAML and command-line
values, ``--section.field`` overrides. :mod:`tokenrl.config` holds the dataclasses these fill."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tokenrl.errors import ConfigError


def _fail(what: str, fix: str) -> None:
    raise ConfigError(f"{what}. Fix: {fix}")


# ---------------------------------------------------------------------------------------------
# documentation of fields (attribute docstrings)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, its bases included: {field name: text}."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def iter_options(cfg: Any = None, prefix: str = ""):
    """Yield (dotted key, type text, default, doc) for every leaf field; nested dataclasses recurse."""
    if cfg is None:
        from tokenrl.config import Config

        cfg = Config()
    docs = field_docs(type(cfg))
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from iter_options(value, key + ".")
        elif prefix:
            yield key, _type_text(hints[f.name]), value, docs.get(f.name, "")


def _type_text(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


# ---------------------------------------------------------------------------------------------
# building a config from YAML and overrides


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/command-line value to the annotated type ``tp``, or explain why not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            _fail(f"{key} expects a list, got {value!r}", f"write e.g. --{key} a,b")
        inner = args[0] if args else Any
        items = [coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            _fail(
                f"{key} expects a mapping, got {value!r}", f"write e.g. --{key} '{{name: value}}'"
            )
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "yes",
            "1",
            "on",
            "false",
            "no",
            "0",
            "off",
        ):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        _fail(f"{key} expects true or false, got {value!r}", f"write --{key} true or --{key} false")
    if tp is int:
        if isinstance(value, bool):
            _fail(f"{key} expects an integer, got {value!r}", f"write e.g. --{key} 16")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        _fail(f"{key} expects an integer, got {value!r}", f"write e.g. --{key} 16")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        _fail(f"{key} expects a number, got {value!r}", f"write e.g. --{key} 0.5")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        _fail(f"{key} expects text, got {value!r}", f"write e.g. --{key} name")
    return value


def set_value(cfg: Any, key: str, value: Any) -> None:
    """Set ``section.field`` (or ``section.sub.field``) from a raw YAML or command-line value."""
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        _fail(f"config key {key!r} is not SECTION.FIELD", "write e.g. --train.steps 50")
    node: Any = cfg
    for depth, name in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        where = ".".join(parts[:depth]) or "the config"
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {'.'.join([*parts[:depth], close[0]])!r}? " if close else ""
            _fail(f"unknown config key {key!r}",
                  f"{hint}{where} has: {', '.join(names)} (see tokenrl train --help)")  # fmt: skip
        child = getattr(node, name)
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(child):
                if not isinstance(value, dict):
                    _fail(
                        f"{key} is a group of settings",
                        f"set its fields, e.g. --{key}.{dataclasses.fields(child)[0].name} VALUE",
                    )
                for sub, v in value.items():
                    set_value(cfg, f"{key}.{sub}", v)
                return
            hints = typing.get_type_hints(type(node))
            setattr(node, name, coerce(value, hints[name], key))
            return
        if not dataclasses.is_dataclass(child):
            _fail(
                f"config key {key!r}: {'.'.join(parts[: depth + 1])} is a value, not a section",
                "drop the extra part",
            )
        node = child


def apply_mapping(cfg: Any, data: dict[str, Any], source: str) -> None:
    if not isinstance(data, dict):
        _fail(f"{source} must hold a mapping of sections", "write e.g.\ntrain:\n  steps: 50")
    for section_name, values in data.items():
        if not isinstance(values, dict):
            _fail(f"{source}: section {section_name!r} must be a mapping, got {values!r}",
                  f"write\n{section_name}:\n  field: value")  # fmt: skip
        for field_name, value in values.items():
            set_value(cfg, f"{section_name}.{field_name}", value)


def parse_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """``["--train.steps", "50", "--lora.r=8"]`` -> ``[("train.steps", "50"), ("lora.r", "8")]``."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok.split("=")[0]:
            _fail(
                f"unexpected argument {tok!r}",
                "overrides are written --SECTION.FIELD VALUE, e.g. --train.steps 50",
            )
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                _fail(f"{tok} needs a value", f"write e.g. {tok} VALUE")
            key, value = tok[2:], tokens[i + 1]
            i += 2
        out.append((key, value))
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML atomically (a temporary file renamed into place), so a run killed
    while writing never leaves a truncated config that would resume with defaults."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_algorithm_overrides(algo: str, keys: list[str], algorithms: list[str]) -> None:
    """An override of another algorithm's section would be ignored: refuse it. (A YAML file may
    hold every algorithm's section, as a saved config.yaml does; an override is meant for this run.)"""
    unused = [k for k in keys if k.partition(".")[0] in algorithms and k.partition(".")[0] != algo]
    if unused:
        other, field_name = unused[0].partition(".")[::2]
        _fail(
            f"{', '.join(unused)} set for a run of train.algo={algo!r}: "
            f"the {other} section is not used, so the setting would be ignored",
            f"set --{algo}.{field_name} for the algorithm that runs, or choose that algorithm "
            f"with --train.algo {other}",
        )
