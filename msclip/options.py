"""Run configurations as dataclasses: typed options from YAML files and command-line flags.

A run configuration (:class:`msclip.train.config.TrainConfig`,
:class:`msclip.heads.finetune.FinetuneRunConfig`) is one dataclass whose fields are its options,
each annotated with a plain type (``int``, ``float``, ``str``, ``bool``, ``list[...]``,
``tuple[...]``, optionally ``| None``) and a ``help`` text in its field metadata. This module
turns values from YAML files (keys in ``snake_case`` or ``kebab-case``) and from command-line
flags (strings) into those types, names unknown options with the closest known one, and reports
every bad value of one source at once. The command-line programs build one flag per field from
the same annotations (:func:`msclip.cli.common.add_dataclass_args`), so a new option is declared
once.

Precedence, lowest first: the dataclass defaults, a YAML file, the command-line flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import os
import re
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from msclip.errors import ConfigError, not_a_file

#: Largest random seed the programs and run configurations take (numpy's generators take no
#: negative seed, torch's none of 2**64 or more).
MAX_SEED = 2**63 - 1

__all__ = [
    "check_problems",
    "coerce",
    "field_help",
    "load_yaml",
    "option_types",
    "options_to_dict",
    "parse_yaml",
    "problems_without",
    "unwrap_optional",
    "update_options",
]

_HINTS: dict[type, dict[str, Any]] = {}


def option_types(cls: type) -> dict[str, Any]:
    """Resolved type annotations of a dataclass's fields (cached per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def field_help(f: dataclasses.Field) -> str:
    """The ``help`` text of a dataclass field (empty when it has none)."""
    return str(f.metadata.get("help", ""))


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(tp, False)``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar(value: Any, tp: type) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise TypeError(f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported option type {tp}")


def coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to the annotated type ``tp`` (``"none"`` clears an optional).

    Raises:
        TypeError: the value does not fit the type.
    """
    inner, optional = unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise TypeError("this option cannot be empty (none)")
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        args = typing.get_args(inner)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise TypeError(f"expected {len(args)} values, got {list(value)}")
            return tuple(_scalar(v, a) for v, a in zip(value, args))
        out = [_scalar(v, args[0]) for v in value]
        return tuple(out) if origin is tuple else out
    return _scalar(value, inner)


def update_options(obj: Any, values: Mapping[str, Any], source: str = "config") -> Any:
    """Set the fields of the dataclass instance ``obj`` from a mapping (keys in snake_case or
    kebab-case), converting each value to its field's type.

    Raises:
        ConfigError: lists every unknown key (with the closest known option) and every value
            that does not fit its option's type; its ``problems`` are those lines and its
            ``options`` the options whose value was refused. The other values are set.
    """
    names = {f.name for f in dataclasses.fields(obj)}
    hints = option_types(type(obj))
    errors = []
    bad: set[str] = set()  # options whose value was refused (they keep their previous value)
    spelt: dict[str, str] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in spelt:  # batch_size and batch-size: one would silently replace the other
            errors.append(f"{source}: option {name!r} is given twice ({spelt[name]!r}, {key!r})")
            continue
        spelt[name] = str(key)
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"{source}: unknown option {key!r}{hint}")
            continue
        try:
            setattr(obj, name, coerce(value, hints[name]))
        except (TypeError, ValueError) as err:
            errors.append(f"{source}: option {key!r}: {err}")
            bad.add(name)
    if errors:
        error = ConfigError("bad configuration:\n  " + "\n  ".join(errors))
        # for callers that go on and report these with the value checks of the other options
        error.problems, error.options = errors, bad  # type: ignore[attr-defined]
        raise error
    return obj


def problems_without(problems: list[str], skip: Collection[str]) -> list[str]:
    """The problem lines of a run configuration that are not about an option in ``skip`` (each
    line starts with the option it is about): options whose given value was refused for its type
    still hold their default, whose checks would only mislead."""
    return [m for m in problems if re.split(r"\W", m, maxsplit=1)[0] not in skip]


def check_problems(problems: list[str]) -> None:
    """Raise every problem of a run configuration at once.

    Raises:
        ConfigError: ``bad configuration:`` and one line per problem, when there is any.
    """
    if problems:
        raise ConfigError("bad configuration:\n  " + "\n  ".join(problems))


def options_to_dict(obj: Any) -> dict[str, Any]:
    """Plain JSON/YAML-serialisable dict of a dataclass's fields (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def parse_yaml(text: str, source: str | os.PathLike | None = None) -> Any:
    """``yaml.safe_load`` (no Python objects) that refuses a mapping key given twice; ``source``
    (the file's path) names the file in error messages.

    PyYAML keeps the last of two equal keys without a word, so a repeated option, or a class
    label listed twice in a ``label: name`` file, would silently drop one value. msclip reads
    every YAML file of its users (configs, class names, dataset specs, image lists) through this.

    Raises:
        yaml.YAMLError: invalid YAML, or a repeated key (the message names the key and both
            lines).
    """
    import yaml

    class _UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base': overriding is its use
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: PyYAML's own constructor names it
                break
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first on line {first.start_mark.line + 1}); "
                    "remove one",
                    key_node.start_mark,
                )
        return loader.construct_mapping(node, deep=deep)

    _UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    stream: Any = text
    if source is not None:
        stream = io.StringIO(text)
        stream.name = str(source)  # PyYAML's error marks name a stream by its name
    return yaml.load(stream, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict (:func:`parse_yaml`: no Python objects, no key given
    twice).

    Raises:
        ConfigError: missing file, invalid YAML, a key given twice, or not a mapping.
    """
    import yaml

    p = Path(path)
    why = not_a_file(p, "a YAML file")
    if why is not None:  # missing, or a folder or a device (/dev/null) named as what it is
        raise ConfigError(f"config file {str(p)!r} {why}")
    try:
        # UTF-8 whatever the locale (a Latin-1 one garbled non-ASCII names); a BOM is allowed
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {str(p)!r} is not UTF-8 text ({err.reason} at byte {err.start}): "
            "save it as UTF-8"
        ) from None
    try:
        data = parse_yaml(text, p) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of option: value")
    return data
