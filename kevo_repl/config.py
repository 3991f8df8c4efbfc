"""``--config FILE``: every flag of ``primary``, ``replica`` and ``cluster`` from a TOML file.

The file's keys are the long flag names without the dashes (``retention-bytes = 1000000``;
``retention_bytes`` works too). Keys may sit at the top level, or in a table named after the
command (``[primary]``, ``[replica]``, ``[cluster]``) so that one file can serve several
commands; a command's table overrides the top level for that command. A flag given on the
command line always overrides the file: the file's values become the parser's defaults and
the command line is parsed again.

Anything the parser would not accept is refused with a clear message (exit 2 through
``argparse``): an unknown key, a table for an unknown command, a value of the wrong type or
outside the flag's choices. Silently ignoring a misspelt key would run a node with settings
the operator did not ask for.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CONFIGURABLE_COMMANDS", "ConfigError", "config_defaults", "configurable_actions"]

CONFIGURABLE_COMMANDS = ("primary", "replica", "node", "cluster")
_NOT_CONFIGURABLE = frozenset({"help", "config", "print_config"})


class ConfigError(ValueError):
    """The config file cannot be used as it is; the message says where and why."""


def configurable_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long flag name without dashes (``retention-bytes``) -> the parser's action."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in _NOT_CONFIGURABLE:
            continue
        out[longs[0][2:]] = action
    return out


def config_defaults(
    path: Path, command: str, parsers: Mapping[str, argparse.ArgumentParser]
) -> dict[str, Any]:
    """The parser defaults (``dest`` -> value) that ``path`` sets for ``command``."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    top: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in CONFIGURABLE_COMMANDS:
                raise ConfigError(
                    f"{path}: unknown table [{key}]; tables may be "
                    + ", ".join(f"[{c}]" for c in CONFIGURABLE_COMMANDS)
                )
            tables[key] = value
        else:
            top[key] = value
    # Check every table against its own command, so a typo in [replica] is caught even
    # when the file is read by `primary`.
    for name, table in tables.items():
        _convert_all(path, f"[{name}]", table, parsers[name])
    values = _convert_all(path, "top level", top, parsers[command])
    values.update(_convert_all(path, f"[{command}]", tables.get(command, {}), parsers[command]))
    return values


def _convert_all(
    path: Path, where: str, table: Mapping[str, Any], parser: argparse.ArgumentParser
) -> dict[str, Any]:
    actions = configurable_actions(parser)
    out: dict[str, Any] = {}
    for key, value in table.items():
        action = actions.get(key.replace("_", "-"))
        if action is None:
            known = ", ".join(sorted(actions))
            raise ConfigError(
                f"{path}: unknown key {key!r} ({where}) for `{parser.prog}`; known keys: {known}"
            )
        try:
            out[action.dest] = _convert(action, value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: key {key!r} ({where}): {exc}") from None
    return out


def _convert(action: argparse.Action, value: Any) -> Any:
    """The value as the parser would have produced it from the command line."""
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}")
        return value if action.const is True or action.const is None else not value
    kind = action.type
    # A validating type function (a port, a count) says which TOML type it takes.
    base = getattr(kind, "config_type", kind)
    if isinstance(value, bool):
        raise ConfigError(f"expected a {_kind_name(base)}, got {value!r}")
    if base is int and not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {value!r}")
    if base is float and not isinstance(value, int | float):
        raise ConfigError(f"expected a number, got {value!r}")
    if base not in (int, float) and not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}")
    result: Any = value
    if callable(kind):
        try:
            result = kind(str(value)) if kind is not base else kind(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise ConfigError(str(exc)) from None
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{result!r} is not one of {choices}")
    return result


def _kind_name(kind: Any) -> str:
    return {int: "integer", float: "number"}.get(kind, "string")
